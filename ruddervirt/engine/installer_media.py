"""The installer side of a build VM: ISOs, floppy, boot command and the HTTP server's view.

`InstallerMedia` is a mixin of engine.vm.VMRunner: the attributes it relies on are declared
at the top of the class (and set by VMRunner.__init__), so a type checker holds the two
together. Everything here that can fail does so before the VM boots: a wrong ISO checksum, a
floppy that cannot be made, a boot command that cannot be typed.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from ruddervirt.engine import bootcmd, isos
from ruddervirt.engine.config import EngineConfig
from ruddervirt.engine.errors import BuildError
from ruddervirt.engine.files import FileStore
from ruddervirt.engine.httpserver import BuildHTTPServer
from ruddervirt.engine.reporter import Stopper
from ruddervirt.engine.topology import NicPlan
from ruddervirt.hypervisor.driver import Hypervisor, HypervisorError
from ruddervirt.hypervisor.floppy import FloppyError, make_floppy
from ruddervirt.manifest.model import Manifest, Vm
from ruddervirt.proc import ExternalCommandError

SCREENSHOT_TIMEOUT_S = 20.0


class InstallerMedia:
    """ISOs as CD-ROMs, a floppy, the typed boot command, and diagnostics when SSH never
    comes (what the HTTP server saw, a console screenshot)."""

    # What the mixin relies on; VMRunner.__init__ sets every one of them.
    vm: Vm
    manifest: Manifest
    config: EngineConfig
    files: FileStore
    http: BuildHTTPServer | None
    nics: tuple[NicPlan, ...]
    hv: Hypervisor
    domain: str
    dir: Path
    stopper: Stopper
    isos: list[Path]
    iso_entries: list[Path]

    def log(self, text: str, stream: str = "info") -> None:
        raise NotImplementedError  # VMRunner.log

    def prepare_isos(self) -> list[Path]:
        """Every ISO, fetched or taken from the cache, linked into the VM's folder (the
        paths returned, in manifest order); a checksum mismatch or a refused URL raises
        here, before anything boots."""
        paths = []
        for index, iso in enumerate(self.vm.isos):
            entry = isos.fetch_iso(
                iso.url,
                iso.checksum,
                self.config.iso_cache_dir,
                policy=self.config.fetch_policy,
                ttl_s=self.manifest.iso_cache_ttl,
                should_stop=lambda: self.stopper.stopped,
                log=self.log,
            )
            self.iso_entries.append(entry)
            paths.append(isos.attach_link(entry, self.dir / f"cdrom{index + 1}.iso"))
            self.log(f"ISO {index + 1}: {iso.url} attached as CD-ROM {index + 1}")
        return paths

    def release_isos(self) -> None:
        """The end of the build is the ISOs' last use: their TTL counts from now."""
        for path in self.iso_entries:
            # OSError: evicted meanwhile by a build with a shorter TTL, nothing to keep.
            with contextlib.suppress(OSError):
                isos.mark_used(path, self.manifest.iso_cache_ttl)

    def make_floppy(self) -> Path:
        """A FAT floppy of the VM's `floppy.files`, for this build only."""
        names = self.vm.floppy_files
        content = {
            name: self.files.content(name, should_stop=lambda: self.stopper.stopped)
            for name in names
        }
        try:
            path = make_floppy(self.dir / "floppy.img", content)
        except (FloppyError, ExternalCommandError) as exc:
            raise BuildError(f"VM {self.vm.name}: cannot make the floppy: {exc}") from exc
        self.log("floppy attached with " + ", ".join(names))
        return path

    def http_address(self) -> tuple[str | None, int | None]:
        """The build's HTTP server as this VM reaches it: through its first NIC on a
        managed subnet. (None, None) without a server or without such a NIC."""
        if self.http is None:
            return None, None
        for nic in self.nics:
            address = self.http.address(nic.subnet)
            if address is not None:
                return address
        return None, None

    def plan_boot_command(self) -> list[bootcmd.Segment]:
        if not self.vm.boot_command:
            return []
        ip, port = self.http_address()
        segments = bootcmd.plan_for(self.vm, ip, port)
        if ip is not None and bootcmd.uses_http(self.vm.boot_command):
            self.log(f"the boot command points the guest at the build's HTTP server {ip}:{port}")
        return segments

    def log_ssh_hints(self) -> None:
        """What the build saw of the guest, for a VM that never answered on SSH."""
        if self.http is not None and bootcmd.uses_http(self.vm.boot_command):
            fetched = self.http.requests_from(self.vm.name)
            if not fetched:
                self.log(
                    "the guest never fetched anything from the build's HTTP server: did the "
                    "boot command reach the installer (check the waits), and does it get an "
                    "address on its NIC?",
                    "stderr",
                )
            else:
                paths = ", ".join(f"{r.path} ({r.status})" for r in fetched)
                self.log(f"the guest fetched from the build's HTTP server: {paths}")
        self.save_screenshot()

    def save_screenshot(self) -> None:
        """Keep the console picture in the VM's folder. Best effort and bounded in time: a
        wedged guest must not hold up the build's failure."""
        taken: list[bytes] = []

        def take() -> None:
            with contextlib.suppress(HypervisorError, OSError):
                taken.append(self.hv.screenshot(self.domain))

        worker = threading.Thread(target=take, name=f"screenshot-{self.vm.name}", daemon=True)
        worker.start()
        worker.join(SCREENSHOT_TIMEOUT_S)
        if not taken:
            return
        image = taken[0]
        suffix = "png" if image.startswith(b"\x89PNG") else "ppm"
        path = self.dir / f"console.{suffix}"
        path.write_bytes(image)
        self.log(f"the console as it was when SSH gave up: {path}")
