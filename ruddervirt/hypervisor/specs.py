"""What to create: frozen descriptions of domains and networks, free of libvirt types.

The build and clone pipelines fill these in; ``domain_xml`` / ``network_xml`` turn them into
libvirt XML; the drivers take them. Every spec validates itself on construction and raises
``ValueError`` with a message naming the field, so a bad spec never reaches libvirt.
Sequences are stored as tuples and paths as ``Path`` (lists and strings are accepted).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

DEFAULT_NAME_PREFIX = "rv-"

DiskBus = Literal["virtio", "scsi", "sata", "usb", "fdc"]
DiskDevice = Literal["disk", "cdrom", "floppy"]
DiskFormat = Literal["qcow2", "raw"]
NicModel = Literal["virtio", "e1000", "e1000e", "rtl8139"]
DomainType = Literal["qemu", "kvm"]

DISK_BUSES: frozenset[str] = frozenset({"virtio", "scsi", "sata", "usb", "fdc"})
DISK_DEVICES: frozenset[str] = frozenset({"disk", "cdrom", "floppy"})
DISK_FORMATS: frozenset[str] = frozenset({"qcow2", "raw"})
NIC_MODELS: frozenset[str] = frozenset({"virtio", "e1000", "e1000e", "rtl8139"})
DOMAIN_TYPES: frozenset[str] = frozenset({"qemu", "kvm"})

MANIFEST_NIC_SLOTS = range(1, 10)  # the manifest's `nics[].slot` (PCI slot 1-9)
MAX_NICS = 13  # PCI slots 0x11-0x1d, see domain_xml
MAX_VIRTIO_DISKS = 8  # PCI slots 0x08-0x0f, see domain_xml
MIN_MEMORY_BYTES = 16 * 1024 * 1024

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_META_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_DNS_NAME_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")


def check_name(name: str, what: str = "name") -> str:
    """Validate a libvirt object name (letters, digits, ``_.-``; at most 80 characters)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{what} {name!r} must be 1-80 letters, digits, '_', '.' or '-'")
    return name


def normalize_mac(mac: str, what: str = "mac") -> str:
    """Lower-case ``mac`` and check it is a unicast ``aa:bb:cc:dd:ee:ff`` address."""
    value = str(mac).strip().lower()
    if not _MAC_RE.match(value):
        raise ValueError(f"{what} {mac!r} is not a MAC address like 52:54:00:12:34:56")
    if int(value[:2], 16) & 1:
        raise ValueError(f"{what} {mac!r} is a multicast address")
    return value


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Copy owner tags, checking keys are identifiers and values strings."""
    copied: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not _META_KEY_RE.match(key):
            raise ValueError(f"metadata key {key!r} must be an identifier (letters, digits, _.-)")
        if not isinstance(value, str):
            raise ValueError(f"metadata value for {key!r} must be a string, got {value!r}")
        copied[key] = value
    return copied


def _single_line(value: str | None, what: str) -> None:
    if value is not None and ("\n" in value or "\r" in value):
        raise ValueError(f"{what} must be a single line")


def _set(obj: object, name: str, value: object) -> None:
    """Assign inside ``__post_init__`` of a frozen dataclass (normalising inputs)."""
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, kw_only=True)
class DiskSpec:
    """One disk, CD-ROM or floppy. ``path`` is absolute; its folders must be traversable by QEMU.

    CD-ROMs use ``sata``/``scsi``/``usb``; floppies use ``fdc`` (and only floppies do).
    ``boot_order`` (1 = first) becomes a per-device boot order.
    """

    path: Path
    target_bus: DiskBus
    format: DiskFormat = "qcow2"
    device: DiskDevice = "disk"
    readonly: bool = False
    boot_order: int | None = None

    def __post_init__(self) -> None:
        _set(self, "path", Path(self.path))
        if not self.path.is_absolute():
            raise ValueError(f"disk path {self.path} must be absolute")
        if self.target_bus not in DISK_BUSES:
            raise ValueError(f"disk bus {self.target_bus!r} not in {sorted(DISK_BUSES)}")
        if self.device not in DISK_DEVICES:
            raise ValueError(f"disk device {self.device!r} not in {sorted(DISK_DEVICES)}")
        if self.format not in DISK_FORMATS:
            raise ValueError(f"disk format {self.format!r} not in {sorted(DISK_FORMATS)}")
        if (self.device == "floppy") != (self.target_bus == "fdc"):
            raise ValueError("floppies, and only floppies, use the 'fdc' bus")
        if self.device == "cdrom" and self.target_bus == "virtio":
            raise ValueError("a cdrom cannot be on the virtio bus; use sata, scsi or usb")
        if self.boot_order is not None and self.boot_order < 1:
            raise ValueError(f"boot_order must be >= 1, got {self.boot_order}")


@dataclass(frozen=True, kw_only=True)
class NicSpec:
    """A NIC on a libvirt network. ``pci_slot`` is the manifest's slot 1-9 (None: next free)."""

    mac: str
    network: str
    model: NicModel = "virtio"
    pci_slot: int | None = None

    def __post_init__(self) -> None:
        _set(self, "mac", normalize_mac(self.mac))
        check_name(self.network, "network")
        if self.model not in NIC_MODELS:
            raise ValueError(f"NIC model {self.model!r} not in {sorted(NIC_MODELS)}")
        if self.pci_slot is not None and self.pci_slot not in MANIFEST_NIC_SLOTS:
            raise ValueError(f"NIC slot {self.pci_slot} must be between 1 and 9")


@dataclass(frozen=True, kw_only=True)
class MgmtForward:
    """The management NIC: QEMU user-mode networking with ``restrict=on`` (no route out) and
    ``hostfwd=tcp:127.0.0.1:host_port-:guest_port`` (the guest's SSH port, 22 unless the
    manifest's ``sshPort`` says otherwise). ``mac`` defaults to one derived from the domain
    name; ``model`` is the emulated card (``e1000`` for guests without virtio drivers)."""

    host_port: int
    mac: str | None = None
    guest_port: int = 22
    model: NicModel = "virtio"

    def __post_init__(self) -> None:
        if not 1024 <= self.host_port <= 65535:
            raise ValueError(f"management host_port {self.host_port} must be in 1024-65535")
        if not 1 <= self.guest_port <= 65535:
            raise ValueError(f"management guest_port {self.guest_port} must be in 1-65535")
        if self.model not in NIC_MODELS:
            raise ValueError(f"management NIC model {self.model!r} not in {sorted(NIC_MODELS)}")
        if self.mac is not None:
            _set(self, "mac", normalize_mac(self.mac, "management mac"))


@dataclass(frozen=True, kw_only=True)
class EfiSpec:
    """UEFI firmware (OVMF). ``nvram`` is this domain's variable store; libvirt creates it from
    ``nvram_template`` when missing. Secure boot needs a q35 machine and a secboot loader.
    """

    loader: Path
    nvram: Path
    secure_boot: bool = False
    nvram_template: Path | None = None

    def __post_init__(self) -> None:
        _set(self, "loader", Path(self.loader))
        _set(self, "nvram", Path(self.nvram))
        if self.nvram_template is not None:
            _set(self, "nvram_template", Path(self.nvram_template))
        for path in (self.loader, self.nvram, self.nvram_template):
            if path is not None and not path.is_absolute():
                raise ValueError(f"EFI path {path} must be absolute")


@dataclass(frozen=True, kw_only=True)
class DomainSpec:
    """A whole VM. ``vnc`` is ``True`` (TCP on 127.0.0.1, port chosen by libvirt) or the path
    of a unix socket, which QEMU itself creates: its folder must be writable by libvirt-qemu.
    ``serial_log`` is a file receiving the serial console, appended to across boots (libvirt
    opens it as root, mode 600; None: a pty). ``metadata`` holds owner tags
    (kind=build|clone|template, ids) stored in the domain XML. Disk images are relabelled by
    libvirt, but every folder above them must be traversable by libvirt-qemu.
    """

    name: str
    vcpus: int
    memory_bytes: int
    domain_type: DomainType
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    mgmt: MgmtForward | None = None
    efi: EfiSpec | None = None
    vnc: Literal[True] | Path = True
    serial_log: Path | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    machine: str = "pc"
    title: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "domain name")
        _set(self, "disks", tuple(self.disks))
        _set(self, "nics", tuple(self.nics))
        _set(self, "metadata", check_metadata(self.metadata))
        if self.vnc is not True:
            _set(self, "vnc", Path(self.vnc))
        if self.serial_log is not None:
            _set(self, "serial_log", Path(self.serial_log))
        if self.domain_type not in DOMAIN_TYPES:
            raise ValueError(f"domain_type {self.domain_type!r} must be 'qemu' or 'kvm'")
        if self.vcpus < 1:
            raise ValueError(f"vcpus must be >= 1, got {self.vcpus}")
        if self.memory_bytes < MIN_MEMORY_BYTES:
            raise ValueError(f"memory_bytes {self.memory_bytes} is below 16 MiB")
        _single_line(self.title, "title")
        self._check_paths()
        self._check_devices()

    @property
    def is_q35(self) -> bool:
        """Whether the machine type is a q35 (ICH9/PCIe) one rather than i440fx ('pc')."""
        return "q35" in self.machine

    def _check_paths(self) -> None:
        for path, what in ((self.vnc, "vnc socket"), (self.serial_log, "serial_log")):
            if isinstance(path, Path) and not path.is_absolute():
                raise ValueError(f"{what} {path} must be absolute")
        if self.efi is not None and self.efi.secure_boot and not self.is_q35:
            raise ValueError("secure boot needs a q35 machine type")

    def _check_devices(self) -> None:
        virtio_disks = sum(1 for disk in self.disks if disk.target_bus == "virtio")
        if virtio_disks > MAX_VIRTIO_DISKS:
            raise ValueError(f"at most {MAX_VIRTIO_DISKS} virtio disks, got {virtio_disks}")
        if len(self.nics) > MAX_NICS:
            raise ValueError(f"at most {MAX_NICS} NICs, got {len(self.nics)}")
        slots = [nic.pci_slot for nic in self.nics if nic.pci_slot is not None]
        if len(slots) != len(set(slots)):
            raise ValueError(f"NIC slots must be unique, got {sorted(slots)}")
        macs = [nic.mac for nic in self.nics]
        if self.mgmt is not None and self.mgmt.mac is not None:
            macs.append(self.mgmt.mac)
        if len(macs) != len(set(macs)):
            raise ValueError("NIC MAC addresses must be unique")


class DhcpHost(NamedTuple):
    """A fixed DHCP lease: this MAC always gets this IP (and DNS name, if given)."""

    mac: str
    ip: ipaddress.IPv4Address
    name: str | None = None


class DnsHost(NamedTuple):
    """Names the network's DNS server answers with ``ip``."""

    ip: ipaddress.IPv4Address
    names: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class NetworkSpec:
    """A libvirt network. With ``ipv4`` None it is unmanaged: a bare bridge without host IP,
    DHCP or DNS. Otherwise its gateway (see ``gateway.py``) gets ``ipv4`` (e.g. ``10.10.0.1/24``)
    in a network namespace of its own, never on the host, and dnsmasq there serves DHCP (with
    a range or fixed hosts) and DNS. ``dns_forwarders`` empty means names outside the network
    are not resolved at all (no upstream queries), except with ``nat``. ``dns_servers`` are
    handed out by DHCP after the gateway itself. Managed networks with the same ``router``
    (a VPC) route to each other and to nothing else; None means a router of its own. There is
    no way out (isolated) unless ``nat`` is True; tests never use NAT.
    """

    name: str
    bridge: str
    ipv4: ipaddress.IPv4Interface | None = None
    dhcp_range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None = None
    dhcp_hosts: tuple[DhcpHost, ...] = ()
    dns_hosts: tuple[DnsHost, ...] = ()
    dns_forwarders: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    nat: bool = False
    domain: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    router: str | None = None
    dns_servers: tuple[ipaddress.IPv4Address, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.name, "network name")
        if self.router is not None:
            check_name(self.router, "router")
        if not _BRIDGE_RE.match(self.bridge):
            raise ValueError(f"bridge {self.bridge!r} must be 1-15 letters, digits or '_.-'")
        _set(self, "metadata", check_metadata(self.metadata))
        self._normalize()
        if self.ipv4 is None:
            self._check_unmanaged()
        else:
            self._check_managed(self.ipv4)

    def _normalize(self) -> None:
        if self.ipv4 is not None:
            _set(self, "ipv4", ipaddress.IPv4Interface(self.ipv4))
        if self.dhcp_range is not None:
            start, end = self.dhcp_range
            _set(self, "dhcp_range", (ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)))
        hosts = tuple(
            DhcpHost(normalize_mac(h[0], "dhcp host mac"), ipaddress.IPv4Address(h[1]), *h[2:])
            for h in self.dhcp_hosts
        )
        _set(self, "dhcp_hosts", hosts)
        dns = (DnsHost(ipaddress.IPv4Address(ip), tuple(names)) for ip, names in self.dns_hosts)
        _set(self, "dns_hosts", tuple(dns))
        _set(self, "dns_forwarders", tuple(ipaddress.ip_address(a) for a in self.dns_forwarders))
        _set(self, "dns_servers", tuple(ipaddress.IPv4Address(a) for a in self.dns_servers))

    def _check_unmanaged(self) -> None:
        managed_only = {
            "dhcp_range": self.dhcp_range is not None,
            "dhcp_hosts": bool(self.dhcp_hosts),
            "dns_hosts": bool(self.dns_hosts),
            "dns_forwarders": bool(self.dns_forwarders),
            "dns_servers": bool(self.dns_servers),
            "router": self.router is not None,
            "nat": self.nat,
            "domain": self.domain is not None,
        }
        for key, used in managed_only.items():
            if used:
                raise ValueError(f"{key} needs ipv4 (an unmanaged network has no DHCP/DNS/NAT)")

    def _check_managed(self, ipv4: ipaddress.IPv4Interface) -> None:
        net = ipv4.network
        if net.prefixlen > 30 or ipv4.ip in (net.network_address, net.broadcast_address):
            raise ValueError(f"ipv4 {ipv4} must be a host address in a /30 or wider network")
        if self.dhcp_range is not None:
            start, end = self.dhcp_range
            if start not in net or end not in net or start > end:
                raise ValueError(f"dhcp_range {start}-{end} must be an ordered range in {net}")
            if start <= ipv4.ip <= end:
                raise ValueError(f"dhcp_range {start}-{end} must not contain the host IP {ipv4.ip}")
        for host in self.dhcp_hosts:
            if host.ip not in net:
                raise ValueError(f"dhcp host {host.mac} address {host.ip} is outside {net}")
            if host.name is not None and not _DNS_NAME_RE.match(host.name):
                raise ValueError(f"dhcp host name {host.name!r} is not a DNS name")
        if len({h.mac for h in self.dhcp_hosts}) != len(self.dhcp_hosts):
            raise ValueError("dhcp host MAC addresses must be unique")
        for names in (h.names for h in self.dns_hosts):
            for name in names:
                if not _DNS_NAME_RE.match(name):
                    raise ValueError(f"dns host name {name!r} is not a DNS name")
        if self.domain is not None and not _DNS_NAME_RE.match(self.domain):
            raise ValueError(f"domain {self.domain!r} is not a DNS name")
