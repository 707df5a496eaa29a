"""SSH to build VMs: wait for SSH, run commands with streamed output, transfer files, reboot.

Plain Python on top of paramiko (no Django). Guests are reached through loopback port forwards
only (QEMU user-mode ``hostfwd``), so targets must be loopback addresses. One module per
concept:

- ``keys``: a fresh build key pair, loading private keys, fingerprints;
- ``session``: the target, the login (key exchange, host key pinning, auth), ``SSHSession``;
- ``wait``: polling until the guest's SSH server lets us in (the banner race);
- ``exec``: running a command, its output streamed line by line;
- ``transfer``: SFTP uploads and downloads (``cat`` over exec without SFTP);
- ``reboot``: rebooting and recognising the new boot;
- ``communicator``: ``SSHCommunicator``, the engine's ``Communicator`` over all of the above.

The names below are the package's public interface.
"""

from ruddervirt.guest.communicator import OutputCallback
from ruddervirt.guest.errors import (
    Cancelled,
    CommandTimeout,
    ConnectionLost,
    GuestError,
    HostKeyMismatch,
    RebootFailed,
    TransferFailed,
)
from ruddervirt.guest.ssh.communicator import SSHCommunicator, ssh_communicator
from ruddervirt.guest.ssh.exec import CommandResult
from ruddervirt.guest.ssh.keys import fingerprint, generate_keypair, load_private_key
from ruddervirt.guest.ssh.reboot import reboot_and_wait
from ruddervirt.guest.ssh.session import HANDSHAKE_TIMEOUT, AttemptFailure, SSHSession, SSHTarget
from ruddervirt.guest.ssh.wait import (
    BANNER_TIMEOUT,
    CONNECT_TIMEOUT,
    STAGGER,
    SSHWaitTimeout,
    read_banner,
    wait_for_ssh,
)

__all__ = [
    "BANNER_TIMEOUT",
    "CONNECT_TIMEOUT",
    "HANDSHAKE_TIMEOUT",
    "STAGGER",
    "AttemptFailure",
    "Cancelled",
    "CommandResult",
    "CommandTimeout",
    "ConnectionLost",
    "GuestError",
    "HostKeyMismatch",
    "OutputCallback",
    "RebootFailed",
    "SSHCommunicator",
    "SSHSession",
    "SSHTarget",
    "SSHWaitTimeout",
    "TransferFailed",
    "fingerprint",
    "generate_keypair",
    "load_private_key",
    "read_banner",
    "reboot_and_wait",
    "ssh_communicator",
    "wait_for_ssh",
]
