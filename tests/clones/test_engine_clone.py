"""The clone pipeline against the fake hypervisor (disks are real qemu-img files)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from ruddervirt.engine import clone as engine
from ruddervirt.engine.config import EngineConfig
from ruddervirt.hypervisor import disks as qimg
from ruddervirt.hypervisor.driver import DomainState, HypervisorError
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.spec import VMSpec
from tests.clones.conftest import MANIFEST, MEMORY, MIB, NICS
from tests.specs import version_of, vm_record

PREFIX = "rvu-"


@pytest.fixture
def config(tmp_path) -> EngineConfig:
    return EngineConfig(storage_root=tmp_path, domain_type="qemu", name_prefix=PREFIX,
                        allow_internet=False, acpi_timeout_s=0.5)  # fmt: skip


@pytest.fixture
def hv() -> FakeHypervisor:
    return FakeHypervisor(name_prefix=PREFIX)


@pytest.fixture
def templates(tmp_path) -> tuple[VMSpec, ...]:
    """The version's VM records; their disks under the storage root (tmp_path)."""
    vms = []
    for name in ("web", "dc"):
        disk = tmp_path / "tpl" / f"{name}.qcow2"
        disk.parent.mkdir(exist_ok=True)
        qimg.create_blank(disk, 64 * MIB)
        vms.append(
            vm_record(
                name, memory=MEMORY[name], disks=[("root", f"tpl/{name}.qcow2", 64 * MIB)],
                nics=NICS[name], invisible=name == "dc", mgmt_mac="52:54:00:99:99:99",
            )
        )  # fmt: skip
    return tuple(vms)


def request(tmp_path: Path, templates, key: str = "c1", **kwargs) -> engine.CloneRequest:
    return engine.CloneRequest(
        key=key,
        spec=version_of(MANIFEST, templates),
        workdir=tmp_path / "clones" / key,
        title="lab@1 for carol",
        **kwargs,
    )


def test_a_clone_copies_the_template_machine_and_its_addresses(tmp_path, hv, config, templates):
    result = engine.create_clone(request(tmp_path, templates), hv=hv, config=config)
    web = hv.domains[f"{PREFIX}c1-web"].spec
    assert web.memory_bytes == 256 * MIB and web.vcpus == 1
    assert [(n.mac, n.pci_slot, n.model) for n in web.nics] == [("52:54:00:0a:00:01", 1, "virtio")]
    assert web.nics[0].network == f"{PREFIX}c1-lan"
    assert web.mgmt.mac == "52:54:00:99:99:99"  # the build's management NIC
    assert web.metadata["kind"] == "clone" and web.metadata["clone"] == "c1"
    assert hv.state(f"{PREFIX}c1-web") is DomainState.RUNNING
    lan = hv.networks[f"{PREFIX}c1-lan"].spec
    leases = {h.mac: str(h.ip) for h in lan.dhcp_hosts}
    assert leases == {"52:54:00:0a:00:01": "10.10.0.10", "52:54:00:0a:00:02": "10.10.0.254"}
    assert not lan.nat
    assert {vm.name: vm.invisible for vm in result.vms} == {"web": False, "dc": True}


def test_linked_clone_disks_are_small_overlays_on_the_template(tmp_path, hv, config, templates):
    result = engine.create_clone(request(tmp_path, templates), hv=hv, config=config)
    disk = result.vms[0].disks[0]
    info = qimg.info(disk)
    assert info["backing-filename"] == str(tmp_path / templates[0].disks[0].path)
    assert engine.disk_usage(disk) < 1 * MIB


def test_full_copy_has_no_backing_file(tmp_path, hv, config, templates):
    result = engine.create_clone(request(tmp_path, templates, full_copy=True), hv=hv, config=config)
    assert "backing-filename" not in qimg.info(result.vms[0].disks[0])


def test_two_clones_get_the_same_addresses_on_networks_of_their_own(
    tmp_path, hv, config, templates
):
    engine.create_clone(request(tmp_path, templates, "c1"), hv=hv, config=config)
    engine.create_clone(request(tmp_path, templates, "c2"), hv=hv, config=config)
    one, two = hv.domains[f"{PREFIX}c1-web"].spec, hv.domains[f"{PREFIX}c2-web"].spec
    assert one.nics[0].mac == two.nics[0].mac
    assert one.nics[0].network != two.nics[0].network
    bridges = {n.spec.bridge for n in hv.networks.values()}
    assert len(bridges) == 2
    assert one.mgmt.host_port != two.mgmt.host_port


def test_a_kept_port_is_reused_when_free(tmp_path, hv, config, templates):
    port = engine.free_loopback_port()
    engine.create_clone(request(tmp_path, templates, ports={"web": port}), hv=hv, config=config)
    assert hv.domains[f"{PREFIX}c1-web"].spec.mgmt.host_port == port


def test_a_failed_creation_leaves_nothing_behind(tmp_path, hv, config, templates, monkeypatch):
    def broken_start(name):
        raise HypervisorError(f"start {name!r}: no room")

    monkeypatch.setattr(hv, "start", broken_start)
    with pytest.raises(engine.CloneError, match="no room"):
        engine.create_clone(request(tmp_path, templates), hv=hv, config=config)
    assert hv.domains == {} and hv.networks == {}
    assert not (tmp_path / "clones" / "c1").exists()
    assert all((tmp_path / vm.disks[0].path).exists() for vm in templates)  # templates untouched


def test_a_missing_template_disk_is_named(tmp_path, hv, config, templates):
    (tmp_path / templates[1].disks[0].path).unlink()
    with pytest.raises(engine.CloneError, match=r"VM dc: template disk .* is missing"):
        engine.create_clone(request(tmp_path, templates), hv=hv, config=config)


def test_stop_then_start_brings_the_networks_back(tmp_path, hv, config, templates):
    req = request(tmp_path, templates)
    result = engine.create_clone(req, hv=hv, config=config)
    domains = [vm.domain for vm in result.vms]
    how = engine.stop_clone(hv, domains, timeout=1)
    assert set(how.values()) == {"powered off"}
    hv.destroy_network(f"{PREFIX}c1-lan")  # as after a host reboot
    ports = engine.start_clone(req, hv=hv, config=config, ports={})
    assert set(ports) == {"web", "dc"}
    assert all(hv.state(d) is DomainState.RUNNING for d in domains)


def test_a_guest_ignoring_the_power_button_is_forced_off(tmp_path, hv, config, templates):
    result = engine.create_clone(request(tmp_path, templates), hv=hv, config=config)
    hv.acpi_ignored.add(result.vms[0].domain)
    how = engine.stop_clone(hv, [result.vms[0].domain], timeout=0.3)
    assert "forced off" in how[result.vms[0].domain]
    assert hv.state(result.vms[0].domain) is DomainState.SHUTOFF


def test_a_guest_whose_agent_answers_powers_off_although_it_ignores_the_power_button(
    tmp_path, hv, config, templates
):
    result = engine.create_clone(request(tmp_path, templates), hv=hv, config=config)
    web = result.vms[0].domain
    hv.acpi_ignored.add(web)
    hv.agents.add(web)
    how = engine.stop_clone(hv, [web], timeout=0.3)
    assert how == {web: "powered off"}


def test_delete_removes_domains_networks_and_disks_only_of_that_clone(
    tmp_path, hv, config, templates
):
    one, two = request(tmp_path, templates, "c1"), request(tmp_path, templates, "c12")
    engine.create_clone(one, hv=hv, config=config)
    engine.create_clone(two, hv=hv, config=config)
    removed = engine.delete_clone(one, hv=hv, config=config)
    assert f"domain {PREFIX}c1-web" in removed
    assert sorted(hv.domains) == [f"{PREFIX}c12-dc", f"{PREFIX}c12-web"]
    assert list(hv.networks) == [f"{PREFIX}c12-lan"]
    assert not one.workdir.exists() and two.workdir.exists()


def test_create_many_prepares_every_clone_before_starting_any(tmp_path, hv, config, templates):
    requests = [request(tmp_path, templates, f"c{i}") for i in range(4)]
    results = engine.create_many(requests, hv=hv, config=config, workers=3)
    assert all(isinstance(r, engine.CloneResult) for r in results)
    calls = [m for m, _name in hv.calls if m in ("define", "start", "start_paused", "resume")]
    # Guests start paused and run together at the end: starts never compete with booting guests.
    assert calls == ["define"] * 8 + ["start_paused"] * 8 + ["resume"] * 8
    assert [r.vms[0].domain for r in results] == [f"{PREFIX}c{i}-web" for i in range(4)]
    assert all(hv.state(vm.domain) is DomainState.RUNNING for r in results for vm in r.vms)


def test_create_many_returns_the_error_of_a_clone_that_failed(tmp_path, hv, config, templates):
    from dataclasses import replace

    good = request(tmp_path, templates, "c1")
    lost = replace(templates[0].disks[0], path=PurePosixPath("gone.qcow2"))
    broken = request(tmp_path, (replace(templates[0], disks=(lost,)), templates[1]), "c2")
    results = engine.create_many([good, broken], hv=hv, config=config)
    assert isinstance(results[0], engine.CloneResult)
    assert isinstance(results[1], engine.CloneError) and "gone.qcow2 is missing" in str(results[1])
    assert not [d for d in hv.domains if d.startswith(f"{PREFIX}c2-")]


def test_starting_a_clone_left_paused_resumes_it(tmp_path, hv, config, templates):
    req = request(tmp_path, templates)
    engine.create_clone(req, hv=hv, config=config, start=False)
    hv.start_paused(f"{PREFIX}c1-web")  # a batch that died before its resume wave
    engine.start_clone(req, hv=hv, config=config, ports={})
    assert hv.state(f"{PREFIX}c1-web") is DomainState.RUNNING
    assert hv.state(f"{PREFIX}c1-dc") is DomainState.RUNNING


def uefi(templates, tmp_path: Path, secure: bool = True) -> tuple[VMSpec, ...]:
    """The templates with web on UEFI, its captured NVRAM under the storage root."""
    from dataclasses import replace

    from ruddervirt.engine import efi
    from ruddervirt.spec import FirmwareRecord, NvramRecord

    (tmp_path / "tpl/web-nvram.fd").write_bytes(b"variables the build left")
    chosen = efi.SECURE if secure else efi.PLAIN
    firmware = FirmwareRecord(
        kind="uefi", machine=chosen.machine, secure_boot=secure,
        loader=PurePosixPath(str(chosen.loader)),
        vars_template=PurePosixPath(str(chosen.vars_template)),
        nvram=NvramRecord(path=PurePosixPath("tpl/web-nvram.fd")),
    )  # fmt: skip
    return (replace(templates[0], firmware=firmware), templates[1])


@pytest.mark.parametrize("secure", [False, True])
def test_a_uefi_clone_boots_its_own_copy_of_the_captured_nvram_with_the_builds_loader(
    tmp_path, hv, config, templates, secure
):
    vms = uefi(templates, tmp_path, secure)
    engine.create_clone(request(tmp_path, vms), hv=hv, config=config)
    web = hv.domains[f"{PREFIX}c1-web"].spec
    assert web.efi.nvram == tmp_path / "clones/c1/web/efivars.fd"
    assert web.efi.nvram.read_bytes() == b"variables the build left"  # not OVMF's pristine ones
    assert str(web.efi.loader) == str(vms[0].firmware.loader)  # the very file the build booted
    assert (web.efi.secure_boot, web.machine) == (secure, "q35" if secure else "pc")
    web.efi.nvram.write_bytes(b"written by the clone's firmware")
    assert (tmp_path / "tpl/web-nvram.fd").read_bytes() == b"variables the build left"
    assert hv.domains[f"{PREFIX}c1-dc"].spec.efi is None


def test_a_uefi_clone_whose_template_lost_its_nvram_fails_with_the_reason(
    tmp_path, hv, config, templates
):
    vms = uefi(templates, tmp_path)
    (tmp_path / "tpl/web-nvram.fd").unlink()
    with pytest.raises(
        engine.CloneError, match=r"VM web: the template's UEFI variables .* missing"
    ):
        engine.create_clone(request(tmp_path, vms), hv=hv, config=config)
    assert hv.domains == {} and not (tmp_path / "clones/c1").exists()
