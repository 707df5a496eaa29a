"""The gateway of a managed network, in a network namespace instead of on the host.

Layout, per *router* (a VPC of one build or clone; a network without ``router`` is a router
of its own)::

    guest NICs -- bridge rvbr… (libvirt, no host address) -- veth rvg… | s… (in netns rvr-…)
                                                                        ├─ the gateway address
                                                                        └─ dnsmasq: DHCP + DNS
    other subnets of the same VPC plug into the same netns the same way; it routes between them
    and nowhere else. With NAT (internet allowed) the netns also gets an uplink, see
    :mod:`ruddervirt.hypervisor.gateway_nat`, that reaches the internet only (no private,
    link-local or CGNAT address, no subnet of the host's: :mod:`gateway_egress`); its far
    end is the host, or the namespace ``RUDDERVIRT_UPLINK_NETNS`` names (tests).

Why: libvirt refuses to start a network whose subnet is already routed on the host, so two
clones with the same CIDR could never run side by side; in a namespace every copy has its own
routing table. Guests also cannot reach the host at all: it has no address on their segments.

Contract: :func:`ensure` makes a spec's gateway run (idempotent, repairs a half-started or
outdated one); :func:`stop` removes it and, with the last subnet of its router, the namespace.
Both take a file lock per router, so concurrent builds and clones (threads or processes) are
safe. Every command runs through :func:`ruddervirt.proc.run` with a timeout. Needs root
(CAP_NET_ADMIN, CAP_SYS_ADMIN), ``ip`` (iproute2) and ``dnsmasq``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ruddervirt.hypervisor import gateway_nat
from ruddervirt.hypervisor.gateway_names import GatewayNames, names_for
from ruddervirt.hypervisor.specs import NetworkSpec
from ruddervirt.proc import ExternalCommandError, run

RUNTIME_DIR = Path(os.environ.get("RUDDERVIRT_GATEWAY_DIR", "/run/ruddervirt/gateways"))
NETNS_DIR = Path("/run/netns")
DNSMASQ = shutil.which("dnsmasq", path="/usr/sbin:/usr/bin:/sbin:/bin") or "dnsmasq"
COMMAND_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
LEASE_TIME = "1h"


class GatewayError(Exception):
    """A gateway could not be started or stopped."""


# --- pure: the dnsmasq configuration --------------------------------------------------------


def hosts_text(spec: NetworkSpec) -> str:
    """The DNS names the gateway answers (an /etc/hosts file)."""
    return "".join(f"{h.ip} {' '.join(h.names)}\n" for h in spec.dns_hosts if h.names)


def dhcp_hosts_text(spec: NetworkSpec) -> str:
    """Fixed leases, one ``mac,ip[,name]`` per line (dnsmasq's dhcp-hostsfile)."""
    lines = []
    for host in spec.dhcp_hosts:
        fields = [host.mac, str(host.ip)] + ([host.name] if host.name else [])
        lines.append(",".join(fields) + "\n")
    return "".join(lines)


def dnsmasq_config(spec: NetworkSpec, names: GatewayNames, folder: Path) -> str:
    """dnsmasq's configuration for ``spec``'s gateway, with its files in ``folder``.

    DNS always (the VMs' names; upstream only through ``dns_forwarders`` or, with NAT and no
    forwarders, the host's resolvers). DHCP with a range, or fixed leases only, or none. DHCP
    hands out the gateway as router and as first DNS server, then ``dns_servers``."""
    assert spec.ipv4 is not None
    net = spec.ipv4.network
    lines = [
        f"# RudderVirt gateway of network {spec.name}",
        f"interface={names.inner}",
        "bind-interfaces",
        "except-interface=lo",
        f"pid-file={folder / 'dnsmasq.pid'}",
        "no-hosts",
        f"addn-hosts={folder / 'hosts'}",
        "no-poll",
        "strict-order",
        "domain-needed",
        "bogus-priv",
        f"log-facility={folder / 'dnsmasq.log'}",
    ]
    lines += [f"server={addr}" for addr in spec.dns_forwarders]
    if spec.dns_forwarders or not spec.nat:
        lines.append("no-resolv")  # isolated: never a query to the host's upstream resolvers
    if spec.domain is not None:
        lines += [f"domain={spec.domain}", f"local=/{spec.domain}/", "expand-hosts"]
    if spec.dhcp_range is not None or spec.dhcp_hosts:
        if spec.dhcp_range is not None:
            start, end = spec.dhcp_range
            lines.append(f"dhcp-range={start},{end},{net.netmask},{LEASE_TIME}")
        else:
            lines.append(f"dhcp-range={net.network_address},static,{net.netmask},{LEASE_TIME}")
        servers = ",".join(str(a) for a in (spec.ipv4.ip, *spec.dns_servers))
        lines += [
            f"dhcp-hostsfile={folder / 'dhcp-hosts'}",
            f"dhcp-leasefile={folder / 'leases'}",
            "dhcp-authoritative",
            "dhcp-no-override",
            f"dhcp-option=option:router,{spec.ipv4.ip}",
            f"dhcp-option=option:dns-server,{servers}",
            "log-dhcp",
        ]
    return "\n".join(lines) + "\n"


# --- running it ------------------------------------------------------------------------------


def _ip(*args: str) -> str:
    return run(["ip", *args], timeout=COMMAND_TIMEOUT_S).stdout.decode()


def _in_netns(netns: str, *args: str) -> str:
    return run(["ip", "netns", "exec", netns, *args], timeout=COMMAND_TIMEOUT_S).stdout.decode()


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _netns_exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


@dataclass
class _Held:
    """A held router lock; ``remove`` (set by its holder) removes the lock file at release."""

    remove: bool = False


@contextlib.contextmanager
def _locked(runtime_dir: Path, netns: str) -> Iterator[_Held]:
    """An exclusive lock per router: flock on ``<runtime_dir>/<netns>.lock``. The holder may
    remove the file with its router (``held.remove = True``): it is unlinked while still
    locked, so a process that was waiting on it wakes up holding a file no longer at the path,
    sees so (_lock_file) and locks the path again, where newcomers lock too."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    path = runtime_dir / f"{netns}.lock"
    handle = _lock_file(path)
    held = _Held()
    try:
        yield held
    finally:
        try:
            if held.remove:
                path.unlink(missing_ok=True)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _lock_file(path: Path) -> IO[str]:
    """An open ``path``, flocked, that is still the file at ``path`` (see _locked)."""
    while True:
        handle = open(path, "a")  # noqa: SIM115 - closed by _locked, or below
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            mine, now = os.fstat(handle.fileno()), os.stat(path)
            if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                return handle
        except FileNotFoundError:
            pass  # removed by the holder we waited for: lock the path again
        except BaseException:
            handle.close()
            raise
        handle.close()


def _files(spec: NetworkSpec, names: GatewayNames, folder: Path) -> dict[str, str]:
    return {
        "dnsmasq.conf": dnsmasq_config(spec, names, folder),
        "hosts": hosts_text(spec),
        "dhcp-hosts": dhcp_hosts_text(spec),
    }


def _folder(runtime_dir: Path, spec: NetworkSpec) -> Path:
    return runtime_dir / names_for(spec).netns / spec.name


def ensure(spec: NetworkSpec, *, runtime_dir: Path = RUNTIME_DIR) -> None:
    """Make ``spec``'s gateway run on its (existing) bridge; nothing for unmanaged networks."""
    if spec.ipv4 is None:
        return
    names = names_for(spec)
    folder = _folder(runtime_dir, spec)
    try:
        with _locked(runtime_dir, names.netns):
            if _healthy(spec, names, folder):
                return
            _stop_subnet(names, folder)
            _ensure_router(spec, names, runtime_dir)
            _plug(spec, names)
            _start_dnsmasq(spec, names, folder)
    except (ExternalCommandError, OSError, gateway_nat.UplinkError) as exc:
        raise GatewayError(f"gateway of network {spec.name}: {exc}") from exc


def stop(spec: NetworkSpec, *, runtime_dir: Path = RUNTIME_DIR) -> None:
    """Remove ``spec``'s gateway, and its router's namespace when no subnet is left in it."""
    if spec.ipv4 is None:
        return
    names = names_for(spec)
    try:
        with _locked(runtime_dir, names.netns) as held:
            _stop_subnet(names, _folder(runtime_dir, spec))
            if _netns_exists(names.netns) and not _subnets_in(names.netns):
                _remove_router(names, runtime_dir)
            held.remove = not _netns_exists(names.netns)  # no router: nor its lock file
    except (ExternalCommandError, OSError) as exc:
        raise GatewayError(f"gateway of network {spec.name}: {exc}") from exc


def running(spec: NetworkSpec, *, runtime_dir: Path = RUNTIME_DIR) -> bool:
    """Whether ``spec``'s gateway is up as :func:`ensure` leaves it."""
    if spec.ipv4 is None:
        return False
    return _healthy(spec, names_for(spec), _folder(runtime_dir, spec))


def _healthy(spec: NetworkSpec, names: GatewayNames, folder: Path) -> bool:
    if not (_netns_exists(names.netns) and _dnsmasq_pid(folder) is not None):
        return False
    try:
        master = os.path.basename(os.readlink(f"/sys/class/net/{names.host_veth}/master"))
    except OSError:
        return False
    if master != spec.bridge:
        return False  # the bridge went away and came back (network restarted)
    for name, text in _files(spec, names, folder).items():
        try:
            if (folder / name).read_text() != text:
                return False  # the network was redefined
        except OSError:
            return False
    return True


def _subnets_in(netns: str) -> list[str]:
    listing = _ip("-n", netns, "-o", "link", "show")
    found = []
    for line in listing.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith("s"):
                found.append(name)
    return found


def _ensure_router(spec: NetworkSpec, names: GatewayNames, runtime_dir: Path) -> None:
    # Where the uplink ends is settled first: an unusable one leaves nothing half-made.
    uplink_host = gateway_nat.uplink_host() if spec.nat else None
    if not _netns_exists(names.netns):
        _ip("netns", "add", names.netns)
        # No IPv6 at all: nothing of the gateway should answer on link-local addresses.
        _in_netns(names.netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        _in_netns(names.netns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        _ip("-n", names.netns, "link", "set", "lo", "up")
    # The router forwards between the subnets of its VPC (it has no other way out unless NAT).
    _in_netns(names.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    if uplink_host is not None:
        gateway_nat.ensure_uplink(names, runtime_dir, in_netns=_in_netns, host=uplink_host)


def _plug(spec: NetworkSpec, names: GatewayNames) -> None:
    assert spec.ipv4 is not None
    _ip("link", "add", names.host_veth, "type", "veth", "peer", "name", names.inner,
        "netns", names.netns)  # fmt: skip
    ipv6 = Path(f"/proc/sys/net/ipv6/conf/{names.host_veth}/disable_ipv6")
    if ipv6.exists():
        ipv6.write_text("1\n")  # a bridge port needs no address of its own
    _ip("link", "set", names.host_veth, "master", spec.bridge, "up")
    _ip("-n", names.netns, "addr", "add", str(spec.ipv4), "dev", names.inner)
    _ip("-n", names.netns, "link", "set", names.inner, "up")


def _start_dnsmasq(spec: NetworkSpec, names: GatewayNames, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # dnsmasq drops to an unprivileged user and rereads its hosts files
    for name, text in _files(spec, names, folder).items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o644)
    _in_netns(names.netns, DNSMASQ, f"--conf-file={folder / 'dnsmasq.conf'}")
    if _dnsmasq_pid(folder) is None:
        raise GatewayError(f"dnsmasq of network {spec.name} did not stay up: see {folder}")


def _dnsmasq_pid(folder: Path) -> int | None:
    """dnsmasq's pid when it runs with this folder's configuration (a reused pid is ignored)."""
    try:
        pid = int((folder / "dnsmasq.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    expected = f"--conf-file={folder / 'dnsmasq.conf'}".encode()
    if expected not in cmdline.split(b"\0") or state == "Z":
        return None
    return pid


def _stop_subnet(names: GatewayNames, folder: Path) -> None:
    pid = _dnsmasq_pid(folder)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _dnsmasq_pid(folder) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if _dnsmasq_pid(folder) is not None:
            os.kill(pid, signal.SIGKILL)
    if _link_exists(names.host_veth):
        _ip("link", "del", names.host_veth)  # takes its namespace end with it
    elif _netns_exists(names.netns) and names.inner in _subnets_in(names.netns):
        _ip("-n", names.netns, "link", "del", names.inner)
    shutil.rmtree(folder, ignore_errors=True)


def _remove_router(names: GatewayNames, runtime_dir: Path) -> None:
    # A stand-in uplink namespace already gone took the uplink's rules and veth end with it.
    with contextlib.suppress(gateway_nat.UplinkError):
        gateway_nat.remove_uplink(names, host=gateway_nat.uplink_host())
    _ip("netns", "del", names.netns)
    shutil.rmtree(runtime_dir / names.netns, ignore_errors=True)


def routers(runtime_dir: Path = RUNTIME_DIR) -> list[str]:
    """The router namespaces that exist on this host (``rvr-*``), for leak checks."""
    if not NETNS_DIR.exists():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith("rvr-"))
