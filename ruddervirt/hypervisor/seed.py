"""cloud-init NoCloud seed ISOs (volume label ``cidata``) and the cloud-config we put in them.

The seed carries ``user-data``, ``meta-data`` and optionally ``network-config``. The
instructor's ``cloudInit.userData`` is merged with the build's SSH public keys by
:func:`cloud_config_with_keys`. :func:`seed_drive` is how a VM gets the ISO: a CD-ROM on the
virtio-scsi controller, which every cloud kernel drives (Debian's cloud kernel has no AHCI, so
a SATA CD-ROM is invisible to it); cloud-init's NoCloud finds the label on any block device.

Both the build's and a clone's cloud-config carry :func:`resolv_conf_bootcmd` when the network
config names name servers: Debian 12's cloud images configure a static NIC with ifupdown and
have no `resolvconf`, so its `dns-nameservers` are never applied and /etc/resolv.conf stays
empty. The command writes them there on every boot, unless something else owns the file (a
symlink: systemd-resolved or resolvconf; `resolvconf` installed; name servers not written by
us, such as a DHCP client's or the instructor's own).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ruddervirt.hypervisor.specs import DiskBus, DiskSpec
from ruddervirt.proc import run

GENISOIMAGE = "genisoimage"
SEED_TIMEOUT_S = 60.0
CLOUD_CONFIG_HEADER = "#cloud-config\n"
SEED_BUS: DiskBus = "scsi"
# Quoted in the script below with '': it must hold no quote of its own.
RESOLV_CONF_MARK = "# RudderVirt: the name servers of the network config in the seed"
RESOLV_CONF = "/etc/resolv.conf"
# A fixed script: the file and the name servers come in as its arguments, never in its text.
RESOLV_CONF_SCRIPT = f"""\
f=$1
shift
mark='{RESOLV_CONF_MARK}'
[ -L "$f" ] && exit 0
command -v resolvconf >/dev/null 2>&1 && exit 0
if grep -qs '^nameserver' "$f" && ! grep -qsxF "$mark" "$f"; then exit 0; fi
{{ echo "$mark"; for ns in "$@"; do echo "nameserver $ns"; done; }} > "$f.rv" && mv "$f.rv" "$f"
"""


def seed_drive(path: Path) -> DiskSpec:
    """The read-only CD-ROM that carries the seed ISO at ``path`` (see the module docstring)."""
    return DiskSpec(path=path, target_bus=SEED_BUS, format="raw", device="cdrom", readonly=True)


def make_nocloud_seed(
    dest: Path, *, user_data: str, meta_data: str, network_config: str | None = None
) -> None:
    """Write a NoCloud seed ISO to ``dest`` (replacing it; written to a temporary file first)."""
    dest = Path(dest)
    files = {"user-data": user_data, "meta-data": meta_data}
    if network_config is not None:
        files["network-config"] = network_config
    partial = dest.with_name(dest.name + ".partial")
    try:
        with tempfile.TemporaryDirectory(prefix="rv-seed-") as tmp:
            for name, text in files.items():
                (Path(tmp) / name).write_text(text, encoding="utf-8")
            args: list[str | Path] = [GENISOIMAGE, "-quiet", "-output", partial]
            args += ["-volid", "cidata", "-joliet"]
            run([*args, "-rock", *files], timeout=SEED_TIMEOUT_S, cwd=tmp)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def nocloud_meta_data(*, instance_id: str, hostname: str) -> str:
    """``meta-data`` text; a new ``instance_id`` makes cloud-init run its per-instance steps."""
    data = {"instance-id": instance_id, "local-hostname": hostname}
    return yaml.safe_dump(data, sort_keys=False)


def resolv_conf_bootcmd(name_servers: Sequence[str], path: str = RESOLV_CONF) -> list[str]:
    """The ``bootcmd`` entry that writes `name_servers` to `path` (see the module docstring).
    cloud-init quotes each item of a list command."""
    return ["sh", "-c", RESOLV_CONF_SCRIPT, "rudder-resolv", path, *name_servers]


def user_data_problem(user_yaml: str | None) -> str | None:
    """Why the instructor's userData cannot take the build's keys and boot command (what
    cloud_config_with_keys would raise), or None when it can: checked at validation."""
    try:
        config = _parse_cloud_config(user_yaml)
        _authorized_keys(config)
        _boot_commands(config)
    except ValueError as exc:
        return str(exc)
    return None


def _authorized_keys(config: dict[str, Any]) -> list[str]:
    existing = config.get("ssh_authorized_keys") or []
    if isinstance(existing, str):
        existing = [existing]
    if not isinstance(existing, list) or not all(isinstance(k, str) for k in existing):
        raise ValueError("cloud-config ssh_authorized_keys must be a list of key strings")
    return list(existing)


def _boot_commands(config: dict[str, Any]) -> list[Any]:
    commands = config.get("bootcmd") or []
    if not isinstance(commands, list):
        raise ValueError("cloud-config bootcmd must be a list of commands")
    return commands


def _add_name_servers(config: dict[str, Any], name_servers: Sequence[str]) -> None:
    commands = _boot_commands(config)
    if name_servers:
        config["bootcmd"] = [resolv_conf_bootcmd(name_servers), *commands]


def clone_cloud_config(hostname: str, name_servers: Sequence[str] = ()) -> str:
    """The ``user-data`` of a clone's own seed: the hostname and nothing else to do.

    The instructor's build-time userData is not repeated (a clone is never provisioned
    again) and ``users: []`` keeps cloud-init from touching the accounts the build left (it
    would lock the default user's password again). The new instance is what counts: cloud-init
    makes new SSH host keys and applies the seed's network config; `name_servers` are those of
    that config (resolv_conf_bootcmd)."""
    config: dict[str, Any] = {"hostname": hostname, "users": []}
    _add_name_servers(config, name_servers)
    return CLOUD_CONFIG_HEADER + yaml.safe_dump(config, sort_keys=False)


def cloud_config_with_keys(
    user_yaml: str | None,
    public_keys: Sequence[str],
    hostname: str | None = None,
    name_servers: Sequence[str] = (),
) -> str:
    """The instructor's cloud-config with ``public_keys`` added to ``ssh_authorized_keys``.

    Their keys stay first and in order; ours are appended unless already present (compared
    after trimming whitespace). ``hostname`` is set only when their text sets none. The
    `name_servers` of the seed's network config are written by a ``bootcmd`` that runs before
    theirs (resolv_conf_bootcmd). Empty or missing text counts as ``{}``. Raises
    ``ValueError`` when the text is not YAML or not a mapping (a shell script or ``#include``
    list cannot be merged), or its keys or bootcmd are not lists (user_data_problem).
    Returns ``#cloud-config`` text.
    """
    config = _parse_cloud_config(user_yaml)
    keys = _authorized_keys(config)
    seen = {key.strip() for key in keys}
    for key in public_keys:
        if key.strip() not in seen:
            keys.append(key.strip())
            seen.add(key.strip())
    config["ssh_authorized_keys"] = keys
    if hostname is not None:
        config.setdefault("hostname", hostname)
    _add_name_servers(config, name_servers)
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=1_000_000)
    return CLOUD_CONFIG_HEADER + body


def _parse_cloud_config(user_yaml: str | None) -> dict[str, Any]:
    if user_yaml is None or not user_yaml.strip():
        return {}
    try:
        config = yaml.safe_load(user_yaml)
    except yaml.YAMLError as exc:
        raise ValueError(f"cloud-init userData is not valid YAML: {exc}") from exc
    if config is None:
        return {}
    if not isinstance(config, dict):
        kind = type(config).__name__
        raise ValueError(
            f"cloud-init userData must be a cloud-config mapping (#cloud-config), got a {kind}"
        )
    return config
