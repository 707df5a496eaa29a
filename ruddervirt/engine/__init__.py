"""The build engine: plain Python that turns a parsed manifest into captured disks.

It receives a hypervisor (ruddervirt.hypervisor), a reporter (where progress, logs and
step results go; builds.reporting implements it with the ORM) and a parsed manifest.
Nothing here imports Django.
"""
