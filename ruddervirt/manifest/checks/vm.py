"""Per-VM checks: source, ISOs, resources, disks, communicator, boot command, cloud-init
userData; durations."""

from __future__ import annotations

from decimal import Decimal

from ruddervirt.guest.bootcommand import BootCommandError, substitute, tokenize
from ruddervirt.hypervisor.seed import user_data_problem
from ruddervirt.manifest import defaults, paths, units
from ruddervirt.manifest.checks.base import (
    Raw,
    Reporter,
    check_unique,
    check_url,
    entries,
    mapping,
    string,
    vms,
    warn_unpinned,
)

SOURCE_KINDS = ("url", "blank", "buildRef")


def check_vms(report: Reporter, data: Raw) -> None:
    for name in ("timeout", "isoCacheTTL"):
        seconds = duration(report, name, data.get(name))
        if name == "timeout" and seconds == 0:
            report.error(name, "expected a timeout longer than 0 (e.g. 45m)")
    check_unique(report, vms(data), "VM")
    for vm_path, vm in vms(data):
        _check_source(report, vm_path, vm)
        _check_isos(report, vm_path, vm)
        check_resources(report, f"{vm_path}.resources", vm.get("resources"))
        _check_disks(report, vm_path, vm)
        _check_communicator(report, vm_path, vm)
        _check_shutdown(report, vm_path, vm)
        _check_boot_command(report, vm_path, vm)
        _check_user_data(report, vm_path, vm)
    for path, override in entries(
        "buildOverrides.vms", mapping(data.get("buildOverrides")).get("vms")
    ):
        check_resources(report, f"{path}.resources", override.get("resources"))


def duration(report: Reporter, path: str, value: object) -> float | None:
    """Seconds, or None when absent or malformed (the schema reports malformed ones)."""
    if value is None or isinstance(value, bool) or not isinstance(value, str | int):
        return None
    try:
        return units.parse_duration(value)
    except units.OutOfRange as exc:
        report.error(path, str(exc))
    except ValueError:
        pass
    return None


def quantity(report: Reporter, path: str, value: object) -> Decimal | None:
    """The exact quantity, or None when absent or malformed (reported by the schema)."""
    if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        return units.parse_quantity(value)
    except units.OutOfRange as exc:
        report.error(path, str(exc))
    except ValueError:
        pass
    return None


def _check_user_data(report: Reporter, vm_path: str, vm: Raw) -> None:
    """userData the build could not merge its key and boot command into fails here, not
    after the disks are made."""
    text = mapping(vm.get("cloudInit")).get("userData")
    problem = user_data_problem(text) if isinstance(text, str) else None
    if problem is not None:
        report.error(f"{vm_path}.cloudInit.userData", problem)


def _check_source(report: Reporter, vm_path: str, vm: Raw) -> None:
    source = vm.get("source")
    if not isinstance(source, dict):
        return
    path = f"{vm_path}.source"
    kinds = [kind for kind in SOURCE_KINDS if kind in source]
    if len(kinds) != 1:
        got = " and ".join(f"`{k}`" for k in kinds) if kinds else "none"
        report.error(path, f"a source needs exactly one of `url`, `blank` or `buildRef`, got {got}")
    if source.get("blank") is False:
        report.error(
            f"{path}.blank",
            "expected `blank: true` (an empty boot disk installed from ISOs); to use another "
            "source, remove `blank`",
        )
    if "checksum" in source and "url" not in source:
        report.error(f"{path}.checksum", "`checksum` applies to `url` sources only", at_key=True)
    url = string(source.get("url"))
    if url is not None:
        check_url(report, f"{path}.url", url)
        warn_unpinned(report, f"{path}.url", url)
        if "checksum" not in source:
            report.warning(
                f"{path}.url",
                "no `checksum`: downloads are not verified (add checksum: sha256:<hex>)",
            )
    if "bootCommand" in vm and source.get("blank") is not True:
        report.warning(
            f"{vm_path}.bootCommand",
            "`bootCommand` is meant for ISO installs (`source: {blank: true}`); a booted disk "
            "image receives these keystrokes on its console too, which is rarely intended",
            at_key=True,
        )


def _check_isos(report: Reporter, vm_path: str, vm: Raw) -> None:
    blank = mapping(vm.get("source")).get("blank") is True
    path = f"{vm_path}.isos"
    isos = list(entries(path, vm.get("isos")))
    if "isos" in vm and not blank:
        report.error(
            path,
            "`isos` go with a blank source only (`source: {blank: true}`): the ISOs are "
            "installed from onto the empty disk",
            at_key=True,
        )
    elif blank and not isos:
        report.error(path, "a blank disk needs at least one ISO to install from (add `isos`)")
    for iso_path, iso in isos:
        url = string(iso.get("url"))
        if url is None:
            continue
        check_url(report, f"{iso_path}.url", url)
        warn_unpinned(report, f"{iso_path}.url", url)
        if "checksum" not in iso:
            report.warning(
                f"{iso_path}.url",
                "no `checksum`: the ISO is not verified and is cached by URL only "
                "(add checksum: sha256:<hex>)",
            )


def check_resources(report: Reporter, path: str, value: object) -> None:
    resources = mapping(value)
    cpu = quantity(report, f"{path}.cpu", resources.get("cpu"))
    if cpu is not None and cpu <= 0:
        report.error(f"{path}.cpu", f"expected more than 0 vCPUs, got {resources.get('cpu')!r}")
    memory = quantity(report, f"{path}.memory", resources.get("memory"))
    if memory is not None and memory < defaults.MIN_MEMORY_BYTES:
        report.error(
            f"{path}.memory", f"expected at least 64Mi of memory, got {resources.get('memory')!r}"
        )


def _check_disks(report: Reporter, vm_path: str, vm: Raw) -> None:
    disks = list(entries(f"{vm_path}.disks", vm.get("disks")))
    check_unique(report, disks, "disk")
    for path, disk in disks:
        size = quantity(report, f"{path}.size", disk.get("size"))
        if size is not None and size < defaults.MIN_DISK_SIZE_BYTES:
            report.error(
                f"{path}.size", f"expected a disk size of at least 1Mi, got {disk.get('size')!r}"
            )


def _check_communicator(report: Reporter, vm_path: str, vm: Raw) -> None:
    path = f"{vm_path}.communicator"
    communicator = mapping(vm.get("communicator"))
    kind = string(communicator.get("type"))
    if kind is not None and kind != defaults.COMMUNICATOR_TYPE:
        report.error(
            f"{path}.type",
            f"communicator type {kind!r} is not supported: RudderVirt reaches guests over SSH "
            "only (`type: ssh`); Windows guests need the OpenSSH server",
        )
    seconds = duration(report, f"{path}.sshTimeout", communicator.get("sshTimeout"))
    if seconds == 0:
        report.error(f"{path}.sshTimeout", "expected an SSH timeout longer than 0 (e.g. 10m)")


def _check_shutdown(report: Reporter, vm_path: str, vm: Raw) -> None:
    shell = string(mapping(vm.get("communicator")).get("shell"))
    if vm.get("shutdown") == "fast" and shell == "powershell":
        report.error(
            f"{vm_path}.shutdown",
            "a PowerShell guest is always shut down gracefully before its capture (Windows "
            "must finish its own shutdown): remove `shutdown: fast`",
        )


def _check_boot_command(report: Reporter, vm_path: str, vm: Raw) -> None:
    commands = vm.get("bootCommand")
    if not isinstance(commands, list):
        return
    for i, command in enumerate(commands):
        if not isinstance(command, str):
            continue
        try:
            substitute(command, "192.0.2.1", 8000)  # only to find unknown templates
            tokenize(command)
        except BootCommandError as exc:
            report.error(
                paths.child(f"{vm_path}.bootCommand", i),
                f"{exc.message} at character {exc.offset + 1} of the string",
            )
