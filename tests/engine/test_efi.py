"""UEFI firmware: per-VM NVRAM, Secure Boot on q35, the NVRAM kept with a template and
copied for every clone."""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

import pytest

from ruddervirt.engine import efi, templates
from ruddervirt.engine.config import EngineConfig
from ruddervirt.engine.errors import BuildError
from ruddervirt.hypervisor.domain_xml import build_domain_xml
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.spec import FirmwareRecord, NvramRecord, TopologyRecord, VersionSpec, VMSpec
from tests.specs import vm_record

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
    assert efi.firmware_record(spec).machine == "q35"
    assert efi.firmware_record(efi.build_efi(tmp_path, secure_boot=False)).machine == "pc"
    assert efi.firmware_record(None).machine == "pc"


@needs_ovmf
def test_the_firmware_record_keeps_the_exact_files_the_build_booted(tmp_path):
    spec = efi.build_efi(tmp_path, secure_boot=True)
    record = efi.firmware_record(spec)
    assert (record.kind, record.secure_boot) == ("uefi", True)
    assert str(record.loader) == str(spec.loader) == str(efi.SECURE.loader)
    assert str(record.vars_template) == str(efi.SECURE.vars_template)
    assert record.nvram is None  # captured later, with the disks
    assert efi.firmware_record(None).kind == "bios"


def test_missing_firmware_is_a_clear_build_error(monkeypatch, tmp_path):
    monkeypatch.setattr(efi, "PLAIN", efi.Firmware(tmp_path / "no.fd", tmp_path / "no.fd", "pc"))
    with pytest.raises(BuildError, match="install the Debian package ovmf"):
        efi.build_efi(tmp_path, secure_boot=False)


@needs_ovmf
def test_capture_copies_the_vms_nvram_and_records_it(tmp_path):
    spec = efi.build_efi(tmp_path / "vm", secure_boot=False)
    spec.nvram.parent.mkdir()
    spec.nvram.write_bytes(b"boot entries written by the firmware")
    (tmp_path / "capture/web").mkdir(parents=True)
    record = efi.capture_nvram(spec, tmp_path / "capture/web", tmp_path / "capture")
    digest = hashlib.sha256(b"boot entries written by the firmware").hexdigest()
    assert record == NvramRecord(path=PurePosixPath("web/nvram.fd"), sha256=digest)
    saved = tmp_path / "capture/web/nvram.fd"
    assert saved.read_bytes() == b"boot entries written by the firmware"


def test_every_clone_boots_from_its_own_copy_of_the_templates_nvram(tmp_path):
    stored = tmp_path / "template/nvram.fd"
    stored.parent.mkdir()
    stored.write_bytes(b"template vars")
    one = efi.copy_nvram(stored, tmp_path / "c1")
    two = efi.copy_nvram(stored, tmp_path / "c2")
    assert one != two != stored
    assert one.read_bytes() == two.read_bytes() == b"template vars"
    one.write_bytes(b"changed by clone 1")
    assert stored.read_bytes() == b"template vars"


def test_a_template_without_its_nvram_is_an_error_not_pristine_variables(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"UEFI variables .* are missing"):
        efi.copy_nvram(tmp_path / "template/nvram.fd", tmp_path / "c1")
    assert not (tmp_path / "c1/nvram.fd").exists()


def uefi_vm(folder: str) -> VMSpec:
    """A captured Secure Boot VM whose disk and NVRAM are in `folder` (storage-relative)."""
    return vm_record(
        "web", disks=[("root", f"{folder}/root.qcow2", 1 << 30)],
        firmware=FirmwareRecord(
            kind="uefi", machine="q35", secure_boot=True, loader=efi.SECURE.loader,
            vars_template=efi.SECURE.vars_template,
            nvram=NvramRecord(path=PurePosixPath(f"{folder}/nvram.fd")),
        ),
    )  # fmt: skip


def test_moving_a_capture_folder_moves_the_nvram_path():
    spec = VersionSpec(vms=(uefi_vm("web"),), topology=TopologyRecord(vpcs=(), subnets=()))
    (moved,) = spec.rebased("modules/lab/v1").vms
    assert moved.firmware.nvram.path == PurePosixPath("modules/lab/v1/web/nvram.fd")
    assert moved.disks[0].path == PurePosixPath("modules/lab/v1/web/root.qcow2")


class SpyHypervisor(FakeHypervisor):
    def __init__(self) -> None:
        super().__init__(name_prefix="rvt-")
        self.nvram_removals: list[bool] = []

    def undefine(self, name: str, *, remove_nvram: bool = True) -> None:
        self.nvram_removals.append(remove_nvram)
        super().undefine(name, remove_nvram=remove_nvram)


def test_a_uefi_template_domain_shows_its_firmware_and_keeps_its_nvram(tmp_path):
    config = EngineConfig(storage_root=tmp_path, domain_type="qemu", name_prefix="rvt-")
    vm = uefi_vm("modules/lab/v1/web")
    spec = templates.template_spec(config, "m1v1", vm, title="lab@1 web")
    assert spec.machine == "q35" and spec.efi.nvram == tmp_path / "modules/lab/v1/web/nvram.fd"
    xml = build_domain_xml(spec)
    assert "OVMF_CODE_4M.secboot.fd" in xml and '<smm state="on" />' in xml
    hv = SpyHypervisor()
    version = VersionSpec(vms=(vm,), topology=TopologyRecord(vpcs=(), subnets=()))
    names = templates.define_templates(hv, config, key="m1v1", label="lab@1", spec=version)
    templates.remove_templates(hv, names)
    assert hv.nvram_removals == [False]
