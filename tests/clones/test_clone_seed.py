"""Clones of VMs built with cloudInit boot with a seed of their own (fake hypervisor; the seed
ISOs are real, read back with isoinfo): a new instance per clone, the module's addresses,
nothing provisioned again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from ruddervirt.engine import clone as engine
from ruddervirt.engine.config import EngineConfig
from ruddervirt.hypervisor import disks as qimg
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.spec import CloudInitRecord, VMSpec
from tests.clones.conftest import MANIFEST, MEMORY, MIB, NICS
from tests.hypervisor.test_hv_seed import iso_files, iso_read
from tests.specs import version_of, vm_record

PREFIX = "rvs-"
MGMT = "52:54:00:99:99:99"


@pytest.fixture
def config(tmp_path) -> EngineConfig:
    return EngineConfig(storage_root=tmp_path, domain_type="qemu", name_prefix=PREFIX,
                        allow_internet=False, acpi_timeout_s=0.5)  # fmt: skip


@pytest.fixture
def hv() -> FakeHypervisor:
    return FakeHypervisor(name_prefix=PREFIX)


def templates(tmp_path: Path, *, web_seed: CloudInitRecord | None) -> tuple[VMSpec, ...]:
    """web (with `web_seed`) and dc (built without cloudInit)."""
    vms = []
    for name in ("web", "dc"):
        disk = tmp_path / "tpl" / f"{name}.qcow2"
        disk.parent.mkdir(exist_ok=True)
        if not disk.exists():
            qimg.create_blank(disk, 64 * MIB)
        record = vm_record(
            name, memory=MEMORY[name], disks=[("root", f"tpl/{name}.qcow2", 64 * MIB)],
            nics=NICS[name], invisible=name == "dc", mgmt_mac=MGMT,
        )  # fmt: skip
        vms.append(replace(record, cloud_init=web_seed) if name == "web" else record)
    return tuple(vms)


SEED = CloudInitRecord()


def clone(tmp_path, hv, config, key: str, web_seed=SEED) -> engine.CloneResult:
    req = engine.CloneRequest(
        key=key,
        spec=version_of(MANIFEST, templates(tmp_path, web_seed=web_seed)),
        workdir=tmp_path / "clones" / key,
    )
    return engine.create_clone(req, hv=hv, config=config)


def seed_of(hv: FakeHypervisor, domain: str) -> Path:
    (cdrom,) = [d for d in hv.domains[domain].spec.disks if d.device == "cdrom"]
    assert (cdrom.target_bus, cdrom.readonly) == ("scsi", True)  # the build's seed drive
    return Path(cdrom.path)


def test_each_clone_of_a_cloud_init_vm_boots_its_own_seed_with_a_new_instance(
    tmp_path, hv, config
) -> None:
    clone(tmp_path, hv, config, "c1")
    clone(tmp_path, hv, config, "c2")
    seeds = [seed_of(hv, f"{PREFIX}{key}-web") for key in ("c1", "c2")]
    assert seeds == [tmp_path / f"clones/{key}/web/seed.iso" for key in ("c1", "c2")]
    metas = [yaml.safe_load(iso_read(seed, "/meta-data")) for seed in seeds]
    assert [m["local-hostname"] for m in metas] == ["web", "web"]
    ids = [m["instance-id"] for m in metas]
    assert ids[0].startswith(f"{PREFIX}c1-web-") and ids[1].startswith(f"{PREFIX}c2-web-")
    assert len(set(ids)) == 2
    assert iso_files(seeds[0]) == ["/meta-data", "/network-config", "/user-data"]


def test_clones_of_a_vm_that_was_not_generalized_keep_the_builds_instance(
    tmp_path, hv, config
) -> None:
    kept = CloudInitRecord(instance_id="rv-b7-web")
    clone(tmp_path, hv, config, "c1", web_seed=kept)
    clone(tmp_path, hv, config, "c2", web_seed=kept)
    for key in ("c1", "c2"):
        meta = yaml.safe_load(iso_read(seed_of(hv, f"{PREFIX}{key}-web"), "/meta-data"))
        assert meta["instance-id"] == "rv-b7-web"


def test_the_clone_seed_has_the_modules_addresses_and_the_build_management_nic(
    tmp_path, hv, config
) -> None:
    clone(tmp_path, hv, config, "c1")
    network = yaml.safe_load(iso_read(seed_of(hv, f"{PREFIX}c1-web"), "/network-config"))
    assert network == {
        "version": 2,
        "ethernets": {
            "nic0": {
                "match": {"macaddress": "52:54:00:0a:00:01"},
                "addresses": ["10.10.0.10/24"],
                "nameservers": {"addresses": ["10.10.0.1"]},
                "routes": [{"to": "0.0.0.0/0", "via": "10.10.0.1"}],
            },
            "rvmgmt": {
                "match": {"macaddress": MGMT},
                "dhcp4": True,
                "dhcp4-overrides": {"use-routes": False, "use-dns": False},
                "optional": True,
            },
        },
    }


def test_the_clone_seed_provisions_nothing_again(tmp_path, hv, config) -> None:
    clone(tmp_path, hv, config, "c1")
    user_data = iso_read(seed_of(hv, f"{PREFIX}c1-web"), "/user-data")
    assert user_data.startswith("#cloud-config\n")
    config = yaml.safe_load(user_data)
    # Nothing to run but the boot command that writes the static NIC's name servers.
    [(sh, _c, _script, _name, path, *servers)] = config.pop("bootcmd")
    assert (sh, path) == ("sh", "/etc/resolv.conf") and servers and servers[0].endswith(".1")
    assert config == {"hostname": "web", "users": []}


def test_the_instructors_network_data_is_kept_with_the_management_nic(tmp_path, hv, config) -> None:
    own = "version: 2\nethernets:\n  lan: {match: {macaddress: '52:54:00:0a:00:01'}, dhcp4: true}\n"
    clone(tmp_path, hv, config, "c1", web_seed=CloudInitRecord(network_data=own))
    network = yaml.safe_load(iso_read(seed_of(hv, f"{PREFIX}c1-web"), "/network-config"))
    assert network["ethernets"]["lan"] == {
        "match": {"macaddress": "52:54:00:0a:00:01"},
        "dhcp4": True,
    }
    assert network["ethernets"]["rvmgmt"]["match"] == {"macaddress": MGMT}


def test_a_vm_built_without_cloud_init_gets_no_seed(tmp_path, hv, config) -> None:
    clone(tmp_path, hv, config, "c1", web_seed=None)
    for vm in ("web", "dc"):
        assert not [d for d in hv.domains[f"{PREFIX}c1-{vm}"].spec.disks if d.device == "cdrom"]
    assert not list((tmp_path / "clones").rglob("seed.iso"))


def test_the_seed_goes_with_the_clone_and_a_restart_keeps_it(tmp_path, hv, config) -> None:
    req = engine.CloneRequest(
        key="c1",
        spec=version_of(MANIFEST, templates(tmp_path, web_seed=SEED)),
        workdir=tmp_path / "clones" / "c1",
    )
    made = engine.create_clone(req, hv=hv, config=config)
    seed = seed_of(hv, f"{PREFIX}c1-web")
    before = seed.read_bytes()
    engine.stop_clone(hv, [v.domain for v in made.vms], timeout=0.1, force=True)
    engine.start_clone(req, hv=hv, config=config, ports={})
    assert seed_of(hv, f"{PREFIX}c1-web") == seed and seed.read_bytes() == before
    engine.delete_clone(req, hv=hv, config=config)
    assert not seed.exists()
