"""After a warm clone's restore: the guest's clock, and a new identity of its own.

Every warm clone resumes the very memory of one booted guest: its clock stopped when the
image was saved, and it holds the image's machine-id, SSH host keys and random pool. Through
the guest's qemu-guest-agent, :func:`renew` sets the clock to the host's (guest-set-time)
and, unless the VM opted out of generalization (``generalize: false``: its identity is meant
to be the template's), runs :data:`RENEW_SCRIPT`: a fixed program, the same for every guest
and never built from anything a user wrote, fed fresh random bytes of the host on its
standard input. It names the kinds of SSH host keys the guest has; new ones of those kinds
are made on the host (engine.hostkeys: an RSA key costs ~10 s of a TCG guest's CPU) and
installed by a second fixed program. The hostname is kept. Guests without an agent are
left as they were; the note returned says so, for the clone's page.

Plain Python: the clone pipeline (engine.clone.create_many) calls it for each restored VM.
"""

from __future__ import annotations

import logging
import os
import time

from ruddervirt.engine import hostkeys
from ruddervirt.hypervisor.driver import ExecResult, Hypervisor, HypervisorError
from ruddervirt.spec import VMSpec

log = logging.getLogger(__name__)
AGENT_WAIT_S = 1.0  # a restored guest's agent is connected at once (its channel state is saved)
AGENT_PING_S = 1.0
RENEW_TIMEOUT_S = 60.0  # each of the two programs, on a slow TCG guest
SEED_BYTES = 64
# /bin/sh -c RENEW_SCRIPT: stdin (the host's random bytes) into the guest's pool first, and
# the kernel's generator reseeded from it (RNDRESEEDCRNG, through perl where there is one:
# mixing bytes in alone leaves the generator's key, which every clone's restored memory
# shares, in use until its next timed reseed); then a random machine-id (not
# systemd-machine-id-setup: in a VM it would take the SMBIOS UUID, which every clone's
# restored memory shares too), then the kinds of SSH host keys there are ("key=ed25519"),
# when the guest has an SSH server. It says on stdout what it renewed.
# RNDRESEEDCRNG (_IO('R', 0x07)): the kernel's generator takes a new key from its input pool,
# which now holds the host's bytes. `my $f` is declared in a statement of its own: in
# `open(my $f, ...) and ioctl($f, ...)` the second $f would be another (global) variable.
RESEED_PERL = (
    'open(my $f, "<", "/dev/urandom") or exit 1; '
    'ioctl($f, 0x5207, 0) or exit 2; print "reseeded\\n";'
)
RESEEDED = "reseeded"
RENEW_SCRIPT = r"""
head -c 64 > /dev/urandom
if command -v perl >/dev/null 2>&1; then
  perl -e '@@RESEED@@'
fi
if [ -s /etc/machine-id ]; then
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > /etc/machine-id.new
  echo >> /etc/machine-id.new
  mv /etc/machine-id.new /etc/machine-id
  if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
    cp /etc/machine-id /var/lib/dbus/machine-id
  fi
  echo machine-id
fi
if command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; then
  for f in /etc/ssh/ssh_host_*_key; do
    [ -f "$f" ] || continue
    kind=${f#/etc/ssh/ssh_host_}
    echo "key=${kind%_key}"
  done
fi
exit 0
""".replace("@@RESEED@@", RESEED_PERL)
NO_AGENT = "restored as it was saved: no guest agent answered (clock and identity not renewed)"


def renew(
    hv: Hypervisor, domain: str, vm: VMSpec, *, wait_s: float = AGENT_WAIT_S, sleep=time.sleep
) -> str:
    """Set the clock and renew the identity of the restored guest `domain` (see the module
    docstring); the note for the clone's page ("" when all went as it should). Never
    raises: a restored guest runs whatever this says."""
    deadline = time.monotonic() + wait_s
    while not _answers(hv, domain):
        if time.monotonic() >= deadline:
            return NO_AGENT
        sleep(0.2)
    problems = []
    try:
        if not hv.set_guest_time(domain, AGENT_PING_S):
            problems.append("the clock was not set (the agent stopped answering)")
    except HypervisorError as exc:
        problems.append(f"the clock was not set: {exc}")
    if vm.generalization is not None:
        problems += _renew_identity(hv, domain, vm)
    return "; ".join(problems)[:300]


def _answers(hv: Hypervisor, domain: str) -> bool:
    try:
        return hv.agent_ping(domain, AGENT_PING_S)
    except HypervisorError:
        return False


def _renew_identity(hv: Hypervisor, domain: str, vm: VMSpec) -> list[str]:
    argv = ["/bin/sh", "-c", RENEW_SCRIPT]
    result, problem = _run(hv, domain, argv, os.urandom(SEED_BYTES), "renewing the identity")
    if result is None:
        return [problem]
    said = result.stdout.decode(errors="replace").split()
    renewed = [word for word in said if not word.startswith("key=")]
    kinds = [word.removeprefix("key=") for word in said if word.startswith("key=")]
    problems = []
    if kinds:
        keys = _install_host_keys(hv, domain, kinds, comment=f"root@{vm.name}")
        renewed += ["host-keys"] if not keys else []
        problems += keys
    log.info("%s: renewed %s", domain, " ".join(renewed))
    if RESEEDED not in renewed:
        # Every clone resumed the same generator state: without a reseed, what the guest
        # draws next (its session keys, a program's random numbers) may be the same in all.
        problems.append(
            "the guest's random generator was not reseeded (no perl in the guest, or the "
            "kernel refused): what it draws next may repeat another clone's"
        )
    return problems


def _install_host_keys(hv: Hypervisor, domain: str, kinds: list[str], comment: str) -> list[str]:
    """New SSH host keys of `kinds` made here and installed in the guest; the problems."""
    try:
        keys = hostkeys.archive(kinds, comment)
    except ValueError:
        return [f"the SSH host keys were not renewed: no kind made here among {kinds}"]
    argv = ["/bin/sh", "-c", hostkeys.INSTALL_SCRIPT, "rudder-keys", "/etc/ssh", "reload"]
    result, problem = _run(hv, domain, argv, keys, "installing new SSH host keys")
    return [] if result is not None else [problem]


def _run(
    hv: Hypervisor, domain: str, argv: list[str], stdin: bytes, what: str
) -> tuple[ExecResult | None, str]:
    """One fixed program in the guest: its result and "", or None and what went wrong,
    starting with `what` ("renewing the identity")."""
    try:
        result = hv.guest_exec(
            domain, argv, stdin=stdin, timeout_s=RENEW_TIMEOUT_S, max_output=4096
        )
    except HypervisorError as exc:
        return None, f"{what} did not happen: {exc}"
    if result is None:
        return None, f"{what} did not happen (the agent stopped answering)"
    if result.timed_out or result.exit_code is None:
        return None, f"{what} did not end within {RENEW_TIMEOUT_S:.0f}s"
    if result.exit_code != 0:
        tail = result.stderr.decode(errors="replace").strip()[-200:]
        return None, f"{what} failed (exit {result.exit_code}): {tail}"
    return result, ""
