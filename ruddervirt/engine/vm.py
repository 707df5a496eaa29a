"""One VM of a build: source import -> boot -> SSH -> provisioners -> shutdown.

Runs in its own thread; the build orchestrator (engine.build) runs one per manifest VM
and captures their disks once every VM is shut down. Everything outside the process goes
through the BuildContext: the hypervisor, the guest's communicator, image files.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ruddervirt.engine import bootcmd, efi, generalize, netconfig
from ruddervirt.engine.capture import build_vm_spec
from ruddervirt.engine.context import BuildContext, BuildScope, VMPlan, vm_domain_name
from ruddervirt.engine.domainwatch import DomainWatch
from ruddervirt.engine.errors import BuildCancelled, BuildError, StepFailed
from ruddervirt.engine.installer_media import InstallerMedia
from ruddervirt.engine.phases import VMPhase
from ruddervirt.engine.vm_cache import VMCache, VMCacheState
from ruddervirt.engine.vm_disks import PreparedDisk, VMDisks
from ruddervirt.guest.communicator import Communicator, Endpoint, OutputCallback
from ruddervirt.guest.errors import Cancelled, CommandTimeout, GuestError, WaitTimeout
from ruddervirt.guest.shellscript import build_shell_command, run_shell_script
from ruddervirt.hypervisor.domain_xml import mgmt_mac_for
from ruddervirt.hypervisor.driver import (
    AGENT_PING_TIMEOUT_S,
    DomainState,
    HypervisorError,
    ShutdownVia,
    WaitCancelled,
    WaitTimedOut,
)
from ruddervirt.hypervisor.seed import cloud_config_with_keys, nocloud_meta_data, seed_drive
from ruddervirt.hypervisor.specs import DiskSpec, DomainSpec, EfiSpec
from ruddervirt.manifest.model import (
    AnyStep,
    FileStep,
    HandbuildStep,
    RebootStep,
    ShellStep,
)
from ruddervirt.spec import GeneralizationRecord, Placement, Role, machine_spec

Fail = Callable[..., StepFailed]  # fail(message, exit_code=None): the StepFailed to raise

POWEROFF_POSIX = (
    "sudo -n poweroff 2>/dev/null || poweroff || sudo -n shutdown -h now || shutdown -h now"
)
POWEROFF_POWERSHELL = "shutdown /s /t 0 /f"
FAST_SYNC_TIMEOUT_S = 60.0
OFF_STATES = (DomainState.SHUTOFF, DomainState.ABSENT)
ACPI_ASKED = "sending the ACPI power button"
# How long the guest agent may take to flush and freeze the filesystems before a forced stop.
FSFREEZE_TIMEOUT_S = 30.0
# How long a quick command may take to tell whether an SSH session still works.
PROBE_TIMEOUT_S = 5.0


@dataclass
class VMOutcome:
    name: str
    disks: list[PreparedDisk] = field(default_factory=list)
    domain: str = ""
    efi: EfiSpec | None = None  # the build VM's firmware; capture keeps its NVRAM
    generalization: GeneralizationRecord | None = None  # None: not generalized


def free_loopback_port() -> int:
    """A port nobody listens on right now (QEMU binds it a moment later; a clash is
    retried with another port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VMRunner(VMCache, VMDisks, InstallerMedia):
    """Runs one VM of a build (``run``); every attribute VMDisks and InstallerMedia rely on
    is set here from the context, the build's scope and the VM's plan."""

    def __init__(self, ctx: BuildContext, scope: BuildScope, plan: VMPlan) -> None:
        self.ctx, self.scope, self.plan = ctx, scope, plan
        self.vm = plan.vm
        self.nics = plan.nics
        self.key = scope.key
        self.dir = scope.workdir / plan.vm.name
        self.manifest = scope.manifest
        self.files = scope.files
        self.http = scope.http
        self.config = ctx.config
        self.hv = ctx.hv
        self.reporter = ctx.reporter
        self.stopper = ctx.stopper
        self.domain = vm_domain_name(ctx.config.name_prefix, scope.key, plan.vm.name)
        self.port = 0
        self.comm: Communicator | None = None  # made once the VM is booted
        self.outcome = VMOutcome(name=self.vm.name, domain=self.domain)
        self.isos: list[Path] = []  # installer CD-ROMs, in manifest order
        self.iso_entries: list[Path] = []  # their cache entries
        self.floppy: Path | None = None
        self.efi: EfiSpec | None = None
        self.boot_plan: list[bootcmd.Segment] = []
        self.cache: VMCacheState | None = None  # the step cache, once planned

    # --- helpers --------------------------------------------------------------------
    def log(self, text: str, stream: str = "info") -> None:
        self.reporter.log(text, vm=self.vm.name, stream=stream)

    def phase(self, phase: VMPhase, message: str = "") -> None:
        self.check_stop()
        self.reporter.vm_phase(self.vm.name, phase, message)

    def check_stop(self) -> None:
        if self.stopper.stopped:
            raise BuildCancelled(self.stopper.reason)

    def remaining(self) -> float:
        return max(self.scope.deadline - self.ctx.clock(), 0.0)

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
        self.phase(VMPhase.SOURCE_IMPORTING)
        self.cache = self.plan_cache()
        self.outcome.disks = self.prepare_disks()
        self.isos = self.prepare_isos()
        self.floppy = self.make_floppy() if self.vm.floppy_files else None
        seed = self.make_seed() if self.vm.cloud_init is not None else None
        self.boot_plan = self.plan_boot_command()  # a bad bootCommand fails before booting
        if self.vm.efi_firmware is not None:
            self.efi = efi.build_efi(self.dir, self.vm.efi_firmware.secure_boot)
            self.outcome.efi = self.efi
        self.phase(VMPhase.BOOTING)
        self.boot(self.outcome.disks, seed)
        if self.vm.boot_command and not self.reusing():
            self.phase(VMPhase.BOOT_COMMAND)
            self.type_boot_command()
        self.comm = self.ctx.communicator(self.endpoint())
        try:
            self.phase(VMPhase.WAITING_FOR_SSH)
            self.wait_for_guest()
            self.phase(VMPhase.PROVISIONING, f"{len(self.vm.provisioners)} step(s)")
            self.provision()
            self.outcome.generalization = self.generalize()
            if self.scope.on_provisioned is not None:
                self.scope.on_provisioned()
            self.phase(VMPhase.SHUTTING_DOWN)
            self.shutdown()
        finally:
            self.comm.close()
        return self.outcome

    def make_seed(self) -> Path:
        """The NoCloud seed: our key(s) merged into the instructor's cloud-config, the
        hostname, and network config for every NIC (static addresses, and the management
        NIC limited to reaching the host's SSH forward)."""
        ci = self.vm.cloud_init
        assert ci is not None  # only called for VMs with cloudInit
        network = netconfig.render(
            self.nics,
            self.manifest,
            mgmt_mac=mgmt_mac_for(self.domain),
            user_network=ci.network_data,
        )
        user_data = cloud_config_with_keys(
            ci.user_data,
            list(self.plan.public_keys),
            self.vm.name,
            name_servers=netconfig.name_servers(network),
        )
        meta = nocloud_meta_data(instance_id=self.domain, hostname=self.vm.name)
        seed = self.dir / "seed.iso"
        self.ctx.images.make_seed(seed, user_data=user_data, meta_data=meta, network_config=network)
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
            seed=seed_drive(seed) if seed is not None else None,  # virtio-scsi: no AHCI needed
            serial_log=self.dir / "serial.log",
            metadata={**self.scope.metadata, "vm": self.vm.name},
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

    # --- the guest's communicator ----------------------------------------------------
    def endpoint(self) -> Endpoint:
        comm = self.vm.communicator
        return Endpoint(
            port=self.port,
            username=comm.ssh_username,
            private_key=self.plan.private_key or None,
            password=comm.ssh_password,
            vm=self.vm.name,
        )

    def guest(self) -> Communicator:
        if self.comm is None:
            raise BuildError(f"VM {self.vm.name}: the guest is not booted yet")
        return self.comm

    def wait_for_guest(self) -> None:
        """Wait until the guest accepts a session, noting progress every 15 s."""
        timeout = self.bounded(self.vm.communicator.ssh_timeout)
        started = self.ctx.clock()
        last_note = [started]

        def note(message: str) -> None:
            if self.ctx.clock() - last_note[0] >= 15:
                last_note[0] = self.ctx.clock()
                self.log(f"still waiting for SSH ({message})")

        # A domain that QEMU paused on an error, or that crashed or shut off, fails the wait
        # at once with QEMU's reason (engine/domainwatch.py).
        watch = DomainWatch(self.hv, self.domain, self.stopper.event)
        try:
            with watch:
                self.guest().wait(timeout=timeout, cancel=watch.event, on_attempt=note)
        except Cancelled as exc:
            if watch.fault is None:
                raise BuildCancelled(self.stopper.reason) from exc
            self.log_serial_tail()
            raise BuildError(
                f"VM {self.vm.name}: the domain stopped while waiting for SSH: "
                f"{watch.fault.describe()}"
            ) from exc
        except WaitTimeout as exc:
            self.log_serial_tail()
            self.log_ssh_hints()
            state = self.hv.state(self.domain)
            raise BuildError(
                f"VM {self.vm.name}: {exc} (domain state: {state.name.lower()})"
            ) from exc
        took = self.ctx.clock() - started
        self.log(f"SSH is up after {took:.1f}s (host key {self.guest().host_key})")

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
    def provision(self) -> None:
        """Run every step in order (after those the step cache reused, checkpointing each);
        StepFailed names the first that failed and why."""
        first = self.report_reused()
        for index, step in enumerate(self.vm.provisioners):
            if index < first:
                continue
            self.check_stop()
            label = step.name or f"{step.type} {index + 1}"
            self.reporter.step_started(self.vm.name, index)
            self.log(
                f"step {index + 1}/{len(self.vm.provisioners)}: {label} ({step.type})", "phase"
            )
            started = self.ctx.clock()
            try:
                exit_code = self.run_step(index, step)
            except StepFailed as exc:
                self.reporter.step_finished(
                    self.vm.name, index, ok=False, exit_code=exc.exit_code, message=exc.detail
                )
                raise
            except BuildCancelled as exc:
                self.reporter.step_finished(self.vm.name, index, ok=False, message=str(exc))
                raise
            except (GuestError, BuildError, OSError, ValueError) as exc:
                self.reporter.step_finished(self.vm.name, index, ok=False, message=str(exc))
                raise StepFailed(
                    vm=self.vm.name, index=index, name=label, message=str(exc)
                ) from exc
            took = self.ctx.clock() - started
            self.reporter.step_finished(
                self.vm.name, index, ok=True, exit_code=exit_code, message=f"{took:.1f}s"
            )
            self.checkpoint(index, took)

    def switched_disks(self, paths: list[Path]) -> None:
        for prepared, path in zip(self.outcome.disks, paths, strict=True):
            prepared.path = path

    def run_step(self, index: int, step: AnyStep) -> int | None:
        """One step; its exit code (shell steps) or None."""
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
            if isinstance(step, ShellStep):
                return self.run_shell(step, timeout, output, fail)
            if isinstance(step, FileStep):
                data = self.files.content(step.file_ref, should_stop=lambda: self.stopper.stopped)
                self.guest().upload(
                    data, step.destination, timeout=timeout, cancel=self.stopper.event
                )
                self.log(f"uploaded {step.file_ref} to {step.destination}")
                return None
            if isinstance(step, RebootStep):
                self.reboot(step, timeout, output)
                return None
            if isinstance(step, HandbuildStep):
                self.wait_for_person(index, step, timeout, fail)
                self.reconnect_after_person()
                return None
            raise fail(f"provisioner type {step.type!r} is not supported by this engine")
        except CommandTimeout as exc:
            raise fail(f"timed out after {timeout:.0f}s ({why})") from exc
        except Cancelled as exc:
            raise BuildCancelled(self.stopper.reason or "cancelled") from exc

    def run_shell(self, step: ShellStep, timeout: float, output: OutputCallback, fail: Fail) -> int:
        if step.script_file is not None:
            script = self.files.text(step.script_file, should_stop=lambda: self.stopper.stopped)
        else:
            script = step.inline or ""
        prepared = build_shell_command(
            script,
            env={var.name: var.value for var in step.env},
            execute_command=step.execute_command,
            shell=self.vm.communicator.shell,
        )
        code = run_shell_script(
            self.guest(), prepared, on_output=output, timeout=timeout, cancel=self.stopper.event
        )
        if code != 0:
            raise fail(f"the script exited with code {code}", exit_code=code)
        return code

    def reboot(self, step: RebootStep, timeout: float, output: OutputCallback) -> None:
        self.guest().reboot(
            step.command, timeout=timeout, cancel=self.stopper.event, on_output=output
        )
        self.log("the guest rebooted and SSH is back")

    def wait_for_person(self, index: int, step: HandbuildStep, timeout: float, fail: Fail) -> None:
        self.reporter.step_waiting(self.vm.name, index)
        self.log("waiting for a person: " + step.instructions.strip().splitlines()[0], "phase")
        until = self.ctx.clock() + timeout
        while True:
            decision = self.reporter.user_decision(self.vm.name, index)
            if decision is not None:
                what, reason = decision
                if what == "continue":
                    self.log("continued by a person")
                    return
                raise fail(f"failed by a person: {reason}")
            if self.ctx.clock() >= until:
                raise fail(f"nobody pressed Continue within {timeout:.0f}s")
            if self.stopper.wait(0.25):
                raise BuildCancelled(self.stopper.reason)

    def reconnect_after_person(self) -> None:
        """Go on after a handbuild step with the same session when it still works, else with
        a new one (the person may have rebooted the guest from its console)."""
        try:
            self.guest().run("true", timeout=PROBE_TIMEOUT_S, cancel=self.stopper.event)
            return
        except Cancelled as exc:
            raise BuildCancelled(self.stopper.reason) from exc
        except GuestError as exc:
            self.log(f"the SSH connection did not survive the step ({exc}); reconnecting")
        self.wait_for_guest()

    # --- generalization ---------------------------------------------------------------
    def generalize(self) -> GeneralizationRecord | None:
        """Generalize the guest for cloning (engine.generalize), unless the VM opts out."""
        if not self.vm.generalize:
            self.log("not generalizing the guest (generalize: false): clones keep its identity")
            return None
        if self.vm.communicator.shell == "powershell":
            self.log("not generalizing a PowerShell guest: run sysprep in a step of its own")
            return None
        timeout = self.bounded(generalize.TIMEOUT_S)
        try:
            return generalize.generalize(
                self.guest(),
                vm=self.vm.name,
                username=self.vm.communicator.ssh_username,
                key_comment=generalize.build_key_comment(self.key),
                cloud_init=self.vm.cloud_init is not None,
                log=self.log,
                timeout=timeout,
                cancel=self.stopper.event,
            )
        except Cancelled as exc:
            raise BuildCancelled(self.stopper.reason or "cancelled") from exc
        except CommandTimeout as exc:
            message = f"VM {self.vm.name}: generalizing the guest timed out after {timeout:.0f}s"
            raise generalize.GeneralizationFailed(message) from exc
        except GuestError as exc:
            message = f"VM {self.vm.name}: generalizing the guest failed: {exc}"
            raise generalize.GeneralizationFailed(message) from exc

    # --- shutdown ---------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop the VM for its capture: ``fast`` (the default for bash guests) syncs and
        freezes its file systems, then stops it; ``graceful`` (PowerShell guests, or
        ``shutdown: graceful``) lets the guest shut itself down. Both remove the build's
        key from the guest first."""
        if self.vm.shutdown_mode == "fast":
            self.fast_stop()
        else:
            self.graceful_shutdown()

    def forget_build_key(self) -> str:
        """The shell command that removes the build's throwaway key from the guest (it must
        not stay in the template)."""
        marker = f" ruddervirt-build-{self.key}"
        return f"sed -i '/{marker}$/d' \"$HOME/.ssh/authorized_keys\" 2>/dev/null; true"

    def fast_stop(self) -> None:
        """Sync over SSH, then freeze every file system through the guest agent when one
        answers, then stop the VM: the disks hold everything the guest wrote, without
        waiting for the guest's shutdown path. Frozen file systems are clean on disk; without
        an agent they are as after a power loss right after a sync (a journal replays
        nothing, a file system without one is marked unchecked). Services that must stop
        cleanly (databases) want ``shutdown: graceful``."""
        agent = self.hv.agent_ping(self.domain, AGENT_PING_TIMEOUT_S)
        command = f"{self.forget_build_key()}; sync"
        try:
            # The last command of the session (power_off closes it afterwards).
            self.guest().power_off(command, timeout=FAST_SYNC_TIMEOUT_S, cancel=self.stopper.event)
        except Cancelled as exc:
            raise BuildCancelled(self.stopper.reason) from exc
        if agent:
            self.freeze_filesystems()
        self.hv.destroy(self.domain)
        how = "froze its file systems" if agent else "synced its disks"
        self.log(f"stopped the VM once it {how} (shutdown: fast)")

    def graceful_shutdown(self) -> None:
        """Guest poweroff over SSH, then the guest agent or ACPI (hv.shutdown), then a forced
        stop."""
        powershell = self.vm.communicator.shell == "powershell"
        command = POWEROFF_POWERSHELL if powershell else POWEROFF_POSIX
        if not powershell:
            command = f"{self.forget_build_key()}; sync; {command}"
        try:
            self.guest().power_off(command, timeout=10, cancel=self.stopper.event)
        except Cancelled as exc:
            raise BuildCancelled(self.stopper.reason) from exc
        if self.wait_off(self.config.guest_poweroff_timeout_s):
            self.log("the guest powered off")
            return
        # The guest agent when it answers (it does not depend on ACPI), else the power button.
        agent = self.hv.shutdown(self.domain) is ShutdownVia.AGENT
        asked = "asked its guest agent to shut it down" if agent else ACPI_ASKED
        self.log(f"the guest did not power off by itself; {asked}")
        if self.wait_off(self.config.acpi_timeout_s):
            self.log(f"the guest powered off {'through its guest agent' if agent else 'on ACPI'}")
            return
        ignored = "its guest agent's shutdown" if agent else "ACPI"
        self.log(f"the guest ignored {ignored}; forcing it off", "stderr")
        self.freeze_filesystems()
        self.hv.destroy(self.domain)

    def freeze_filesystems(self) -> None:
        """Before a forced stop: through the guest agent when one answers, flush and freeze
        the guest's filesystems, so the disks captured after the plug is pulled are
        consistent (no thaw: the domain is destroyed next, its next boot starts thawed).
        Logged either way, never fatal: a guest without agent is forced off as it is."""
        try:
            frozen = self.hv.fsfreeze(self.domain, FSFREEZE_TIMEOUT_S)
        except HypervisorError as exc:
            self.log(f"its guest agent could not freeze its filesystems ({exc})", "stderr")
            return
        if frozen is None:
            self.log("no guest agent answers to freeze its filesystems first")
        else:
            self.log(f"its guest agent froze {frozen} filesystem(s) first")

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
