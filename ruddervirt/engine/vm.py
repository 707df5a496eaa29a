"""One VM of a build: source import -> boot -> SSH -> provisioners -> shutdown.

Runs in its own thread; the build orchestrator (engine.build) runs one per manifest VM
and captures their disks once every VM is shut down.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ruddervirt.engine import bootcmd, efi, netconfig
from ruddervirt.engine.capture import build_vm_spec
from ruddervirt.engine.errors import BuildCancelled, BuildError, StepFailed
from ruddervirt.engine.files import FileStore
from ruddervirt.engine.httpserver import BuildHTTPServer
from ruddervirt.engine.installer_media import InstallerMedia
from ruddervirt.engine.reporter import Reporter, Stopper
from ruddervirt.engine.sources import fetch
from ruddervirt.engine.topology import NicPlan
from ruddervirt.guest import ssh
from ruddervirt.guest.shellscript import build_shell_command, reboot_and_wait, run_shell_script
from ruddervirt.hypervisor import disks as qimg
from ruddervirt.hypervisor.domain_xml import mgmt_mac_for
from ruddervirt.hypervisor.driver import DomainState, WaitCancelled, WaitTimedOut
from ruddervirt.hypervisor.seed import cloud_config_with_keys, make_nocloud_seed, nocloud_meta_data
from ruddervirt.hypervisor.specs import DiskSpec, DomainSpec, EfiSpec
from ruddervirt.spec import Placement, Role, machine_spec

POWEROFF_POSIX = (
    "sudo -n poweroff 2>/dev/null || poweroff || sudo -n shutdown -h now || shutdown -h now"
)
POWEROFF_POWERSHELL = "shutdown /s /t 0 /f"
OFF_STATES = (DomainState.SHUTOFF, DomainState.ABSENT)
# How long a quick command may take to tell whether an SSH session still works.
PROBE_TIMEOUT_S = 5.0


@dataclass
class PreparedDisk:
    name: str
    path: Path
    bus: str
    size: int


@dataclass
class VMOutcome:
    name: str
    disks: list[PreparedDisk] = field(default_factory=list)
    domain: str = ""
    efi: EfiSpec | None = None  # the build VM's firmware; capture keeps its NVRAM


def free_loopback_port() -> int:
    """A port nobody listens on right now (QEMU binds it a moment later; a clash is
    retried with another port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VMRunner(InstallerMedia):
    def __init__(
        self,
        *,
        vm,
        build_key: str,
        workdir: Path,
        parent_disks: list[Path] | None,
        nics: tuple[NicPlan, ...],
        manifest,
        config,
        hv,
        reporter: Reporter,
        stopper: Stopper,
        files: FileStore,
        public_keys: list[str],
        private_key: str,
        deadline: float,
        metadata: dict[str, str],
        http: BuildHTTPServer | None = None,
        on_provisioned: Callable[[], None] | None = None,
    ) -> None:
        self.vm = vm
        # Called once this VM's provisioners are done, before it shuts down.
        self.on_provisioned = on_provisioned
        self.key = build_key
        self.dir = workdir / vm.name
        self.parent_disks = parent_disks
        self.nics = nics
        self.manifest = manifest
        self.config = config
        self.hv = hv
        self.reporter = reporter
        self.stopper = stopper
        self.files = files
        self.public_keys = public_keys
        self.private_key = private_key
        self.deadline = deadline
        self.metadata = metadata
        self.http = http
        self.domain = f"{config.name_prefix}{build_key}-{vm.name}"
        self.port = 0
        self.outcome = VMOutcome(name=vm.name, domain=self.domain)
        self.isos: list[Path] = []  # installer CD-ROMs, in manifest order
        self.floppy: Path | None = None
        self.efi: EfiSpec | None = None
        self.boot_plan: list[bootcmd.Segment] = []

    # --- helpers --------------------------------------------------------------------
    def log(self, text: str, stream: str = "info") -> None:
        self.reporter.log(text, vm=self.vm.name, stream=stream)

    def phase(self, phase: str, message: str = "") -> None:
        self.check_stop()
        self.reporter.vm_phase(self.vm.name, phase, message)

    def check_stop(self) -> None:
        if self.stopper.stopped:
            raise BuildCancelled(self.stopper.reason)

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def bounded(self, timeout: float | None) -> float:
        """A step's own timeout, never past the build's deadline."""
        left = self.remaining()
        return left if timeout is None else min(timeout, left)

    # --- lifecycle ------------------------------------------------------------------
    def run(self) -> VMOutcome:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            return self._run()
        finally:
            self.release_isos()

    def _run(self) -> VMOutcome:
        self.phase("SourceImporting")
        self.outcome.disks = self.prepare_disks()
        self.isos = self.prepare_isos()
        self.floppy = self.make_floppy() if self.vm.floppy_files else None
        seed = self.make_seed() if self.vm.cloud_init is not None else None
        self.boot_plan = self.plan_boot_command()  # a bad bootCommand fails before booting
        if self.vm.efi_firmware is not None:
            self.efi = efi.build_efi(self.dir, self.vm.efi_firmware.secure_boot)
            self.outcome.efi = self.efi
        self.phase("Booting")
        self.boot(self.outcome.disks, seed)
        if self.vm.boot_command:
            self.phase("BootCommand")
            self.type_boot_command()
        self.phase("WaitingForSSH")
        session = self.wait_for_ssh()
        try:
            self.phase("Provisioning", f"{len(self.vm.provisioners)} step(s)")
            session = self.provision(session)
            if self.on_provisioned is not None:
                self.on_provisioned()
            self.phase("ShuttingDown")
            self.shutdown(session)
        finally:
            session.close()
        return self.outcome

    # --- disks ----------------------------------------------------------------------
    def prepare_disks(self) -> list[PreparedDisk]:
        prepared = []
        for index, disk in enumerate(self.vm.disks):
            path = self.dir / f"disk{index}-{disk.name}.qcow2"
            path.unlink(missing_ok=True)  # left by an earlier attempt of this build
            base = self.base_for(index)
            if base is not None:
                info = qimg.info(base)
                virtual = int(info["virtual-size"])
                grow = disk.size if disk.size > virtual else None
                qimg.create_overlay(base, path, backing_format=info["format"], size=grow)
                if grow:
                    self.log(f"disk {disk.name}: grown from {virtual} to {disk.size} bytes")
                elif disk.size < virtual:
                    self.log(
                        f"disk {disk.name}: the source is {virtual} bytes, larger than the "
                        f"declared {disk.size}; keeping the source's size (disks are never shrunk)"
                    )
            else:
                qimg.create_blank(path, disk.size)
                if index == 0 and self.vm.source.kind == "blank":
                    self.log(f"disk {disk.name}: blank, {disk.size} bytes, for the installer")
            prepared.append(PreparedDisk(disk.name, path, disk.bus, max(disk.size, 0)))
        return prepared

    def base_for(self, index: int) -> Path | None:
        """The image disk `index` starts from, or None for a blank disk."""
        source = self.vm.source
        if index == 0 and source.url:
            return fetch(
                source.url,
                source.checksum,
                self.config.cache_dir,
                should_stop=lambda: self.stopper.stopped,
                log=self.log,
            )
        if source.build_ref is not None and self.parent_disks and index < len(self.parent_disks):
            return self.parent_disks[index]
        return None

    def make_seed(self) -> Path:
        """The NoCloud seed: our key(s) merged into the instructor's cloud-config, the
        hostname, and network config for every NIC (static addresses, and the management
        NIC limited to reaching the host's SSH forward)."""
        ci = self.vm.cloud_init
        user_data = cloud_config_with_keys(ci.user_data, self.public_keys, self.vm.name)
        meta = nocloud_meta_data(instance_id=self.domain, hostname=self.vm.name)
        network = netconfig.render(
            self.nics,
            self.manifest,
            mgmt_mac=mgmt_mac_for(self.domain),
            user_network=ci.network_data,
        )
        seed = self.dir / "seed.iso"
        make_nocloud_seed(seed, user_data=user_data, meta_data=meta, network_config=network)
        return seed

    # --- boot -----------------------------------------------------------------------
    def domain_spec(self, disks: list[PreparedDisk], seed: Path | None) -> DomainSpec:
        """The build VM's domain: its record (the one capture keeps) in the build role."""
        # The boot disk comes first: blank, it fails over to the installer CD-ROM; once
        # installed, the installer's reboot starts the new system from it.
        media = [
            DiskSpec(
                path=iso, target_bus="sata", format="raw", device="cdrom", readonly=True,
                boot_order=2 + i,
            )
            for i, iso in enumerate(self.isos)
        ]  # fmt: skip
        if self.floppy is not None:
            media.append(
                DiskSpec(path=self.floppy, target_bus="fdc", format="raw", device="floppy")
            )
        if seed is not None:
            media.append(
                DiskSpec(path=seed, target_bus="sata", format="raw", device="cdrom", readonly=True)
            )
        record = build_vm_spec(self.vm, self.nics, domain=self.domain, efi_spec=self.efi)
        where = Placement(
            name=self.domain,
            domain_type=self.config.domain_type,
            storage_root=self.config.storage_root,
            disks=tuple(d.path for d in disks),
            networks={n.name: n.network for n in self.nics},
            nvram=self.efi.nvram if self.efi else None,
            mgmt_port=self.port,
            media=tuple(media),
            serial_log=self.dir / "serial.log",
            metadata={**self.metadata, "vm": self.vm.name},
            title=f"build {self.key} VM {self.vm.name}",
        )
        return machine_spec(record, Role.BUILD, where)

    def boot(self, disks: list[PreparedDisk], seed: Path | None) -> None:
        last_error: Exception | None = None
        for _attempt in range(3):
            self.port = free_loopback_port()
            self.hv.define(self.domain_spec(disks, seed))
            self.reporter.vm_domain(self.vm.name, self.domain)
            try:
                self.hv.start(self.domain)
            except Exception as exc:
                last_error = exc
                if "hostfwd" in str(exc) or "Could not set up host forwarding" in str(exc):
                    self.hv.undefine(self.domain)
                    continue
                raise BuildError(f"VM {self.vm.name} did not start: {exc}") from exc
            self.log(f"domain {self.domain} started; SSH forwarded from 127.0.0.1:{self.port}")
            return
        raise BuildError(f"VM {self.vm.name} did not start: {last_error}")

    def type_boot_command(self) -> None:
        bootcmd.type_boot_command(self, self.boot_plan)

    # --- SSH ------------------------------------------------------------------------
    def target(self) -> ssh.SSHTarget:
        comm = self.vm.communicator
        return ssh.SSHTarget(
            port=self.port,
            username=comm.ssh_username,
            private_key=self.private_key,
            password=comm.ssh_password,
        )

    def wait_for_ssh(self) -> ssh.SSHSession:
        timeout = self.bounded(self.vm.communicator.ssh_timeout)
        started = time.monotonic()
        last_note = [started]

        def note(attempt: int, failure) -> None:
            if time.monotonic() - last_note[0] >= 15:
                last_note[0] = time.monotonic()
                self.log(f"still waiting for SSH ({failure.message})")

        try:
            session = ssh.wait_for_ssh(
                self.target(), timeout=timeout, cancel=self.stopper.event, on_attempt=note
            )
        except ssh.Cancelled as exc:
            raise BuildCancelled(self.stopper.reason) from exc
        except ssh.SSHWaitTimeout as exc:
            self.log_serial_tail()
            self.log_ssh_hints()
            state = self.hv.state(self.domain)
            raise BuildError(
                f"VM {self.vm.name}: {exc} (domain state: {state.name.lower()})"
            ) from exc
        took = time.monotonic() - started
        self.log(f"SSH is up after {took:.1f}s (host key {session.host_key_fingerprint})")
        return session

    def log_serial_tail(self, lines: int = 20) -> None:
        path = self.dir / "serial.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return
        if tail:
            self.log("last lines of the serial console:")
            for line in tail:
                self.log("  " + line, stream="stderr")

    # --- provisioners ------------------------------------------------------------------
    def provision(self, session: ssh.SSHSession) -> ssh.SSHSession:
        for index, step in enumerate(self.vm.provisioners):
            self.check_stop()
            label = step.name or f"{step.type} {index + 1}"
            self.reporter.step_started(self.vm.name, index)
            self.log(
                f"step {index + 1}/{len(self.vm.provisioners)}: {label} ({step.type})", "phase"
            )
            started = time.monotonic()
            try:
                session, exit_code = self.run_step(session, index, step)
            except StepFailed as exc:
                self.reporter.step_finished(
                    self.vm.name, index, ok=False, exit_code=exc.exit_code, message=exc.detail
                )
                raise
            except BuildCancelled as exc:
                self.reporter.step_finished(self.vm.name, index, ok=False, message=str(exc))
                raise
            except (ssh.GuestError, BuildError, OSError, ValueError) as exc:
                self.reporter.step_finished(self.vm.name, index, ok=False, message=str(exc))
                raise StepFailed(
                    vm=self.vm.name, index=index, name=label, message=str(exc)
                ) from exc
            took = time.monotonic() - started
            self.reporter.step_finished(
                self.vm.name, index, ok=True, exit_code=exit_code, message=f"{took:.1f}s"
            )
        return session

    def run_step(
        self, session: ssh.SSHSession, index: int, step
    ) -> tuple[ssh.SSHSession, int | None]:
        label = step.name or f"{step.type} {index + 1}"
        timeout = self.bounded(step.step_timeout)
        why = (
            "stepTimeout"
            if step.step_timeout and step.step_timeout <= self.remaining()
            else "build timeout"
        )

        def fail(message: str, exit_code: int | None = None) -> StepFailed:
            return StepFailed(
                vm=self.vm.name, index=index, name=label, message=message, exit_code=exit_code
            )

        def output(stream: str, line: str) -> None:
            self.log(line, stream)

        try:
            if step.type == "shell":
                return session, self.run_shell(session, step, timeout, output, fail)
            if step.type == "file":
                data = self.files.content(step.file_ref, should_stop=lambda: self.stopper.stopped)
                session.upload(data, step.destination, timeout=timeout, cancel=self.stopper.event)
                self.log(f"uploaded {step.file_ref} to {step.destination}")
                return session, None
            if step.type == "reboot":
                return self.reboot(session, step, timeout, output), None
            if step.type == "handbuild":
                self.wait_for_person(index, step, timeout, fail)
                return self.session_after_person(session), None
            raise fail(f"provisioner type {step.type!r} is not supported by this engine")
        except ssh.CommandTimeout as exc:
            raise fail(f"timed out after {timeout:.0f}s ({why})") from exc
        except ssh.Cancelled as exc:
            raise BuildCancelled(self.stopper.reason or "cancelled") from exc

    def run_shell(self, session, step, timeout, output, fail) -> int:
        if step.script_file is not None:
            script = self.files.text(step.script_file, should_stop=lambda: self.stopper.stopped)
        else:
            script = step.inline
        prepared = build_shell_command(
            script,
            env={var.name: var.value for var in step.env},
            execute_command=step.execute_command,
            shell=self.vm.communicator.shell,
        )
        code = run_shell_script(
            session, prepared, on_output=output, timeout=timeout, cancel=self.stopper.event
        )
        if code != 0:
            raise fail(f"the script exited with code {code}", exit_code=code)
        return code

    def reboot(self, session, step, timeout, output) -> ssh.SSHSession:
        new_session = reboot_and_wait(
            functools.partial(ssh.wait_for_ssh, self.target()),
            step.command,
            timeout=timeout,
            cancel=self.stopper.event,
            session=session,
            on_output=output,
        )
        self.log("the guest rebooted and SSH is back")
        return new_session

    def wait_for_person(self, index: int, step, timeout: float, fail) -> None:
        self.reporter.step_waiting(self.vm.name, index)
        self.log("waiting for a person: " + step.instructions.strip().splitlines()[0], "phase")
        until = time.monotonic() + timeout
        while True:
            decision = self.reporter.user_decision(self.vm.name, index)
            if decision is not None:
                what, reason = decision
                if what == "continue":
                    self.log("continued by a person")
                    return
                raise fail(f"failed by a person: {reason}")
            if time.monotonic() >= until:
                raise fail(f"nobody pressed Continue within {timeout:.0f}s")
            if self.stopper.wait(0.25):
                raise BuildCancelled(self.stopper.reason)

    def session_after_person(self, session: ssh.SSHSession) -> ssh.SSHSession:
        """The SSH session to go on with after a handbuild step: the same one when it still
        works, else a new one (the person may have rebooted the guest from its console)."""
        try:
            session.run_capture("true", timeout=PROBE_TIMEOUT_S, cancel=self.stopper.event)
            return session
        except ssh.Cancelled as exc:
            raise BuildCancelled(self.stopper.reason) from exc
        except ssh.GuestError as exc:
            self.log(f"the SSH connection did not survive the step ({exc}); reconnecting")
        session.close()
        return self.wait_for_ssh()

    # --- shutdown ---------------------------------------------------------------------
    def shutdown(self, session: ssh.SSHSession) -> None:
        """Guest poweroff over SSH, then ACPI, then a forced stop."""
        powershell = self.vm.communicator.shell == "powershell"
        command = POWEROFF_POWERSHELL if powershell else POWEROFF_POSIX
        if not powershell:
            # The build's throwaway key must not stay in the template.
            marker = f" ruddervirt-build-{self.key}"
            forget = f"sed -i '/{marker}$/d' \"$HOME/.ssh/authorized_keys\" 2>/dev/null; true"
            command = f"{forget}; sync; {command}"
        try:
            session.run(command, timeout=10, cancel=self.stopper.event)
        except (ssh.ConnectionLost, ssh.CommandTimeout):
            pass  # the guest went down under us: that is the point
        except ssh.Cancelled as exc:
            raise BuildCancelled(self.stopper.reason) from exc
        if self.wait_off(self.config.guest_poweroff_timeout_s):
            self.log("the guest powered off")
            return
        self.log("the guest did not power off by itself; sending the ACPI power button")
        self.hv.shutdown(self.domain)
        if self.wait_off(self.config.acpi_timeout_s):
            self.log("the guest powered off on ACPI")
            return
        self.log("the guest ignored ACPI; forcing it off", "stderr")
        self.hv.destroy(self.domain)

    def wait_off(self, timeout: float) -> bool:
        try:
            self.hv.wait_for_state(
                self.domain, OFF_STATES, timeout, cancel=lambda: self.stopper.stopped
            )
        except WaitTimedOut:
            return False
        except WaitCancelled as exc:
            raise BuildCancelled(self.stopper.reason) from exc
        return True
