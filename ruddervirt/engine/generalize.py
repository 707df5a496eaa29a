"""Generalizing a build VM for cloning: what virt-sysprep's default operations do, done by the
guest itself after the last provisioner and before its shutdown.

One POSIX ``sh`` script, made from fixed text (the only value put into it is the build's key,
checked to be a name), runs as root over the VM's communicator: ``sh -s`` when the
communicator logs in as root, else ``sudo -n sh -s`` (the user needs passwordless sudo; a
build that cannot give it sets ``generalize: false``). It prints one line per item it
removed, which the build log shows and the version records (GeneralizationRecord); a missing
tool or file is skipped, so minimal guests (busybox) pass through it.

Always: /etc/machine-id emptied (the file stays; systemd makes a new id at the next boot; a
separate /var/lib/dbus/machine-id becomes a link to it), systemd's saved random seed, DHCP
leases (dhclient, systemd-networkd, NetworkManager), shell histories of root and of every
/home user, and the build's own SSH key (its comment is ``build_key_comment(key)``) from
every authorized_keys.

Only for VMs with ``cloudInit`` (their clones boot with a seed of their own, so cloud-init
runs as a new instance and makes new host keys and network config): ``cloud-init clean
--logs`` (instance state and logs; the seed folder stays), the network config cloud-init
rendered for the build (it carries the build's management NIC) and the OpenSSH host keys.
Without a seed nothing would make those again in a clone, so they are kept.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from ruddervirt.engine.errors import BuildError
from ruddervirt.guest.communicator import Communicator
from ruddervirt.spec import GeneralizationRecord

MARKER = "# ruddervirt: generalize this guest for cloning"
TIMEOUT_S = 300.0
_KEY = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

Log = Callable[[str, str], None]  # log(text, stream)

_HEAD = f"""{MARKER}
# Prints one line per item removed; missing tools and files are skipped.
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
status=0
gone() {{
  for f in "$@"; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    if rm -rf -- "$f"; then echo "removed $f"; else echo "could not remove $f" >&2; status=1; fi
  done
}}
if [ -s /etc/machine-id ]; then
  if : >/etc/machine-id; then echo "emptied /etc/machine-id"; else status=1; fi
fi
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
  gone /var/lib/dbus/machine-id
  [ -e /etc/machine-id ] && ln -s /etc/machine-id /var/lib/dbus/machine-id
fi
# Clones must not start from the same saved entropy (virt-sysprep writes a new seed instead).
gone /var/lib/systemd/random-seed
gone /var/lib/dhcp/dhclient*.lease /var/lib/dhcp/dhclient*.leases /var/lib/dhclient/*.lease*
gone /var/lib/NetworkManager/*.lease /run/systemd/netif/leases/*
for home in /root /home/*; do
  gone "$home/.bash_history" "$home/.ash_history" "$home/.sh_history" "$home/.zsh_history" \\
    "$home/.history" "$home/.local/share/fish/fish_history"
done
"""

_BUILD_KEY = """for f in /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys; do
  [ -f "$f" ] && grep -q ' {comment}$' "$f" || continue
  if sed -i '/ {comment}$/d' "$f"; then echo "removed the build's SSH key from $f"
  else status=1; fi
done
"""

_CLOUD_INIT = """if command -v cloud-init >/dev/null 2>&1; then
  # Let a boot's cloud-init finish first: its last stage would write new state after ours.
  if command -v timeout >/dev/null 2>&1; then
    timeout 120 cloud-init status --wait >/dev/null 2>&1
  fi
  if cloud-init clean --logs >/dev/null; then
    echo "removed cloud-init's instance state and logs (cloud-init clean --logs)"
  else echo "cloud-init clean failed" >&2; status=1; fi
fi
gone /etc/network/interfaces.d/50-cloud-init /etc/network/interfaces.d/50-cloud-init.cfg
gone /etc/netplan/50-cloud-init.yaml /etc/systemd/network/10-cloud-init-*.network
gone /etc/NetworkManager/system-connections/cloud-init-*.nmconnection
gone /etc/ssh/ssh_host_*
"""


class GeneralizationFailed(BuildError):
    """The guest's generalization script failed; the build fails with this message."""


def script(*, key_comment: str, cloud_init: bool) -> str:
    """The generalization script (see the module docstring). ``key_comment`` (the build key's
    comment) must be a name (lowercase letters, digits, '-'): the only value in the text."""
    if not _KEY.match(key_comment):
        raise ValueError(f"not a build key comment: {key_comment!r}")
    text = _HEAD + _BUILD_KEY.format(comment=key_comment)
    if cloud_init:
        text += _CLOUD_INIT
    return text + "sync\nexit $status\n"


def command(username: str) -> str:
    """How the script (on stdin) runs as root for a communicator logged in as ``username``."""
    return "sh -s" if username == "root" else "sudo -n sh -s"


def generalize(
    guest: Communicator,
    *,
    vm: str,
    username: str,
    key_comment: str,
    cloud_init: bool,
    log: Log,
    timeout: float,
    cancel: threading.Event | None = None,
) -> GeneralizationRecord:
    """Run the script in ``guest``; every line it prints goes to ``log``. Returns what it
    removed; raises GeneralizationFailed when it exits non-zero (its stderr is in the log),
    and whatever ``guest.run`` raises (timeouts, a lost connection, Cancelled)."""
    how = "as root" if username == "root" else f"as root (sudo -n from {username})"
    log(f"generalizing the guest for cloning, {how}", "phase")
    if not cloud_init:
        log(
            "keeping the SSH host keys and cloud-init's state: the VM has no cloudInit, so "
            "no clone gets a seed that would make new ones",
            "info",
        )
    removed: list[str] = []

    def output(stream: str, line: str) -> None:
        if stream == "stdout" and line.strip():
            removed.append(line.strip())
        log(line, stream)

    text = script(key_comment=key_comment, cloud_init=cloud_init)
    code = guest.run(
        command(username), stdin=text.encode(), on_output=output, timeout=timeout, cancel=cancel
    )
    if code != 0:
        hint = " (does the user have passwordless sudo? or set generalize: false)"
        raise GeneralizationFailed(
            f"VM {vm}: generalizing the guest failed: the script exited with code {code}"
            + (hint if username != "root" else "")
        )
    log(
        f"generalized: {len(removed)} item(s) removed"
        if removed
        else "generalized: nothing to remove",
        "info",
    )
    return GeneralizationRecord(removed=tuple(removed), host_keys=cloud_init, cloud_init=cloud_init)


def build_key_comment(key: str) -> str:
    """The comment of a build's throwaway key, by which the guest removes it at the end."""
    return f"ruddervirt-build-{key}"
