"""The step cache's keys (engine.stepkey), the inputs a security review found missing: the
owner's scope, httpDirectory files, the VMs sharing a subnet, the internet flag and
reuseOutside."""

from __future__ import annotations

from ruddervirt.engine.stepkey import VMKeys, file_hasher, vm_keys
from ruddervirt.manifest import parse

LAB = """\
files:
  - {name: preseed.cfg, inline: "%(preseed)s"}
httpDirectory:
  files: [{name: preseed.cfg}]
network:
  vpcs: [{name: lab, internet: %(internet)s}, {name: other}]
  subnets:
    - {name: lan, vpc: lab, cidr: 10.10.0.0/24}
    - {name: far, vpc: other, cidr: 10.20.0.0/24}
vms:
  - name: web
    source: {url: "http://127.0.0.1:1/disk.qcow2", checksum: "sha256:%(sum)s"}
    cloudInit: {}
    nics: [{name: eth0, subnet: lan}]
    provisioners:
      - {type: shell, shell: {inline: "echo web"}}
  - name: db
    source: {url: "http://127.0.0.1:1/disk.qcow2", checksum: "sha256:%(sum)s"}
    cloudInit: {}
    nics: [{name: eth0, subnet: lan}]
    provisioners:
      - {type: shell, shell: {inline: "%(db_step)s"}}
  - name: lone
    source: {url: "http://127.0.0.1:1/disk.qcow2", checksum: "sha256:%(sum)s"}
    cloudInit: {}
    nics: [{name: eth0, subnet: far}]
    provisioners:
      - {type: shell, shell: {inline: "%(lone_step)s"}}
"""
VALUES = {
    "preseed": "d-i one",
    "internet": "false",
    "sum": "c" * 64,
    "db_step": "echo db",
    "lone_step": "echo lone",
}


def keys(
    vm: str = "web",
    *,
    scope: str = "",
    host_internet: bool = True,
    reuse_outside: bool = False,
    **changes: str,
) -> VMKeys:
    manifest = parse(LAB % {**VALUES, **changes}).for_build()
    target = next(v for v in manifest.vms if v.name == vm)
    hashed = file_hasher(manifest, lambda name: b"fetched " + name.encode())
    return vm_keys(
        target,
        manifest,
        hashed,
        allow_internet=host_internet,
        reuse_outside=reuse_outside,
        scope=scope,
    )


def test_another_owner_s_identical_manifest_gets_different_keys() -> None:
    one, other = keys(scope="user-1"), keys(scope="user-2")
    assert one.base is not None and other.base is not None
    assert one.base != other.base
    assert one.steps[0].key != other.steps[0].key


def test_the_engine_s_default_scope_never_equals_a_portal_owner_s() -> None:
    assert keys().base != keys(scope="user-1").base


def test_the_content_of_an_http_directory_file_changes_every_vm_s_base_key() -> None:
    for vm in ("web", "lone"):
        assert keys(vm).base != keys(vm, preseed="d-i two").base


def test_a_step_of_a_vm_on_a_shared_subnet_changes_this_vm_s_key() -> None:
    assert keys("web").base != keys("web", db_step="echo changed").base


def test_a_vm_on_no_shared_subnet_does_not_change_this_vm_s_key() -> None:
    assert keys("web").base == keys("web", lone_step="echo changed").base


def test_the_network_s_internet_flag_while_building_changes_the_key_when_reused_outside() -> None:
    off = keys(reuse_outside=True)
    on = keys(reuse_outside=True, internet="true")
    host_off = keys(reuse_outside=True, host_internet=False, internet="true")
    assert off.base is not None and on.base is not None
    assert on.base != off.base
    assert host_off.base == off.base  # the host gives no internet: the same as none


def test_reuse_outside_itself_changes_the_key() -> None:
    assert keys(reuse_outside=True).base != keys(reuse_outside=False).base
