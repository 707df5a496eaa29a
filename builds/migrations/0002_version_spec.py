"""One record per module version: ModuleVersion.spec (a ruddervirt.spec.VersionSpec as JSON)
replaces the per-VM TemplateVM.spec dicts.

Existing versions get theirs from what was stored: each TemplateVM.spec (cpu, memory, disks,
NICs, efi, invisible, communicator), the build VM's domain name (its management MAC, as
clones derived it), and the version's manifest text for the topology, parsed one last time.
NICs the template left without an address get the one every clone of the version was given
(the same planning clones did). The firmware files are the ones builds booted until now. A
version that cannot be converted keeps spec = null: it can no longer be cloned, and says
so. Reversible: going back writes the old dicts from the records.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.db import migrations, models

OVMF = PurePosixPath("/usr/share/OVMF")
# (loader, vars template, machine) that builds booted before the version record existed.
LEGACY_FIRMWARE = {
    False: (OVMF / "OVMF_CODE_4M.fd", OVMF / "OVMF_VARS_4M.fd", "pc"),
    True: (OVMF / "OVMF_CODE_4M.secboot.fd", OVMF / "OVMF_VARS_4M.ms.fd", "q35"),
}


def _relative(path: str, root: Path) -> PurePosixPath:
    try:
        return PurePosixPath(Path(path).relative_to(root).as_posix())
    except ValueError:
        return PurePosixPath(os.path.relpath(path, root))


def _manifest(text: str):
    from ruddervirt.manifest import parse
    from ruddervirt.manifest.convert import to_manifest
    from ruddervirt.manifest.loader import load

    try:
        return parse(text)
    except Exception:  # a stricter validator than the one that built it: read it leniently
        return to_manifest(load(text).data)


def _firmware(efi: dict | None, root: Path):
    from ruddervirt.spec import FirmwareRecord, NvramRecord

    if not efi:
        return FirmwareRecord()
    secure = bool(efi.get("secure_boot"))
    loader, varstore, machine = LEGACY_FIRMWARE[secure]
    stored = Path(str(efi["nvram"]))
    digest = hashlib.sha256(stored.read_bytes()).hexdigest() if stored.is_file() else None
    return FirmwareRecord(
        kind="uefi",
        machine=str(efi.get("machine") or machine),
        secure_boot=secure,
        loader=loader,
        vars_template=varstore,
        nvram=NvramRecord(path=_relative(str(stored), root), sha256=digest),
    )


def legacy_spec(version, templates, build_domains: dict, root: Path):
    """The VersionSpec of a version stored the old way (see the module docstring)."""
    from ruddervirt.engine.capture import topology_record
    from ruddervirt.engine.topology import plan
    from ruddervirt.hypervisor.domain_xml import mgmt_mac_for
    from ruddervirt.spec import (
        CommunicatorRecord,
        DiskRecord,
        MgmtRecord,
        NicRecord,
        VersionSpec,
        VMSpec,
    )

    base = _manifest(version.manifest_text)
    macs = {(t.name, n["name"]): n["mac"] for t in templates for n in t.spec.get("nics", [])}
    ips = {(t.name, n["name"]): n["ip"] for t in templates for n in t.spec.get("nics", [])}
    planned = plan(
        base, owner="v", prefix="", allow_internet=False, macs=macs,
        ips={k: v for k, v in ips.items() if v},
    )  # fmt: skip
    prefix = settings.RUDDERVIRT_NAME_PREFIX
    vms = []
    for tpl in templates:
        spec = tpl.spec
        domain = build_domains.get(tpl.name) or f"{prefix}b{version.build_id}-{tpl.name}"
        disks = tuple(
            DiskRecord(
                name=d["name"], bus=d["bus"], size=int(d["size"]),
                boot_order=1 if i == 0 else None, path=_relative(d["path"], root),
            )
            for i, d in enumerate(spec["disks"])
        )  # fmt: skip
        nics = tuple(
            NicRecord(
                name=n.name, subnet=n.subnet, slot=n.slot, mac=n.mac, ip=n.ip,
                static=n.static, model=n.model,
            )
            for n in planned.nics[tpl.name]
        )  # fmt: skip
        vms.append(
            VMSpec(
                name=tpl.name, cpu=int(spec["cpu"]), memory=int(spec["memory"]), disks=disks,
                nics=nics, mgmt=MgmtRecord(mac=mgmt_mac_for(domain)),
                firmware=_firmware(spec.get("efi"), root),
                invisible=bool(spec.get("invisible")),
                communicator=CommunicatorRecord(**(spec.get("communicator") or {})),
            )
        )  # fmt: skip
    return VersionSpec(vms=tuple(vms), topology=topology_record(base, base.for_build()))


def forward(apps, schema_editor) -> None:
    from ruddervirt.spec import dump_spec

    ModuleVersion = apps.get_model("builds", "ModuleVersion")
    BuildVM = apps.get_model("builds", "BuildVM")
    root = Path(settings.RUDDERVIRT_STORAGE_ROOT)
    for version in ModuleVersion.objects.all():
        templates = list(version.vms.order_by("index"))
        domains = dict(
            BuildVM.objects.filter(build_id=version.build_id).values_list("name", "domain_name")
        )
        try:
            spec = dump_spec(legacy_spec(version, templates, domains, root))
        except Exception as exc:
            print(f"\n  version {version.pk}: no version record ({exc})", file=sys.stderr)
            continue
        ModuleVersion.objects.filter(pk=version.pk).update(spec=spec)


def backward(apps, schema_editor) -> None:
    from ruddervirt.spec import load_spec, record_json

    ModuleVersion = apps.get_model("builds", "ModuleVersion")
    TemplateVM = apps.get_model("builds", "TemplateVM")
    root = Path(settings.RUDDERVIRT_STORAGE_ROOT)
    for version in ModuleVersion.objects.exclude(spec=None):
        for vm in load_spec(version.spec).vms:
            firmware = vm.firmware
            efi = None
            if firmware.uefi:
                nvram = str(root / str(firmware.nvram.path))
                efi = {"secure_boot": firmware.secure_boot, "machine": firmware.machine,
                       "nvram": nvram}  # fmt: skip
            old = {
                "cpu": vm.cpu,
                "memory": vm.memory,
                "disks": [
                    {"name": d.name, "path": str(root / str(d.path)), "bus": d.bus, "size": d.size}
                    for d in vm.disks
                ],
                "nics": [record_json(n) for n in vm.nics],
                "invisible": vm.invisible,
                "efi": efi,
                "communicator": record_json(vm.communicator),
            }
            TemplateVM.objects.filter(version=version, name=vm.name).update(spec=old)


class Migration(migrations.Migration):
    dependencies = [("builds", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="moduleversion", name="spec", field=models.JSONField(null=True)
        ),
        migrations.AlterField(
            model_name="templatevm", name="spec", field=models.JSONField(null=True)
        ),
        migrations.RunPython(forward, backward),
        migrations.RemoveField(model_name="templatevm", name="spec"),
    ]
