"""The host's caps (ruddervirt.manifest.limits) on what a manifest asks for.

Values are compared as the build will use them: `cpu` rounded up to whole vCPUs, and a
default (a VM without `disks` gets a 20Gi disk) is held to the cap like a written value,
reported where it would be written. Malformed values are skipped: other checks report them.
"""

from __future__ import annotations

from ruddervirt.manifest import defaults, paths, units
from ruddervirt.manifest.checks.base import Raw, Reporter, entries, mapping, string, vms
from ruddervirt.manifest.limits import SETTINGS, Limits, duration_text, size_text


def check_limits(report: Reporter, data: Raw, limits: Limits) -> None:
    _Limiter(report, limits).check(data)


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    try:
        return units.parse_duration(value)
    except ValueError:
        return None


def _bytes(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        return units.quantity_bytes(value)
    except ValueError:
        return None


class _Limiter:
    def __init__(self, report: Reporter, limits: Limits) -> None:
        self.report = report
        self.limits = limits

    def over(self, path: str, cap: str, expected: str, got: str, *, at_key: bool = False) -> None:
        """Report a value over the cap `cap` (a Limits field name)."""
        self.report.error(
            path,
            f"expected {expected}, got {got} (the host's limit, set by {SETTINGS[cap]})",
            at_key=at_key,
        )

    def count(self, path: str, value: object, cap: str, what: str) -> None:
        """A list at `path` with more than the cap's number of items."""
        limit = getattr(self.limits, cap)
        if limit is not None and isinstance(value, list) and len(value) > limit:
            self.over(path, cap, f"at most {limit} {what}", str(len(value)), at_key=True)

    def check(self, data: Raw) -> None:
        self.count("vms", data.get("vms"), "vms", "VMs per manifest")
        self.count("files", data.get("files"), "files", "files per manifest")
        network = mapping(data.get("network"))
        self.count("network.vpcs", network.get("vpcs"), "networks", "VPCs per manifest")
        self.count("network.subnets", network.get("subnets"), "networks", "subnets per manifest")
        self.build_timeout(data)
        self.duration("isoCacheTTL", data.get("isoCacheTTL"), "iso_cache_ttl_s", "an isoCacheTTL")
        for vm_path, vm in vms(data):
            self.vm(vm_path, vm)
        overrides = mapping(data.get("buildOverrides")).get("vms")
        for path, override in entries("buildOverrides.vms", overrides):
            self.resources(f"{path}.resources", mapping(override.get("resources")))

    def build_timeout(self, data: Raw) -> None:
        """The whole build, retries included, must end within the cap."""
        limit = self.limits.build_timeout_s
        timeout = _seconds(data.get("timeout")) if "timeout" in data else defaults.TIMEOUT_SECONDS
        if limit is None or timeout is None:
            return
        retries = data.get("retries")
        attempts = 1 + (retries if isinstance(retries, int) and 0 <= retries <= 10 else 0)
        cap = "build_timeout_s"
        if timeout > limit:
            self.over(
                "timeout",
                cap,
                f"a timeout of at most {duration_text(limit)}",
                repr(data.get("timeout")),
            )
        elif timeout * attempts > limit:
            where = "retries" if "retries" in data else "timeout"
            self.over(
                where,
                cap,
                f"at most {duration_text(limit)} of building in all, retries included",
                f"{attempts} attempts of up to {duration_text(timeout)} each",
            )

    def duration(self, path: str, value: object, cap: str, what: str) -> None:
        limit = getattr(self.limits, cap)
        seconds = _seconds(value)
        if limit is not None and seconds is not None and seconds > limit:
            self.over(path, cap, f"{what} of at most {duration_text(limit)}", repr(value))

    def vm(self, path: str, vm: Raw) -> None:
        resources = vm.get("resources")
        self.resources(f"{path}.resources", mapping(resources), default_memory=True)
        self.disks(path, vm)
        self.count(f"{path}.isos", vm.get("isos"), "isos_per_vm", "ISOs per VM")
        steps = vm.get("provisioners")
        self.count(f"{path}.provisioners", steps, "provisioners_per_vm", "provisioners per VM")
        for step_path, step in entries(f"{path}.provisioners", steps):
            self.duration(
                f"{step_path}.stepTimeout", step.get("stepTimeout"), "build_timeout_s",
                "a stepTimeout",
            )  # fmt: skip
        communicator = mapping(vm.get("communicator"))
        self.duration(
            f"{path}.communicator.sshTimeout", communicator.get("sshTimeout"), "build_timeout_s",
            "an sshTimeout",
        )  # fmt: skip
        self.boot_command(f"{path}.bootCommand", vm.get("bootCommand"))

    def resources(self, path: str, resources: Raw, *, default_memory: bool = False) -> None:
        cpu_limit, memory_limit = self.limits.vm_cpus, self.limits.vm_memory
        cpu = _bytes(resources.get("cpu"))  # the quantity rounded up: vCPUs, as units.vcpus
        if cpu_limit is not None and cpu is not None and max(1, cpu) > cpu_limit:
            got = repr(resources.get("cpu"))
            self.over(f"{path}.cpu", "vm_cpus", f"at most {cpu_limit} vCPUs per VM", got)
        if "memory" in resources:
            memory, got = _bytes(resources.get("memory")), repr(resources.get("memory"))
        elif default_memory:
            memory, got = defaults.MEMORY_BYTES, f"the default {size_text(defaults.MEMORY_BYTES)}"
        else:
            return
        if memory_limit is not None and memory is not None and memory > memory_limit:
            expected = f"at most {size_text(memory_limit)} of memory per VM"
            self.over(paths.child(path, "memory"), "vm_memory", expected, got)

    def disks(self, vm_path: str, vm: Raw) -> None:
        path = f"{vm_path}.disks"
        self.count(path, vm.get("disks"), "disks_per_vm", "disks per VM")
        limit = self.limits.disk_size
        if limit is None:
            return
        expected = f"disks of at most {size_text(limit)}"
        if "disks" not in vm:
            if limit < defaults.DISK_SIZE_BYTES:
                got = f"the default {size_text(defaults.DISK_SIZE_BYTES)} disk (declare `disks`)"
                self.over(vm_path, "disk_size", expected, got)
            return
        for disk_path, disk in entries(path, vm.get("disks")):
            if "size" in disk:
                size, got = _bytes(disk.get("size")), repr(disk.get("size"))
            else:
                size = defaults.DISK_SIZE_BYTES
                got = f"the default size {size_text(size)}"
            if size is not None and size > limit:
                self.over(paths.child(disk_path, "size"), "disk_size", expected, got)

    def boot_command(self, path: str, commands: object) -> None:
        limit = self.limits.boot_command_chars
        if limit is None or not isinstance(commands, list):
            return
        total = sum(len(c) for c in commands if string(c) is not None)
        if total > limit:
            expected = f"at most {limit} characters of boot command per VM"
            self.over(path, "boot_command_chars", expected, str(total), at_key=True)
