"""`manage.py backup DEST` and `manage.py restore SRC` (docs/operations.md, "Backup and restore").

A backup is a folder (or a tar of one) holding `manifest.json`, a consistent copy of the
database, the Django secret key when the portal keeps it in `var/`, and under `storage/` every
file of every module version: its template disks with their whole qcow2 backing chains
(backing references made relative inside the backup) and its NVRAMs. The manifest records
each file's sha256, which restore checks before it touches anything.

`archive` is the Django-free part (the manifest, copying with checksums, chains, tar,
verification); `database` the database engines; `make` and `restore` the two commands' work.
"""
