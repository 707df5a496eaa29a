"""Builds of real guests under TCG: provisioners, failures, timeouts, layering, cancel."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from builds.models import Build, BuildLogLine, BuildStatus, BuildStep, ModuleVersion, StepStatus
from builds.runner import build_workdir, execute_build
from builds.services import request_cancel, submit_manifest
from tests.e2e.guestfs import fsck, read_file
from tests.helpers import make_user
from tests.specs import template_disks

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]


def manifest(
    image_server, provisioners: str, *, checksum: str | None = None, extra: str = ""
) -> str:
    digest = checksum or image_server.sha256("tiny-20250101.qcow2")
    return f"""\
timeout: 10m
files:
  - name: motd
    inline: |
      Welcome to Lab 3.
{extra}vms:
  - name: web
    source:
      url: {image_server.url("tiny-20250101.qcow2")}
      checksum: sha256:{digest}
    resources: {{cpu: 1, memory: 256Mi}}
    disks: [{{name: root, size: 1Gi}}]
    cloudInit: {{}}
    provisioners:
{provisioners}"""


def build(text: str, name: str = "lab", *, use_cache: bool = True, user=None) -> Build:
    """Submit and run ``text`` as ``user`` (default: a new instructor)."""
    user = user or make_user(f"inst-{time.monotonic_ns()}", superuser=True)
    submitted = submit_manifest(
        text=text, module_name=name, user=user, queue=False, use_cache=use_cache
    )
    return execute_build(submitted.pk)


def log_text(build: Build) -> str:
    return "\n".join(
        BuildLogLine.objects.filter(build=build).order_by("seq").values_list("text", flat=True)
    )


def template_disk(build: Build, vm: str = "web") -> str:
    return str(template_disks(ModuleVersion.objects.get(build=build), vm)[0])


FULL_RECIPE = """\
      - name: motd
        type: file
        file: {fileRef: motd, destination: /etc/motd}
      - name: provision
        type: shell
        shell:
          env: {GREETING: "hello there, it's me"}
          inline: |
            echo "greeting: $GREETING"
            echo "to stderr" >&2
            cat /proc/sys/kernel/random/boot_id > /root/boot-before
            printf '%s\\n' "$GREETING" > /root/greeting
      - name: restart
        type: reboot
      - name: after-reboot
        type: shell
        shell:
          inline: |
            cat /proc/sys/kernel/random/boot_id > /root/boot-after
            test "$(cat /root/boot-before)" != "$(cat /root/boot-after)"
            echo rebooted-ok
"""


def test_build_from_url_runs_every_provisioner_and_captures_a_template(image_server):
    done = build(manifest(image_server, FULL_RECIPE))
    assert done.status == BuildStatus.SUCCEEDED, done.error
    version = ModuleVersion.objects.get(build=done)
    assert version.number == 1
    disk = template_disk(done)
    assert read_file(disk, "/etc/motd") == b"Welcome to Lab 3.\n"
    assert read_file(disk, "/root/greeting") == b"hello there, it's me\n"
    assert read_file(disk, "/root/boot-before") != read_file(disk, "/root/boot-after")
    log = log_text(done)
    assert "greeting: hello there, it's me" in log
    assert "rebooted-ok" in log
    stderr = BuildLogLine.objects.filter(build=done, stream="stderr").values_list("text", flat=True)
    assert "to stderr" in list(stderr)
    steps = BuildStep.objects.filter(vm__build=done).order_by("index")
    assert [s.status for s in steps] == [StepStatus.SUCCEEDED] * 4
    # The build's throwaway key was removed before the disk was captured.
    assert b"ruddervirt-build" not in read_file(disk, "/root/.ssh/authorized_keys")
    # The tiny guest (busybox) was generalized too, and the log says what went.
    assert "generalizing the guest for cloning, as root" in log
    assert "removed the build's SSH key from /root/.ssh/authorized_keys" in log
    generalized = version.version_spec.vm("web").generalization
    assert generalized is not None and generalized.cloud_init
    assert not build_workdir(done.pk).exists()
    # shutdown: fast (the default): no agent in the tiny guest, so the VM was stopped right
    # after a sync; its file system has everything (above) and no error.
    assert "stopped the VM once it synced its disks (shutdown: fast)" in log
    assert "the guest powered off" not in log
    checked = fsck(disk)
    assert checked.returncode == 0, checked.stdout + checked.stderr


WRITE_LATE = """\
      - name: write
        type: shell
        shell: {inline: "echo written-last > /root/late"}
"""


def test_a_graceful_vm_powers_itself_off_and_its_template_has_what_it_wrote(image_server):
    text = manifest(image_server, WRITE_LATE).replace(
        "    cloudInit: {}\n", "    cloudInit: {}\n    shutdown: graceful\n"
    )
    done = build(text)
    assert done.status == BuildStatus.SUCCEEDED, done.error
    log = log_text(done)
    assert "the guest powered off" in log and "shutdown: fast" not in log
    disk = template_disk(done)
    assert read_file(disk, "/root/late") == b"written-last\n"
    checked = fsck(disk)
    assert checked.returncode == 0, checked.stdout + checked.stderr


BUS_OF_EACH_DISK = """\
      - name: label-disks
        type: shell
        shell:
          inline: |
            for dev in /sys/block/vd* /sys/block/sd*; do
              [ -e "$dev" ] || continue
              name=${dev##*/}
              path=$(readlink -f "$dev/device")
              case "$path" in
                */usb*) bus=usb ;;
                */ata*) bus=sata ;;
                */virtio*/host*) bus=scsi ;;
                */virtio*) bus=virtio ;;
                *) bus=unknown ;;
              esac
              echo "disk $name on $bus: $path"
              if [ "$name" != vda ]; then
                printf 'rudder-disk-on-%s\\n' "$bus" | dd of="/dev/$name" conv=notrunc 2>/dev/null
              fi
            done
            sync
"""


def test_extra_disks_are_blank_and_sit_on_the_bus_the_manifest_names(image_server, tmp_path):
    text = manifest(image_server, BUS_OF_EACH_DISK).replace(
        "disks: [{name: root, size: 1Gi}]",
        "disks: [{name: root, size: 1Gi}, {name: data-scsi, size: 8Mi, bus: scsi},"
        " {name: data-sata, size: 8Mi, bus: sata}, {name: data-usb, size: 8Mi, bus: usb}]",
    )
    done = build(text)
    assert done.status == BuildStatus.SUCCEEDED, done.error
    log = log_text(done)
    assert "disk vda on virtio" in log
    version = ModuleVersion.objects.get(build=done)
    disks = list(zip(version.version_spec.vms[0].disks, template_disks(version), strict=True))
    assert [d.bus for d, _path in disks] == ["virtio", "scsi", "sata", "usb"]
    for disk, path in disks[1:]:
        raw = tmp_path / f"{disk.bus}.raw"
        subprocess.run(
            ["qemu-img", "convert", "-O", "raw", str(path), str(raw)],
            check=True, timeout=120, capture_output=True,
        )  # fmt: skip
        assert raw.stat().st_size == 8 * 1024 * 1024
        # What the guest wrote to the disk it saw on that bus is on the manifest's disk.
        assert raw.read_bytes()[:32].split(b"\n")[0] == f"rudder-disk-on-{disk.bus}".encode()


def test_wrong_checksum_fails_before_anything_boots(image_server, hv):
    wrong = "0" * 64
    done = build(
        manifest(image_server, "      - {type: shell, shell: {inline: 'true'}}\n", checksum=wrong)
    )
    assert done.status == BuildStatus.FAILED
    assert f"expected sha256:{wrong}" in done.error
    assert f"got sha256:{image_server.sha256('tiny-20250101.qcow2')}" in done.error
    assert done.vms.get().domain_name == ""  # no domain was ever defined


def test_failing_command_names_the_step_and_exit_code_and_keeps_the_log(image_server):
    recipe = """\
      - name: first
        type: shell
        shell: {inline: "echo before-the-failure"}
      - name: boom
        type: shell
        shell: {inline: "echo about-to-fail; false; echo never-printed"}
      - name: third
        type: shell
        shell: {inline: "echo not reached"}
"""
    done = build(manifest(image_server, recipe))
    assert done.status == BuildStatus.FAILED
    assert "step 2 (boom)" in done.error and "exit" in done.error
    steps = {s.name: s for s in BuildStep.objects.filter(vm__build=done)}
    assert steps["first"].status == StepStatus.SUCCEEDED
    assert steps["boom"].status == StepStatus.FAILED and steps["boom"].exit_code == 1
    assert steps["third"].status == StepStatus.PENDING
    log = log_text(done)
    assert "before-the-failure" in log and "about-to-fail" in log
    assert "never-printed" not in log
    assert done.keep_disks_until is not None  # disks kept for inspection
    assert any(build_workdir(done.pk).rglob("disk0-root.qcow2"))


def test_step_timeout_fires(image_server):
    recipe = """\
      - name: slow
        type: shell
        stepTimeout: 3s
        shell: {inline: "sleep 120"}
"""
    started = time.monotonic()
    done = build(manifest(image_server, recipe))
    assert done.status == BuildStatus.FAILED
    assert "timed out after 3s (stepTimeout)" in done.error
    assert time.monotonic() - started < 100


def test_layered_build_sees_its_parents_files(image_server):
    parent = build(
        manifest(
            image_server,
            "      - {name: mark, type: shell,"
            " shell: {inline: 'echo from-parent > /root/parent.txt'}}\n",
        ),
        name="base",
    )
    assert parent.status == BuildStatus.SUCCEEDED, parent.error
    child_text = """\
timeout: 10m
vms:
  - name: app
    source: {buildRef: {name: base}}
    resources: {cpu: 1, memory: 256Mi}
    cloudInit: {}
    provisioners:
      - name: check
        type: shell
        shell: {inline: "grep from-parent /root/parent.txt && echo from-child > /root/child.txt"}
"""
    child = build(child_text, name="app")
    assert child.status == BuildStatus.SUCCEEDED, child.error
    disk = template_disk(child, "app")
    assert read_file(disk, "/root/parent.txt") == b"from-parent\n"
    assert read_file(disk, "/root/child.txt") == b"from-child\n"


def test_build_ref_to_a_module_without_a_succeeded_build_fails_at_once(image_server):
    text = "vms:\n  - name: app\n    source: {buildRef: {name: nothing-here}}\n"
    done = build(text, name="orphan")
    assert done.status == BuildStatus.FAILED
    assert "nothing-here" in done.error and "no such module" in done.error


def test_the_same_manifest_built_twice_gives_the_same_files(image_server):
    recipe = (
        "      - {name: make, type: shell, shell: {inline: 'mkdir -p /srv/app"
        " && echo v1 > /srv/app/version && cp /etc/os-release /srv/app/'}}\n"
    )
    text = manifest(image_server, recipe)
    first = build(text, name="twice")
    second = build(text, name="twice", use_cache=False)  # from the source again, every step
    assert first.status == BuildStatus.SUCCEEDED, first.error
    assert second.status == BuildStatus.SUCCEEDED, second.error
    steps = BuildStep.objects.filter(vm__build=second)
    assert [s.status for s in steps] == [StepStatus.SUCCEEDED], "the second build reused a step"
    assert ModuleVersion.objects.get(build=second).number == 2
    for path in ("/srv/app/version", "/srv/app/os-release", "/etc/hostname"):
        assert read_file(template_disk(first), path) == read_file(template_disk(second), path)


def test_cancel_stops_a_running_build_and_cleans_up(image_server, hv):
    recipe = (
        "      - {name: forever, type: shell,"
        " shell: {inline: 'echo started-sleeping; sleep 600'}}\n"
    )
    user = make_user("canceller", superuser=True)
    submitted = submit_manifest(
        text=manifest(image_server, recipe), module_name="cancel-me", user=user, queue=False
    )
    runner = threading.Thread(target=execute_build, args=(submitted.pk,))
    runner.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if BuildStep.objects.filter(vm__build=submitted, status=StepStatus.RUNNING).exists():
            break
        time.sleep(0.2)
    else:
        pytest.fail("the step never started")
    asked = time.monotonic()
    request_cancel(Build.objects.get(pk=submitted.pk), user=user)
    runner.join(timeout=60)
    assert not runner.is_alive()
    assert time.monotonic() - asked < 15
    submitted.refresh_from_db()
    assert submitted.status == BuildStatus.CANCELLED
    assert not build_workdir(submitted.pk).exists()
    assert not [d for d in hv.list_domains("") if f"b{submitted.pk}-" in d.name]


def test_ssh_password_without_a_seed(image_server):
    text = f"""\
vms:
  - name: web
    source:
      url: {image_server.url("tiny-20250101.qcow2")}
      checksum: sha256:{image_server.sha256("tiny-20250101.qcow2")}
    resources: {{cpu: 1, memory: 256Mi}}
    communicator: {{sshPassword: rudder}}
    provisioners:
      - {{name: who, type: shell, shell: {{inline: "id -u; echo logged-in-with-password"}}}}
"""
    done = build(text, name="password")
    assert done.status == BuildStatus.SUCCEEDED, done.error
    assert "logged-in-with-password" in log_text(done)


def test_ssh_private_key_file_is_used_and_kept(image_server):
    from ruddervirt.guest.ssh import generate_keypair

    private, public = generate_keypair(comment="instructor-key")
    indented = "\n".join("      " + line for line in private.strip().splitlines())
    extra = f"  - name: mykey\n    inline: |\n{indented}\n"
    text = manifest(
        image_server,
        "      - {name: hi, type: shell, shell: {inline: 'echo key-ok'}}\n",
        extra=extra,
    )
    text = text.replace(
        "    cloudInit: {}\n", "    cloudInit: {}\n    communicator: {sshPrivateKeyFile: mykey}\n"
    )
    done = build(text, name="keyfile")
    assert done.status == BuildStatus.SUCCEEDED, done.error
    keys = read_file(template_disk(done), "/root/.ssh/authorized_keys").decode()
    assert public.split()[1] in keys  # the instructor's key stays: clones use it
    assert "ruddervirt-build" not in keys


def test_a_raw_cloud_image_is_accepted(image_server, tmp_path):
    import subprocess

    raw = tmp_path / "tiny.raw"
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            str(image_server.folder / "tiny-20250101.qcow2"),
            str(raw),
        ],
        check=True,
        timeout=120,
    )
    image_server.put("tiny-20250101.raw", raw.read_bytes())
    text = manifest(
        image_server,
        "      - {name: hi, type: shell, shell: {inline: 'echo raw-ok > /root/raw'}}\n",
    )
    text = text.replace("tiny-20250101.qcow2", "tiny-20250101.raw").replace(
        image_server.sha256("tiny-20250101.qcow2"), image_server.sha256("tiny-20250101.raw")
    )
    done = build(text, name="raw")
    assert done.status == BuildStatus.SUCCEEDED, done.error
    assert read_file(template_disk(done), "/root/raw") == b"raw-ok\n"


def test_kept_disks_of_a_failed_build_go_when_their_time_is_up(image_server, hv):
    from datetime import timedelta

    from django.utils import timezone

    from jobs.reconcile import reconcile

    done = build(
        manifest(image_server, "      - {name: nope, type: shell, shell: {inline: 'exit 2'}}\n"),
        name="expire",
    )
    assert done.status == BuildStatus.FAILED and build_workdir(done.pk).exists()
    reconcile(hv)
    assert build_workdir(done.pk).exists()  # still within the inspection time
    Build.objects.filter(pk=done.pk).update(keep_disks_until=timezone.now() - timedelta(seconds=1))
    actions = reconcile(hv)
    assert f"build {done.pk}: removed the kept disks" in actions
    assert not build_workdir(done.pk).exists()


def test_a_source_image_backed_by_a_host_file_fails_the_build_and_boots_nothing(
    image_server, tmp_path, storage
):
    evil = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw",
         str(evil), "64M"],
        check=True, timeout=60,
    )  # fmt: skip
    image_server.put("evil-20250101.qcow2", evil.read_bytes())
    text = manifest(image_server, "      - {name: leak, type: shell, shell: {inline: 'true'}}\n")
    text = text.replace("tiny-20250101.qcow2", "evil-20250101.qcow2").replace(
        image_server.sha256("tiny-20250101.qcow2"), image_server.sha256("evil-20250101.qcow2")
    )
    done = build(text, name="evil")
    assert done.status == BuildStatus.FAILED
    reason = "refused: it has a backing file ('/etc/shadow'): source images must stand alone"
    assert reason in done.error and image_server.url("evil-20250101.qcow2") in done.error
    assert f"build failed: source image {image_server.url('evil-20250101.qcow2')} " in log_text(
        done
    )
    assert reason in log_text(done)
    assert done.vms.get().domain_name == ""  # no domain was ever defined
    cache = storage / "cache" / "images"
    assert [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []
