"""`files` and everything that refers to them by name."""

from __future__ import annotations

from collections.abc import Iterator

from ruddervirt.manifest import paths
from ruddervirt.manifest.checks.base import (
    Raw,
    Reporter,
    check_unique,
    check_url,
    entries,
    mapping,
    names,
    string,
    suggest,
    vms,
)


def check_files(report: Reporter, data: Raw) -> None:
    files = list(entries("files", data.get("files")))
    check_unique(report, files, "file")
    for path, item in files:
        _check_file(report, path, item)
    known = names(files)
    for path, name in _file_references(data):
        if name not in known:
            report.error(path, f"no file named {name!r} in `files`{suggest(known)}")
    by_name = {key: item for _, item in files if (key := string(item.get("name"))) is not None}
    _check_private_keys(report, data, by_name)


def _check_file(report: Reporter, path: str, item: Raw) -> None:
    inline, url = item.get("inline"), item.get("url")
    if (inline is None) == (url is None):
        which = "both" if inline is not None else "neither"
        report.error(path, f"a file needs exactly one of `inline` or `url`, got {which}")
    if isinstance(url, str):
        check_url(report, paths.child(path, "url"), url)
        if "checksum" not in item:
            report.warning(
                paths.child(path, "url"),
                "no `checksum`: the download is not verified (add checksum: sha256:<hex>)",
            )
    if inline is not None and "checksum" in item:
        report.error(
            paths.child(path, "checksum"),
            "`checksum` applies to files with a `url` only; remove it from this inline file",
            at_key=True,
        )


def _file_references(data: Raw) -> Iterator[tuple[str, str]]:
    """(path, file name) of every place that names a `files` entry."""
    yield from _named(
        entries("httpDirectory.files", mapping(data.get("httpDirectory")).get("files"))
    )
    for vm_path, vm in vms(data):
        floppy = mapping(vm.get("floppy")).get("files")
        yield from _named(entries(f"{vm_path}.floppy.files", floppy))
        communicator = mapping(vm.get("communicator"))
        key = string(communicator.get("sshPrivateKeyFile"))
        if key is not None:
            yield f"{vm_path}.communicator.sshPrivateKeyFile", key
        for step_path, step in entries(f"{vm_path}.provisioners", vm.get("provisioners")):
            file_ref = string(mapping(step.get("file")).get("fileRef"))
            if file_ref is not None:
                yield f"{step_path}.file.fileRef", file_ref
            script = string(mapping(mapping(step.get("shell")).get("scriptFrom")).get("fileRef"))
            if script is not None:
                yield f"{step_path}.shell.scriptFrom.fileRef", script


def _named(items: Iterator[tuple[str, Raw]]) -> Iterator[tuple[str, str]]:
    for path, item in items:
        name = string(item.get("name"))
        if name is not None:
            yield paths.child(path, "name"), name


def _check_private_keys(report: Reporter, data: Raw, files: dict[str, Raw]) -> None:
    """An inline `sshPrivateKeyFile` must hold a private key, not (say) the public one."""
    for vm_path, vm in vms(data):
        name = string(mapping(vm.get("communicator")).get("sshPrivateKeyFile"))
        inline = string(files[name].get("inline")) if name in files else None
        if inline is not None and not _looks_like_private_key(inline):
            report.error(
                f"{vm_path}.communicator.sshPrivateKeyFile",
                f"file {name!r} does not hold a private key (expected a block starting with "
                "'-----BEGIN ... PRIVATE KEY-----')",
            )


def _looks_like_private_key(text: str) -> bool:
    stripped = text.strip()
    return stripped.startswith("-----BEGIN ") and "PRIVATE KEY-----" in stripped.splitlines()[0]
