"""UEFI firmware: per-VM NVRAM, Secure Boot on q35, the NVRAM kept with a template and
copied for every clone."""

from __future__ import annotations

from pathlib import Path

import pytest

from ruddervirt.engine import efi, templates
from ruddervirt.engine.build import BuildResult, CapturedDisk, CapturedVM
from ruddervirt.engine.config import EngineConfig
from ruddervirt.engine.errors import BuildError
from ruddervirt.hypervisor.domain_xml import build_domain_xml
from ruddervirt.hypervisor.fake import FakeHypervisor

needs_ovmf = pytest.mark.skipif(
    not efi.PLAIN.loader.is_file(), reason="the ovmf package is not installed"
)


@needs_ovmf
def test_a_build_vm_gets_a_fresh_nvram_in_its_folder(tmp_path):
    (tmp_path / efi.NVRAM_NAME).write_bytes(b"left by an earlier attempt")
    spec = efi.build_efi(tmp_path, secure_boot=False)
    assert spec.nvram == tmp_path / "nvram.fd" and not spec.nvram.exists()
    assert spec.nvram_template == efi.PLAIN.vars_template
    assert (spec.loader, spec.secure_boot) == (efi.PLAIN.loader, False)


@needs_ovmf
def test_secure_boot_uses_the_enrolled_keys_on_a_q35_machine(tmp_path):
    spec = efi.build_efi(tmp_path, secure_boot=True)
    assert spec.secure_boot and spec.loader.name == "OVMF_CODE_4M.secboot.fd"
    assert spec.nvram_template.name == "OVMF_VARS_4M.ms.fd"
    assert efi.machine_for({"secure_boot": True}) == "q35"
    assert efi.machine_for({"secure_boot": False}) == "pc"
    assert efi.machine_for(None) == "pc"


def test_missing_firmware_is_a_clear_build_error(monkeypatch, tmp_path):
    monkeypatch.setattr(efi, "PLAIN", efi.Firmware(tmp_path / "no.fd", tmp_path / "no.fd", "pc"))
    with pytest.raises(BuildError, match="install the Debian package ovmf"):
        efi.build_efi(tmp_path, secure_boot=False)


@needs_ovmf
def test_capture_copies_the_vms_nvram_and_records_it(tmp_path):
    spec = efi.build_efi(tmp_path / "vm", secure_boot=False)
    spec.nvram.parent.mkdir()
    spec.nvram.write_bytes(b"boot entries written by the firmware")
    (tmp_path / "capture").mkdir()
    record = efi.capture_nvram(spec, tmp_path / "capture")
    assert record == {
        "secure_boot": False,
        "machine": "pc",
        "nvram": str(tmp_path / "capture/nvram.fd"),
    }
    assert Path(record["nvram"]).read_bytes() == b"boot entries written by the firmware"


@needs_ovmf
def test_every_clone_boots_from_its_own_copy_of_the_templates_nvram(tmp_path):
    stored = tmp_path / "template/nvram.fd"
    stored.parent.mkdir()
    stored.write_bytes(b"template vars")
    record = {"secure_boot": False, "machine": "pc", "nvram": str(stored)}
    one = efi.instance_efi(record, tmp_path / "c1")
    two = efi.instance_efi(record, tmp_path / "c2")
    assert one.nvram != two.nvram != stored
    assert one.nvram.read_bytes() == two.nvram.read_bytes() == b"template vars"
    one.nvram.write_bytes(b"changed by clone 1")
    assert stored.read_bytes() == b"template vars"


@needs_ovmf
def test_a_template_without_stored_nvram_falls_back_to_pristine_variables(tmp_path):
    spec = efi.instance_efi({"secure_boot": False}, tmp_path / "c1")
    assert not spec.nvram.exists() and spec.nvram_template == efi.PLAIN.vars_template
    assert efi.instance_efi(None, tmp_path / "c2") is None


def uefi_vm(folder, bus: str) -> CapturedVM:
    """A captured Secure Boot VM whose disk and NVRAM are in `folder`."""
    return CapturedVM(
        name="web", cpu=1, memory=256 << 20,
        disks=(CapturedDisk("root", folder / "root.qcow2", bus, 1 << 30),),
        nics=(), invisible=False,
        efi={"secure_boot": True, "machine": "q35", "nvram": str(folder / "nvram.fd")},
        communicator={},
    )  # fmt: skip


def test_moving_a_capture_folder_moves_the_nvram_path(tmp_path):
    old, new = tmp_path / "builds/3/capture", tmp_path / "modules/lab/v1"
    vm = uefi_vm(old / "web", "virtio")
    (moved,) = BuildResult(capture_dir=old, vms=(vm,)).relocated(old, new)
    assert moved.efi["nvram"] == str(new / "web/nvram.fd")
    assert moved.disks[0].path == new / "web/root.qcow2"


class SpyHypervisor(FakeHypervisor):
    def __init__(self) -> None:
        super().__init__(name_prefix="rvt-")
        self.nvram_removals: list[bool] = []

    def undefine(self, name: str, *, remove_nvram: bool = True) -> None:
        self.nvram_removals.append(remove_nvram)
        super().undefine(name, remove_nvram=remove_nvram)


@needs_ovmf
def test_a_uefi_template_domain_shows_its_firmware_and_keeps_its_nvram(tmp_path):
    config = EngineConfig(storage_root=tmp_path, domain_type="qemu", name_prefix="rvt-")
    vm = uefi_vm(tmp_path, "sata")
    spec = templates.template_spec(config, "m1v1", vm, title="lab@1 web")
    assert spec.machine == "q35" and spec.efi.nvram == tmp_path / "nvram.fd"
    xml = build_domain_xml(spec)
    assert "OVMF_CODE_4M.secboot.fd" in xml and '<smm state="on" />' in xml
    hv = SpyHypervisor()
    names = templates.define_templates(hv, config, key="m1v1", label="lab@1", vms=[vm])
    templates.remove_templates(hv, names)
    assert hv.nvram_removals == [False]
