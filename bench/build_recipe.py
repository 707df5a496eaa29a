"""The reference recipe of the build benchmark, written for both tools.

One VM from the tiny test image (1 vCPU, 256 MiB, 1 GiB disk): boot, a shell step, a
1 MiB file upload, a shell step that checksums the file; shut down and capture the disk.
The same two scripts run under both tools and print ``RVBENCH`` marker lines with the
guest's own clock (``/proc/uptime``), so the commands' own run time is measured inside
the guest, and so is the moment the guest's SSH server (dropbear) started.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

BLOB_SIZE = 1024 * 1024
BLOB_DEST = "/root/blob.bin"
VM_NAME = "bench"
GUEST_HZ = 100  # Linux USER_HZ: /proc/<pid>/stat start times are in 1/100 s
PACKER_ROOT_PASSWORD = "rudder"  # noqa: S105 - the tiny test image's documented password

# Step 1. The work is the two lines between t0 and t1; the rest is measurement: the guest
# uptime now, and the uptime at which the dropbear listener (the one whose parent is init)
# started (field 22 of /proc/<pid>/stat, in ticks). No "{{" anywhere: Packer would read it
# as a template.
HELLO_SCRIPT = """\
t0=$(cut -d' ' -f1 /proc/uptime)
echo "hello from $(hostname)" | tee /root/hello.txt
uname -r
t1=$(cut -d' ' -f1 /proc/uptime)
sshd=
for f in /proc/[0-9]*/stat; do
  read -r pid comm state ppid rest 2>/dev/null <"$f" || continue
  if [ "$comm" = "(dropbear)" ] && [ "$ppid" = 1 ]; then set -- $rest; shift 17; sshd=$1; break; fi
done
echo "RVBENCH step=1 start=$t0 end=$t1 now=$(cut -d' ' -f1 /proc/uptime) sshd_ticks=$sshd"
"""

CHECKSUM_SCRIPT = f"""\
t0=$(cut -d' ' -f1 /proc/uptime)
sha256sum {BLOB_DEST}
t1=$(cut -d' ' -f1 /proc/uptime)
echo "RVBENCH step=3 start=$t0 end=$t1"
"""

_MARK = re.compile(r"RVBENCH step=(\d) (.*)$")


@dataclass(frozen=True)
class Recipe:
    image: Path  # the tiny image, copied into the benchmark's temporary folder
    image_sha256: str
    blob: Path
    blob_sha256: str

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


def make_recipe(image: Path, folder: Path) -> Recipe:
    """Copy ``image`` into ``folder`` and write a fresh 1 MiB random blob beside it."""
    copy = folder / "tiny.qcow2"
    copy.write_bytes(image.read_bytes())
    blob = folder / "blob.bin"
    blob.write_bytes(os.urandom(BLOB_SIZE))
    return Recipe(copy, sha256_file(copy), blob, sha256_file(blob))


def _indented(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line + "\n" for line in text.splitlines())


def manifest_text(recipe: Recipe) -> str:
    """The recipe as a RudderVirt manifest (the SSH key reaches the guest via the seed)."""
    return (
        "timeout: 15m\n"
        "files:\n"
        "  - name: blob\n"
        f"    url: {recipe.blob_url}\n"
        f"    checksum: sha256:{recipe.blob_sha256}\n"
        "vms:\n"
        f"  - name: {VM_NAME}\n"
        "    source:\n"
        f"      url: {recipe.image_url}\n"
        f"      checksum: sha256:{recipe.image_sha256}\n"
        "    resources: {cpu: 1, memory: 256Mi}\n"
        "    disks: [{name: root, size: 1Gi}]\n"
        "    cloudInit: {}\n"
        "    provisioners:\n"
        "      - name: hello\n"
        "        type: shell\n"
        "        shell:\n"
        "          inline: |\n" + _indented(HELLO_SCRIPT, 12) + "      - name: upload\n"
        "        type: file\n"
        f"        file: {{fileRef: blob, destination: {BLOB_DEST}}}\n"
        "      - name: checksum\n"
        "        type: shell\n"
        "        shell:\n"
        "          inline: |\n" + _indented(CHECKSUM_SCRIPT, 12)
    )


def packer_template(recipe: Recipe, output_dir: Path, serial_log: Path, seed: Path) -> str:
    """The recipe as a Packer 1.6.6 JSON template for the QEMU builder.

    Network safety: the default netdev (``user,id=user.0,hostfwd=tcp::PORT-:22``: all
    interfaces, a route out) is replaced by a restricted one forwarding from loopback only;
    the NIC is Packer's own ``virtio-net,netdev=user.0``. VNC listens on 127.0.0.1. As in
    RudderVirt's domains, the guest gets QEMU's "max" CPU model and a virtio RNG, a NoCloud
    ``seed`` CD-ROM (hostname only: Packer logs in with the image's root password), and its
    serial console goes to a file (``serial_log``, see bench.build_watch).
    """
    builder = {
        "type": "qemu",
        "iso_url": recipe.image_url,
        "iso_checksum": f"sha256:{recipe.image_sha256}",
        "disk_image": True,
        "disk_size": "1024M",
        "format": "qcow2",
        "accelerator": "tcg",
        "cpus": 1,
        "memory": 256,
        "headless": True,
        "vnc_bind_address": "127.0.0.1",
        # Packer's default is 10 s, spent before it even looks for SSH; "1ms" removes it.
        "boot_wait": "1ms",
        "communicator": "ssh",
        "ssh_username": "root",
        "ssh_password": PACKER_ROOT_PASSWORD,
        "ssh_timeout": "5m",
        "ssh_file_transfer_method": "sftp",  # as RudderVirt's upload
        "qemuargs": [
            [
                "-netdev",
                "user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22",
            ],
            # The CPU model and RNG of RudderVirt's TCG domains (<cpu mode="maximum">,
            # virtio-rng from the host's /dev/urandom), and a seed as they have: the guest
            # then boots the same way under both tools. Any -device replaces Packer's
            # default ones: its NIC is listed again.
            ["-cpu", "max"],
            ["-device", "virtio-net,netdev=user.0"],
            ["-object", "rng-random,id=rng0,filename=/dev/urandom"],
            ["-device", "virtio-rng-pci,rng=rng0"],
            ["-cdrom", str(seed)],
            ["-serial", f"file:{serial_log}"],
        ],
        "shutdown_command": "poweroff",
        "output_directory": str(output_dir),
        "vm_name": f"{VM_NAME}.qcow2",
    }
    provisioners = [
        {"type": "shell", "inline": HELLO_SCRIPT.splitlines()},
        {"type": "file", "source": str(recipe.blob), "destination": BLOB_DEST},
        {"type": "shell", "inline": CHECKSUM_SCRIPT.splitlines()},
    ]
    return json.dumps({"builders": [builder], "provisioners": provisioners}, indent=2)


@dataclass(frozen=True)
class GuestTiming:
    """What the guest measured itself (seconds)."""

    commands_s: float  # the two scripts' work (t0..t1 of steps 1 and 3)
    sshd_age_s: float | None  # how long dropbear had been running when step 1 printed
    step1_marker_t: float  # host monotonic time at which step 1's marker line arrived
    checksum_ok: bool


def guest_timing(lines: list[tuple[float, str]], blob_sha256: str) -> GuestTiming:
    """Read the RVBENCH marker lines (host arrival time, text) of one run.

    Raises ValueError when a marker is missing (a step did not run as written)."""
    marks: dict[str, tuple[float, dict[str, str]]] = {}
    checksum_ok = False
    for t, text in lines:
        if blob_sha256 in text and BLOB_DEST in text:
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
