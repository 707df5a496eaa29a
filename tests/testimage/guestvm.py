"""Boot the tiny test image under libvirt (TCG) for the end-to-end tests of tools/testimage.

This is deliberately independent of ruddervirt/hypervisor/ (written separately): it drives
`virsh` and builds the domain XML with ElementTree. The guest's management NIC is QEMU user-mode
networking with restrict=on (no route out) and an SSH port forward on 127.0.0.1; extra NICs are
on further restricted user-mode networks, each on its own subnet. The serial console is a TCP server
on 127.0.0.1 whose output is also logged to a file (shown when a test fails).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tools.testimage.build import INFO_NAME, build_image

VIRSH = ["virsh", "-c", "qemu:///system", "-q"]
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "var/cache/testimage"
NAME_PREFIX = os.environ.get("RUDDERVIRT_NAME_PREFIX", "rvt-")


def cached_image(kernel: str | None = None) -> Path:
    """The test image, built (or found) in RUDDERVIRT_TESTIMAGE_CACHE or var/cache/testimage,
    with `kernel` or else the flavor in RUDDERVIRT_TESTIMAGE_KERNEL (default auto)."""
    cache = Path(os.environ.get("RUDDERVIRT_TESTIMAGE_CACHE", DEFAULT_CACHE))
    flavor = kernel or os.environ.get("RUDDERVIRT_TESTIMAGE_KERNEL", "auto")
    return build_image(cache, kernel=flavor)


def image_info(image: Path) -> dict:
    """The image.json written beside the image (modules, nic_models, disk_buses, ...)."""
    return json.loads((image.parent / INFO_NAME).read_text())


def virsh(*args: str, timeout: float = 60, check: bool = True) -> str:
    done = subprocess.run(
        [*VIRSH, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class KeyPair:
    """An ed25519 key: paramiko's private key, the OpenSSH public line and private PEM."""

    private: paramiko.PKey
    public: str
    pem: str

    @classmethod
    def generate(cls, comment: str = "testimage@ruddervirt") -> KeyPair:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        private = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
        return cls(private, f"{public.decode()} {comment}", pem)


@dataclass
class ExtraNic:
    """A NIC on its own restricted user-mode network (`net` like 10.1.0.0/24)."""

    model: str  # QEMU device: e1000, e1000e, rtl8139, virtio-net-pci
    slot: int
    net: str
    mac: str


@dataclass
class Seed:
    meta_data: dict
    user_data: dict
    network_config: dict | None = None

    def write_iso(self, workdir: Path) -> Path:
        files = workdir / "seed"
        files.mkdir()
        (files / "meta-data").write_text(yaml.safe_dump(self.meta_data))
        (files / "user-data").write_text("#cloud-config\n" + yaml.safe_dump(self.user_data))
        if self.network_config is not None:
            (files / "network-config").write_text(yaml.safe_dump(self.network_config))
        iso = workdir / "seed.iso"
        args = ["genisoimage", "-quiet", "-output", str(iso), "-V", "cidata", "-J", "-r"]
        subprocess.run([*args, *sorted(str(p) for p in files.iterdir())], check=True, timeout=60)
        return iso


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


@dataclass
class TinyVM:
    """One test domain: overlay disk, seed CD-ROM, forwarded SSH port and serial console."""

    image: Path
    seed: Seed | None  # None: no seed CD-ROM at all
    extra_nics: list[ExtraNic] = field(default_factory=list)
    memory_mib: int = 256
    serial: bool = True  # the serial console (off: what a VM without a serial port sees)
    name: str = field(default_factory=lambda: f"{NAME_PREFIX}testimage-{uuid.uuid4().hex[:8]}")
    ssh_port: int = field(default_factory=free_port)
    serial_port: int = field(default_factory=free_port)
    workdir: Path = field(init=False)
    started_at: float = 0.0

    def __post_init__(self) -> None:
        # Every parent folder must be traversable by QEMU's user (libvirt-qemu).
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir="/tmp"))
        self.workdir.chmod(0o755)

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    def domain_xml(self, overlay: Path, iso: Path | None) -> str:
        """TCG domain: 1 vCPU, i440fx, ACPI (for the power button), no libvirt NICs: all NICs
        are QEMU user-mode ones added on the QEMU command line (see _qemu_args)."""
        ET.register_namespace("qemu", QEMU_NS)
        domain = ET.Element("domain", type="qemu")
        _sub(domain, "name", self.name)
        _sub(domain, "memory", str(self.memory_mib), unit="MiB")
        _sub(domain, "vcpu", "1")
        os_el = _sub(domain, "os")
        _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
        _sub(os_el, "boot", dev="hd")
        features = _sub(domain, "features")
        _sub(features, "acpi")
        _sub(features, "apic")
        _sub(domain, "clock", offset="utc")
        for event, action in (("poweroff", "destroy"), ("reboot", "restart"), ("crash", "destroy")):
            _sub(domain, f"on_{event}", action)
        devices = _sub(domain, "devices")
        self._add_disks(devices, overlay, iso)
        self._add_consoles(devices)
        _sub(devices, "memballoon", model="none")
        commandline = _sub(domain, f"{{{QEMU_NS}}}commandline")
        for arg in self._qemu_args():
            _sub(commandline, f"{{{QEMU_NS}}}arg", value=arg)
        return ET.tostring(domain, encoding="unicode")

    @staticmethod
    def _add_disks(devices: ET.Element, overlay: Path, iso: Path | None) -> None:
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type="qcow2")
        _sub(disk, "source", file=str(overlay))
        _sub(disk, "target", dev="vda", bus="virtio")
        if iso is None:
            return
        cdrom = _sub(devices, "disk", type="file", device="cdrom")
        _sub(cdrom, "driver", name="qemu", type="raw")
        _sub(cdrom, "source", file=str(iso))
        _sub(cdrom, "target", dev="hdc", bus="ide")
        _sub(cdrom, "readonly")

    def _add_consoles(self, devices: ET.Element) -> None:
        if self.serial:
            serial = _sub(devices, "serial", type="tcp")
            _sub(serial, "source", mode="bind", host="127.0.0.1", service=str(self.serial_port))
            _sub(serial, "protocol", type="raw")
            _sub(serial, "log", file=str(self.console_log), append="on")
            _sub(serial, "target", port="0")
        _sub(_sub(devices, "video"), "model", type="vga")
        _sub(devices, "graphics", type="vnc", port="-1", autoport="yes", listen="127.0.0.1")

    def _qemu_args(self) -> list[str]:
        forward = f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
        args = ["-netdev", f"user,id=mgmt,restrict=on,{forward}"]
        # romfile= : no iPXE option ROM, which only slows SeaBIOS down under TCG.
        args += ["-device", "virtio-net-pci,netdev=mgmt,addr=0x1e,romfile="]
        for i, nic in enumerate(self.extra_nics):
            args += ["-netdev", f"user,id=data{i},restrict=on,net={nic.net}"]
            device = f"{nic.model},netdev=data{i},mac={nic.mac},addr={nic.slot:#x},romfile="
            args += ["-device", device]
        return args

    def define(self) -> None:
        overlay = self.workdir / "disk.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.image),
             str(overlay)],
            check=True,
            timeout=60,
        )  # fmt: skip
        iso = self.seed.write_iso(self.workdir) if self.seed else None
        xml_path = self.workdir / "domain.xml"
        xml_path.write_text(self.domain_xml(overlay, iso))
        virsh("define", str(xml_path))

    def start(self) -> None:
        self.started_at = time.monotonic()
        virsh("start", self.name)

    def state(self) -> str:
        return virsh("domstate", self.name)

    def wait_state(self, wanted: str, timeout: float) -> float:
        """Seconds until the domain reached `wanted`; AssertionError after `timeout`."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.state() == wanted:
                return time.monotonic() - started
            time.sleep(0.5)
        raise AssertionError(f"{self.name} still {self.state()!r} after {timeout} s")

    def connect(
        self,
        key: paramiko.PKey | None = None,
        *,
        username: str = "root",
        password: str | None = None,
        timeout: float = 10,
    ) -> paramiko.SSHClient:
        """An SSH session to the guest (host keys are new per instance: accept any)."""
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            "127.0.0.1",
            port=self.ssh_port,
            username=username,
            pkey=key,
            password=password,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            look_for_keys=False,
            allow_agent=False,
        )
        return client

    def banner_ready(self) -> bool:
        """True when the guest's SSH server sends its banner. QEMU's forward accepts the TCP
        connection even while nothing listens in the guest, so a plain connect proves nothing,
        and paramiko would wait its whole banner timeout on every early attempt."""
        try:
            with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=1) as sock:
                sock.settimeout(1)
                return sock.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def wait_for_ssh(self, key: paramiko.PKey, timeout: float = 180) -> paramiko.SSHClient:
        """Poll until a key login as root works; AssertionError (with the console) after
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self.banner_ready():
                try:
                    return self.connect(key, timeout=10)
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    error = exc
            time.sleep(0.25)
        raise AssertionError(f"no SSH after {timeout} s ({error})\n{self.console_tail()}")

    def console_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            text = self.console_log.read_text(errors="replace")
            return "--- serial console (tail) ---\n" + "\n".join(text.splitlines()[-lines:])
        return "(no serial console log)"

    def type_keys(self, text: str) -> None:
        """Type `text` (lower-case letters, digits, space, "/", ".", "-" and newline) on the
        VGA console's keyboard, one key press per character."""
        names = {" ": "SPACE", "/": "SLASH", ".": "DOT", "-": "MINUS", "\n": "ENTER"}
        for char in text:
            virsh(
                "send-key", self.name, "--codeset", "linux", f"KEY_{names.get(char, char.upper())}"
            )

    def destroy(self) -> None:
        """Remove the domain and its files, whatever state it is in."""
        if self.name in virsh("list", "--all", "--name", check=False).split():
            if self.state() != "shut off":
                virsh("destroy", self.name, check=False)
            virsh("undefine", self.name, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def run(
    client: paramiko.SSHClient, command: str, *, stdin: str | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """Run `command` over SSH; return (exit status, stdout, stderr)."""
    chan_in, out, err = client.exec_command(command, timeout=timeout)
    if stdin is not None:
        chan_in.write(stdin)
        chan_in.channel.shutdown_write()
    status = out.channel.recv_exit_status()
    return status, out.read().decode(errors="replace"), err.read().decode(errors="replace")


class SerialConsole:
    """The guest's first serial port (a TCP server on 127.0.0.1), read like `expect`."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.seen = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def expect(self, wanted: str, timeout: float = 30) -> str:
        """Read until `wanted` appears; return what was read up to it (AssertionError after
        `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while wanted.encode() not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"serial console: no {wanted!r} in {self.seen[-500:]!r}")
            self.sock.settimeout(min(left, 1))
            with contextlib.suppress(TimeoutError):
                self.seen += self.sock.recv(4096)
        before, _, self.seen = self.seen.partition(wanted.encode())
        return before.decode(errors="replace")

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def tiny_vm(seed: Seed | None, *, image: Path | None = None, **kwargs: object) -> Iterator[TinyVM]:
    """A defined (not started) domain of `image` (default: cached_image()) that is destroyed
    and undefined afterwards, with its files."""
    vm = TinyVM(image or cached_image(), seed, **kwargs)
    try:
        vm.define()
        yield vm
    finally:
        vm.destroy()
