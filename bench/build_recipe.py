"""The reference recipe of the build benchmark, written for both tools, on two images.

One VM: boot, a shell step, a 1 MiB file upload, a shell step that checksums the file;
shut down and capture the disk. Two images (``GUESTS``): the tiny test image (1 vCPU,
256 MiB, 1 GiB disk, logged into as root; its SSH server is dropbear) and the Debian 12
test image, shaped like Debian's genericcloud image (1 vCPU, 1 GiB, 2 GiB disk, logged into
as ``debian``, whose home takes the upload; OpenSSH, systemd, real cloud-init). The same
two scripts run under both tools and print ``RVBENCH`` marker lines with the guest's own
clock (``/proc/uptime``), so the commands' own run time is measured inside the guest, and
so is the moment the guest's SSH server started. Both tools log in with a key the NoCloud
seed installs: RudderVirt with its own build key, Packer with the benchmark's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ruddervirt.guest.ssh import generate_keypair

BLOB_SIZE = 1024 * 1024
VM_NAME = "bench"
GUEST_HZ = 100  # Linux USER_HZ: /proc/<pid>/stat start times are in 1/100 s


@dataclass(frozen=True)
class Guest:
    """What differs between the images: the login, the SSH server, the VM's size."""

    name: str  # "tiny" or "debian" (bench/build_bench.py --image)
    user: str  # the SSH user of both tools
    home: str  # that user's home: the hello file and the upload go there
    sshd: str  # the SSH server's process name (/proc/<pid>/stat's comm)
    memory_mib: int
    disk_mib: int
    ssh_timeout_m: int  # both tools' wait for SSH
    build_timeout_m: int  # RudderVirt's build timeout

    @property
    def blob_dest(self) -> str:
        return f"{self.home}/blob.bin"

    @property
    def shutdown_command(self) -> str:
        """Packer's (RudderVirt shuts down on its own: agent, then ACPI)."""
        return "poweroff" if self.user == "root" else "sudo -n poweroff"

    @property
    def fast_shutdown_command(self) -> str:
        """Packer-lean's: flush, then power off without stopping services."""
        if self.user == "root":
            return "sync; poweroff -f"
        return "sudo -n sh -c 'sync; poweroff -f'"


TINY = Guest("tiny", "root", "/root", "dropbear", 256, 1024, 5, 15)
DEBIAN = Guest("debian", "debian", "/home/debian", "sshd", 1024, 2048, 10, 30)
GUESTS = {guest.name: guest for guest in (TINY, DEBIAN)}


def hello_script(guest: Guest) -> str:
    """Step 1. The work is the two lines between t0 and t1; the rest is measurement: the
    guest uptime now, and the uptime at which the SSH listener (the one whose parent is
    init) started (field 22 of /proc/<pid>/stat, in ticks). No "{{" anywhere: Packer would
    read it as a template."""
    return f"""\
t0=$(cut -d' ' -f1 /proc/uptime)
echo "hello from $(hostname)" | tee {guest.home}/hello.txt
uname -r
t1=$(cut -d' ' -f1 /proc/uptime)
sshd=
for f in /proc/[0-9]*/stat; do
  read -r pid comm state ppid rest 2>/dev/null <"$f" || continue
  if [ "$comm" = "({guest.sshd})" ] && [ "$ppid" = 1 ]; then
    set -- $rest; shift 17; sshd=$1; break
  fi
done
echo "RVBENCH step=1 start=$t0 end=$t1 now=$(cut -d' ' -f1 /proc/uptime) sshd_ticks=$sshd"
"""


def checksum_script(guest: Guest) -> str:
    """Step 3: the upload's sha256, timed by the guest."""
    return f"""\
t0=$(cut -d' ' -f1 /proc/uptime)
sha256sum {guest.blob_dest}
t1=$(cut -d' ' -f1 /proc/uptime)
echo "RVBENCH step=3 start=$t0 end=$t1"
"""


_MARK = re.compile(r"RVBENCH step=(\d) (.*)$")


@dataclass(frozen=True)
class Recipe:
    guest: Guest
    image: Path  # the image, copied into the benchmark's temporary folder
    image_sha256: str
    blob: Path
    blob_sha256: str
    key_file: Path  # Packer's SSH private key
    public_key: str  # ... and its public half, for the seed

    @property
    def image_url(self) -> str:
        return self.image.resolve().as_uri()

    @property
    def blob_url(self) -> str:
        return self.blob.resolve().as_uri()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def make_recipe(guest: Guest, image: Path, folder: Path) -> Recipe:
    """Copy ``image`` into ``folder``; write a fresh 1 MiB random blob and an SSH key pair
    (for Packer) beside it."""
    copy = folder / f"{guest.name}.qcow2"
    shutil.copyfile(image, copy)
    blob = folder / "blob.bin"
    blob.write_bytes(os.urandom(BLOB_SIZE))
    private, public = generate_keypair(comment="rvbench-packer")
    key_file = folder / "packer-key"
    key_file.touch(mode=0o600)
    key_file.write_text(private)
    return Recipe(guest, copy, sha256_file(copy), blob, sha256_file(blob), key_file, public)


def _indented(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line + "\n" for line in text.splitlines())


def manifest_text(recipe: Recipe) -> str:
    """The recipe as a RudderVirt manifest (the SSH key reaches the guest via the seed)."""
    guest = recipe.guest
    communicator = (
        ""
        if guest.user == "root"
        else f"    communicator: {{sshUsername: {guest.user}, "
        f"sshTimeout: {guest.ssh_timeout_m}m}}\n"
    )
    return (
        f"timeout: {guest.build_timeout_m}m\n"
        "files:\n"
        "  - name: blob\n"
        f"    url: {recipe.blob_url}\n"
        f"    checksum: sha256:{recipe.blob_sha256}\n"
        "vms:\n"
        f"  - name: {VM_NAME}\n"
        "    source:\n"
        f"      url: {recipe.image_url}\n"
        f"      checksum: sha256:{recipe.image_sha256}\n"
        f"    resources: {{cpu: 1, memory: {guest.memory_mib}Mi}}\n"
        f"    disks: [{{name: root, size: {guest.disk_mib}Mi}}]\n"
        + communicator
        + "    cloudInit: {}\n"
        "    provisioners:\n"
        "      - name: hello\n"
        "        type: shell\n"
        "        shell:\n"
        "          inline: |\n" + _indented(hello_script(guest), 12) + "      - name: upload\n"
        "        type: file\n"
        f"        file: {{fileRef: blob, destination: {guest.blob_dest}}}\n"
        "      - name: checksum\n"
        "        type: shell\n"
        "        shell:\n"
        "          inline: |\n" + _indented(checksum_script(guest), 12)
    )


def packer_template(
    recipe: Recipe, output_dir: Path, serial_log: Path, seed: Path, *, lean: bool = False
) -> str:
    """The recipe as a Packer 1.6.6 JSON template for the QEMU builder.

    Network safety: the default netdev (``user,id=user.0,hostfwd=tcp::PORT-:22``: all
    interfaces, a route out) is replaced by a restricted one forwarding from loopback only;
    the NIC is Packer's own ``virtio-net,netdev=user.0``. VNC listens on 127.0.0.1. As in
    RudderVirt's domains, the guest gets QEMU's "max" CPU model and a virtio RNG, a NoCloud
    ``seed`` CD-ROM (hostname and Packer's public key: bench.build_packer), and its serial
    console goes to a file (``serial_log``, see bench.build_watch).

    ``lean``: Packer as a user who tunes it for speed would run it (issue 19's reference):
    QEMU's default CPU model and devices, no RNG, the seed on a virtio disk, ``boot_wait``
    1 s, and a shutdown command that syncs and powers off at once (``sync; poweroff -f``).
    Same network restrictions, same serial console file.
    """
    guest = recipe.guest
    if lean:
        devices = [
            ["-device", "virtio-net,netdev=user.0"],
            # -blockdev, not -drive: a -drive in qemuargs would replace Packer's own disk.
            [
                "-blockdev",
                f"driver=raw,node-name=seed,read-only=on,file.driver=file,file.filename={seed}",
            ],
            ["-device", "virtio-blk-pci,drive=seed"],
        ]
    else:
        devices = [
            # The CPU model and RNG of RudderVirt's TCG domains (<cpu mode="maximum">,
            # virtio-rng from the host's /dev/urandom), and a seed as they have: the guest
            # then boots the same way under both tools. Any -device replaces Packer's
            # default ones: its NIC is listed again.
            ["-cpu", "max"],
            ["-device", "virtio-net,netdev=user.0"],
            ["-object", "rng-random,id=rng0,filename=/dev/urandom"],
            ["-device", "virtio-rng-pci,rng=rng0"],
            ["-cdrom", str(seed)],
        ]
    builder = {
        "type": "qemu",
        "iso_url": recipe.image_url,
        "iso_checksum": f"sha256:{recipe.image_sha256}",
        "disk_image": True,
        "disk_size": f"{guest.disk_mib}M",
        "format": "qcow2",
        "accelerator": "tcg",
        "cpus": 1,
        "memory": guest.memory_mib,
        "headless": True,
        "vnc_bind_address": "127.0.0.1",
        # Packer's default is 10 s, spent before it even looks for SSH; "1ms" removes it.
        "boot_wait": "1s" if lean else "1ms",
        "communicator": "ssh",
        "ssh_username": guest.user,
        "ssh_private_key_file": str(recipe.key_file),
        "ssh_timeout": f"{guest.ssh_timeout_m}m",
        "ssh_file_transfer_method": "sftp",  # as RudderVirt's upload
        "qemuargs": [
            [
                "-netdev",
                "user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22",
            ],
            *devices,
            ["-serial", f"file:{serial_log}"],
        ],
        "shutdown_command": guest.fast_shutdown_command if lean else guest.shutdown_command,
        "output_directory": str(output_dir),
        "vm_name": f"{VM_NAME}.qcow2",
    }
    provisioners = [
        {"type": "shell", "inline": hello_script(guest).splitlines()},
        {"type": "file", "source": str(recipe.blob), "destination": guest.blob_dest},
        {"type": "shell", "inline": checksum_script(guest).splitlines()},
    ]
    return json.dumps({"builders": [builder], "provisioners": provisioners}, indent=2)


@dataclass(frozen=True)
class GuestTiming:
    """What the guest measured itself (seconds)."""

    commands_s: float  # the two scripts' work (t0..t1 of steps 1 and 3)
    sshd_age_s: float | None  # how long the SSH server had run when step 1 printed
    step1_marker_t: float  # host monotonic time at which step 1's marker line arrived
    checksum_ok: bool


def guest_timing(lines: list[tuple[float, str]], recipe: Recipe) -> GuestTiming:
    """Read the RVBENCH marker lines (host arrival time, text) of one run.

    Raises ValueError when a marker is missing (a step did not run as written)."""
    marks: dict[str, tuple[float, dict[str, str]]] = {}
    checksum_ok = False
    for t, text in lines:
        if recipe.blob_sha256 in text and recipe.guest.blob_dest in text:
            checksum_ok = True
        found = _MARK.search(text)
        if found:
            fields = dict(item.split("=", 1) for item in found.group(2).split())
            marks[found.group(1)] = (t, fields)
    if "1" not in marks or "3" not in marks:
        raise ValueError(f"missing RVBENCH marker lines (got steps {sorted(marks)})")
    t1, one = marks["1"]
    _t3, three = marks["3"]
    commands = (float(one["end"]) - float(one["start"])) + (
        float(three["end"]) - float(three["start"])
    )
    sshd_age = None
    if one.get("sshd_ticks"):
        sshd_age = float(one["now"]) - int(one["sshd_ticks"]) / GUEST_HZ
    return GuestTiming(commands, sshd_age, t1, checksum_ok)
