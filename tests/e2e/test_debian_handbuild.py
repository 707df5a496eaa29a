"""A real Debian 12 build driven as an instructor would (issue 14, items 7a and 7c).

a) One VM: shell steps as `debian` with sudo, a file upload, a reboot, then a handbuild step
   finished through the portal's console (a login and a command typed over the console's
   WebSocket, then Continue posted as the build page does), and a last step that keeps what
   was typed. The results are read out of the captured template's disk (a whole-disk ext4,
   as the image is: tests/e2e/guestfs.py).
c) A layered build (`buildRef`) on that module: its step fails unless it sees the base's
   files, and its own template holds both the base's files and its own.

The base is built once per module (`base`, the way tests/e2e/test_clones.py shares its
build) and its rows are put back for each test, so (c) costs one Debian build, not two.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from textwrap import indent

import pytest
from django.core.management import call_command
from django.test import override_settings

from builds.models import Build, BuildLogLine, BuildStatus, BuildVM, ModuleVersion, StepStatus
from builds.runner import execute_build
from builds.services import submit_manifest
from ruddervirt.guest import ssh
from tests.browser.live import live_portal
from tests.debianimage.conftest import debian_image
from tests.e2e.guestfs import read_file
from tests.e2e.livebuild import BuildInBackground
from tests.e2e.storage import qemu_reachable_folder
from tests.e2e.test_clones import Built, restore
from tests.e2e.test_handbuild import open_console, portal_session
from tests.helpers import make_user
from tests.specs import template_disks

__all__ = ["debian_image", "live_portal"]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.debian,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
    pytest.mark.timeout(2400),  # a Debian build with a reboot and a console session, under TCG
]

IMAGE = "debian12-handbuild.qcow2"
PASSWORD = "rudder-lab"
INSTRUCTIONS = (
    f"Log in on the console as debian (password {PASSWORD}) and run:"
    " echo typed-in-the-debian-console > ~/from-console"
)
TYPED = "echo typed-in-the-debian-console > ~/from-console; sync\n"
NOTES = "Lab notes, uploaded by the build.\n"


def base_manifest(image_server, private_key: str) -> str:
    """(a)'s manifest. The build logs in with the test's key, so the test can look into the
    build VM while the handbuild step waits."""
    return f"""\
timeout: 30m
files:
  - name: key
    inline: |
{indent(private_key.strip(), " " * 6)}
  - name: notes
    inline: |
      {NOTES.strip()}
vms:
  - name: web
    source:
      url: {image_server.url(IMAGE)}
      checksum: sha256:{image_server.sha256(IMAGE)}
    resources: {{cpu: 1, memory: 1Gi}}
    disks: [{{name: root, size: 3Gi}}]
    communicator: {{sshUsername: debian, sshPrivateKeyFile: key, sshTimeout: 12m}}
    cloudInit: {{}}
    provisioners:
      - name: as debian with sudo
        type: shell
        shell:
          inline: |
            test "$(id -un)" = debian
            sudo -n mkdir -p /etc/lab
            id -un | sudo -n tee /etc/lab/step-user
            sudo -n id -un | sudo -n tee /etc/lab/sudo-user
            sudo -n cp /proc/sys/kernel/random/boot_id /etc/lab/boot-before
            echo 'debian:{PASSWORD}' | sudo -n chpasswd
      - name: upload the notes
        type: file
        file: {{fileRef: notes, destination: /tmp/notes.txt}}
      - name: install the notes
        type: shell
        shell: {{inline: "sudo -n install -m 644 /tmp/notes.txt /etc/lab/notes.txt"}}
      - name: restart
        type: reboot
      - name: after the reboot
        type: shell
        shell:
          inline: |
            sudo -n cp /proc/sys/kernel/random/boot_id /etc/lab/boot-after
            ! cmp -s /etc/lab/boot-before /etc/lab/boot-after
      - name: by hand
        type: handbuild
        stepTimeout: 15m
        handbuild:
          instructions: |
            {INSTRUCTIONS}
      - name: keep what was typed
        type: shell
        shell: {{inline: "sudo -n install -m 644 ~/from-console /etc/lab/from-console"}}
"""


CHILD = """\
timeout: 20m
vms:
  - name: app
    source: {buildRef: {name: deb-base}}
    resources: {cpu: 1, memory: 1Gi}
    communicator: {sshUsername: debian, sshTimeout: 12m}
    cloudInit: {}
    provisioners:
      - name: on top of the base
        type: shell
        shell:
          inline: |
            grep -qx typed-in-the-debian-console /etc/lab/from-console
            grep -qx 'Lab notes, uploaded by the build.' /etc/lab/notes.txt
            echo from-the-child | sudo -n tee /etc/lab/child
"""


def log_text(build: Build) -> str:
    lines = BuildLogLine.objects.filter(build=build).order_by("seq")
    return "\n".join(lines.values_list("text", flat=True))


def ssh_port(domain: str) -> int:
    """The loopback port forwarded to a running domain's SSH (its QEMU `hostfwd`)."""
    xml = subprocess.run(
        ["virsh", "-c", "qemu:///system", "dumpxml", domain],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    found = re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22\b", xml)
    assert found, f"no SSH port forward in {domain}'s XML"
    return int(found.group(1))


def typed_file_appears(port: int, private_key: str, within: float) -> bool:
    """True once ~debian/from-console exists in the build VM (looked at over SSH)."""
    target = ssh.SSHTarget(port=port, username="debian", private_key=private_key)
    deadline = time.monotonic() + within
    with ssh.wait_for_ssh(target, timeout=120) as session:
        while time.monotonic() < deadline:
            if session.run_capture("test -s ~/from-console", timeout=30).exit_status == 0:
                return True
            time.sleep(2)
    return False


def work_at_the_console(portal, user, build: Build, private_key: str) -> None:
    """What the instructions ask, typed through the portal's console WebSocket: log in as
    debian, run the command; typed again once if the file did not appear (a login prompt
    under TCG can come late)."""
    http = portal_session(portal, user)
    port = ssh_port(BuildVM.objects.get(build=build, name="web").domain_name)
    for _attempt in range(2):
        console = open_console(portal, http, build)
        console.handshake()
        # Debian's getty and login are slow under TCG: wait after each line.
        for line, settle in (("\n", 3), ("debian\n", 5), (f"{PASSWORD}\n", 15), (TYPED, 3)):
            console.type_text(line)
            time.sleep(settle)
        console.ws.close()
        if typed_file_appears(port, private_key, within=30):
            break
    response = http.post(
        portal.url(f"/builds/{build.pk}/continue/"),
        data={"vm": "web", "csrfmiddlewaretoken": http.cookies["csrftoken"]},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 302


def snapshot(build: Build, text: str, root: Path) -> Built:
    """Enough of a succeeded build to put its module back in each test (test_clones.restore)."""
    version = ModuleVersion.objects.get(build=build)
    return Built(
        manifest=text,
        build_domains=dict(BuildVM.objects.filter(build=build).values_list("name", "domain_name")),
        templates=[(t.name, t.index, t.domain_name) for t in version.vms.all()],
        spec=version.spec,
        root=root,
        storage_path=version.storage_path,
    )


@pytest.fixture(scope="module")
def base(
    django_db_setup,
    django_db_blocker,
    image_server,
    debian_image,
    live_portal,
) -> Iterator[tuple[Built, str]]:
    """(a)'s build, once per module: the snapshot of its module and its full log."""
    if not (image_server.folder / IMAGE).exists():
        (image_server.folder / IMAGE).symlink_to(debian_image)
    private_key, _ = ssh.generate_keypair("instructor")
    root = qemu_reachable_folder("debian-base")
    text = base_manifest(image_server, private_key)
    with django_db_blocker.unblock(), override_settings(RUDDERVIRT_STORAGE_ROOT=root):
        owner = make_user("deb-teacher", superuser=True)
        started = time.monotonic()
        build = submit_manifest(text=text, module_name="deb-base", user=owner, queue=False)
        running = BuildInBackground(build)
        try:
            running.wait_for_step("by hand", StepStatus.WAITING_FOR_USER, timeout=1200)
            work_at_the_console(live_portal, owner, build, private_key)
            done = running.finish(timeout=900)
        finally:
            if running.thread.is_alive():
                Build.objects.filter(pk=build.pk).update(cancel_requested=True)
                running.thread.join(timeout=180)
        log = log_text(done)
        assert done.status == BuildStatus.SUCCEEDED, f"{done.error}\n{log[-3000:]}"
        seconds = time.monotonic() - started
        print(f"\nDebian base build (handbuild at the console) in {seconds:.1f}s")
        built = snapshot(done, text, root)
        call_command("flush", interactive=False, verbosity=0)
    yield built, log
    shutil.rmtree(root, ignore_errors=True)


def test_a_debian_build_runs_sudo_steps_an_upload_a_reboot_and_a_handbuild_into_its_template(
    base, storage
):
    built, log = base
    version = restore(built, make_user("deb-teacher", superuser=True), name="deb-base")
    disk = template_disks(version)[0]
    assert read_file(disk, "/etc/lab/step-user") == b"debian\n"
    assert read_file(disk, "/etc/lab/sudo-user") == b"root\n"
    assert read_file(disk, "/etc/lab/notes.txt") == NOTES.encode()
    assert read_file(disk, "/etc/lab/boot-before") != read_file(disk, "/etc/lab/boot-after")
    assert read_file(disk, "/etc/lab/from-console") == b"typed-in-the-debian-console\n"
    assert "continue pressed by deb-teacher" in log
    assert "did not survive the step" not in log  # the build's SSH session was kept


def test_a_layered_debian_build_starts_from_the_base_template_and_adds_its_own_files(base, storage):
    built, _ = base
    owner = make_user("deb-teacher", superuser=True)
    restore(built, owner, name="deb-base")
    started = time.monotonic()
    child = execute_build(
        submit_manifest(text=CHILD, module_name="deb-child", user=owner, queue=False).pk
    )
    assert child.status == BuildStatus.SUCCEEDED, f"{child.error}\n{log_text(child)[-3000:]}"
    print(f"\nlayered Debian build in {time.monotonic() - started:.1f}s")
    disk = template_disks(ModuleVersion.objects.get(build=child))[0]
    assert read_file(disk, "/etc/lab/from-console") == b"typed-in-the-debian-console\n"
    assert read_file(disk, "/etc/lab/notes.txt") == NOTES.encode()
    assert read_file(disk, "/etc/lab/child") == b"from-the-child\n"
