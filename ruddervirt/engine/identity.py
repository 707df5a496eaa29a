"""After a warm clone's restore: the guest's clock, and a new identity of its own.

Every warm clone resumes the very memory of one booted guest: its clock stopped when the
image was saved, and it holds the image's machine-id, SSH host keys and random pool. Through
the guest's qemu-guest-agent, :func:`renew` sets the clock to the host's (guest-set-time)
and, unless the VM opted out of generalization (``generalize: false``: its identity is meant
to be the template's), runs :data:`RENEW_SCRIPT`: a fixed program, the same for every guest
and never built from anything a user wrote, fed fresh random bytes of the host on its
standard input. The hostname is kept. Guests without an agent are left as they were; the
note returned says so, for the clone's page.

Plain Python: the clone pipeline (engine.clone.create_many) calls it for each restored VM.
"""

from __future__ import annotations

import logging
import os
import time

from ruddervirt.hypervisor.driver import Hypervisor, HypervisorError
from ruddervirt.spec import VMSpec

log = logging.getLogger(__name__)
AGENT_WAIT_S = 1.0  # a restored guest's agent is connected at once (its channel state is saved)
AGENT_PING_S = 1.0
RENEW_TIMEOUT_S = 60.0  # ssh-keygen -A on a slow TCG guest
SEED_BYTES = 64
# /bin/sh -c RENEW_SCRIPT: stdin (the host's random bytes) into the guest's pool first, and
# the kernel's generator reseeded from it (RNDRESEEDCRNG, through perl where there is one:
# mixing bytes in alone leaves the generator's key, which every clone's restored memory
# shares, in use until its next timed reseed); then a random machine-id (not
# systemd-machine-id-setup: in a VM it would take the SMBIOS UUID, which every clone's
# restored memory shares too), then new SSH host keys of the kinds there were, and the SSH
# server restarted with them. It says on stdout what it renewed.
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
if command -v ssh-keygen >/dev/null 2>&1 && ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
  rm -f /etc/ssh/ssh_host_*
  ssh-keygen -A >/dev/null || exit 3
  if command -v systemctl >/dev/null 2>&1; then
    systemctl try-restart ssh.service >/dev/null 2>&1
  else
    service ssh restart >/dev/null 2>&1
  fi
  echo host-keys
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
        problems += _renew_identity(hv, domain)
    return "; ".join(problems)[:300]


def _answers(hv: Hypervisor, domain: str) -> bool:
    try:
        return hv.agent_ping(domain, AGENT_PING_S)
    except HypervisorError:
        return False


def _renew_identity(hv: Hypervisor, domain: str) -> list[str]:
    try:
        result = hv.guest_exec(
            domain,
            ["/bin/sh", "-c", RENEW_SCRIPT],
            stdin=os.urandom(SEED_BYTES),
            timeout_s=RENEW_TIMEOUT_S,
            max_output=4096,
        )
    except HypervisorError as exc:
        return [f"the identity was not renewed: {exc}"]
    if result is None:
        return ["the identity was not renewed (the agent stopped answering)"]
    if result.exit_code != 0:
        tail = result.stderr.decode(errors="replace").strip()[-200:]
        return [f"renewing the identity failed (exit {result.exit_code}): {tail}"]
    if result.timed_out or result.exit_code is None:
        return [f"renewing the identity did not end within {RENEW_TIMEOUT_S:.0f}s"]
    renewed = result.stdout.decode(errors="replace").split()
    log.info("%s: renewed %s", domain, " ".join(renewed))
    if RESEEDED not in renewed:
        # Every clone resumed the same generator state: without a reseed, what the guest
        # draws next (its new host keys too) may be the same in all of them.
        return [
            "the guest's random generator was not reseeded (no perl in the guest, or the "
            "kernel refused): its new SSH host keys may repeat another clone's"
        ]
    return []
