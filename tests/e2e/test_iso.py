"""ISO installs of real guests under TCG: the tiny installer ISO (tools/testimage/installer.py)
waits at its boot prompt, the build types the install command, the installer takes its answers
from the build's HTTP server (or a floppy), installs onto the blank disk and reboots; the build
provisions over SSH and captures; the captured disk then boots on its own."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from django.conf import settings
from selenium.webdriver.common.by import By

from accounts.roles import STUDENTS
from builds.models import Build, BuildLogLine, BuildStatus, ModuleVersion
from builds.runner import execute_build
from builds.services import submit_manifest
from clones import services as clone_services
from clones.models import Class, ClassMembership, Clone, CloneStatus
from clones.runner import run_inline
from ruddervirt.engine import efi
from ruddervirt.engine.vm import free_loopback_port
from ruddervirt.guest import ssh
from ruddervirt.hypervisor import disks as qimg
from ruddervirt.hypervisor.specs import DiskSpec, DomainSpec, MgmtForward
from ruddervirt.spec import nvram_file
from tests.browser.live import browser, live_portal  # noqa: F401  (fixtures)
from tests.browser.screens import canvas_stats, console_state, save_screenshot
from tests.e2e.conftest import IMAGE_CACHE
from tests.e2e.livebuild import in_background, until  # noqa: F401  (fixture)
from tests.e2e.ovmfvars import monotonic_count
from tests.helpers import make_user
from tests.specs import template_disks

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]

ISO_NAME = "tiny-installer-20250101.iso"
KEY_COMMENT = "from-the-answer-file"


@pytest.fixture(scope="session")
def installer_iso(image_server) -> tuple[str, str]:
    """(URL, sha256) of the installer ISO, served on loopback like any ISO download."""
    from tools.testimage.installer import build_installer_iso, iso_info

    iso = build_installer_iso(IMAGE_CACHE)
    shutil.copyfile(iso, image_server.folder / ISO_NAME)
    return image_server.url(ISO_NAME), str(iso_info(iso)["sha256"])


@pytest.fixture(scope="module")
def keypair() -> tuple[str, str]:
    return ssh.generate_keypair(comment=KEY_COMMENT)


def manifest(
    iso: tuple[str, str],
    keypair: tuple[str, str],
    *,
    boot: str,
    checksum: str | None = None,
    memory: str = "256Mi",
    extra_vm: str = "",
) -> str:
    private, public = keypair
    answers = (
        f"# answers for the tiny installer\nhostname=installed-web\nssh_authorized_key={public}\n"
    )
    url, digest = iso
    return f"""\
timeout: 20m
files:
  - name: answers
    inline: |
{textwrap.indent(answers, " " * 6)}  - name: install-key
    inline: |
{textwrap.indent(private, " " * 6)}httpDirectory:
  files: [{{name: answers}}]
vms:
  - name: web
    source: {{blank: true}}
    isos: [{{url: "{url}", checksum: "sha256:{checksum or digest}"}}]
    resources: {{cpu: 1, memory: {memory}}}
    disks: [{{name: root, size: 256Mi}}]
    communicator: {{sshPrivateKeyFile: install-key, sshTimeout: 10m}}
    bootCommand: ["{boot}"]
{extra_vm}    provisioners:
      - name: check-the-install
        type: shell
        shell:
          inline: |
            cat /etc/installed-by-ruddervirt
            hostname
            grep -c 'installer: ' /var/log/installer.log
            echo provisioned-after-install > /root/provisioned
"""


def build(text: str) -> Build:
    user = make_user(f"inst-{time.monotonic_ns()}", superuser=True)
    submitted = submit_manifest(text=text, module_name="iso-lab", user=user, queue=False)
    return execute_build(submitted.pk)


def log_lines(done: Build) -> list[str]:
    rows = BuildLogLine.objects.filter(build=done).order_by("seq").values_list("vm", "text")
    return [f"[{vm or 'build'}] {text}" for vm, text in rows]


def excerpt(lines: list[str]) -> str:
    wanted = ("HTTP server", "ISO 1", "floppy", "boot command", "http:", "SSH is up", "NVRAM")
    return "\n".join(line for line in lines if any(w in line for w in wanted))


def boot_disk_alone(hv, storage: Path, version: ModuleVersion, private_key: str) -> str:
    """Boot a copy of a BIOS template's disk with nothing else attached (no ISO, no floppy,
    no seed) and return what the guest says about itself."""
    folder = storage / "alone"
    folder.mkdir()
    disk = folder / "root.qcow2"
    qimg.create_overlay(template_disks(version)[0], disk, backing_format="qcow2")
    name = f"{settings.RUDDERVIRT_NAME_PREFIX}iso-alone"
    port = free_loopback_port()
    hv.define(
        DomainSpec(
            name=name,
            vcpus=1,
            memory_bytes=version.version_spec.vm("web").memory,
            domain_type=settings.RUDDERVIRT_DOMAIN_TYPE,
            disks=(DiskSpec(path=disk, target_bus="virtio", boot_order=1),),
            mgmt=MgmtForward(host_port=port),
            serial_log=folder / "serial.log",
            metadata={"kind": "test"},
        )
    )
    try:
        hv.start(name)
        return what_the_guest_says(port, private_key)
    finally:
        hv.destroy(name)
        hv.undefine(name)


def what_the_guest_says(port: int, private_key: str) -> str:
    target = ssh.SSHTarget(port=port, username="root", private_key=private_key)
    session = ssh.wait_for_ssh(target, timeout=300)
    try:
        result = session.run_capture("cat /etc/installed-by-ruddervirt /root/provisioned")
    finally:
        session.close()
    return result.stdout.decode()


def domain_xml(name: str) -> str:
    """What libvirt says the domain is (its live XML)."""
    uri = settings.RUDDERVIRT_LIBVIRT_URI
    done = subprocess.run(["virsh", "-c", uri, "dumpxml", name], check=True,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    return done.stdout


def launch_one_clone(version: ModuleVersion) -> Clone:
    """A real clone of `version` for one student, made the way the portal makes them."""
    owner = version.build.requested_by
    klass = Class.objects.create(name="UEFI lab", owner=owner)
    ClassMembership.objects.create(klass=klass, student=make_user("uefi-student", STUDENTS))
    [clone] = clone_services.launch(klass, version, by=owner, queue=False)
    run_inline([clone.pk], "provision")
    clone.refresh_from_db()
    assert clone.status == CloneStatus.RUNNING, clone.error
    return clone


def version_of(done: Build) -> ModuleVersion:
    return ModuleVersion.objects.get(build=done)


def test_an_iso_install_takes_its_answers_over_http_and_the_result_boots_alone(
    installer_iso, keypair, hv, storage
):
    boot = "<wait15>install url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/answers<enter>"
    done = build(manifest(installer_iso, keypair, boot=boot))
    lines = log_lines(done)
    print("\n" + excerpt(lines))
    assert done.status == BuildStatus.SUCCEEDED, done.error + "\n" + "\n".join(lines[-40:])
    log = "\n".join(lines)
    typed = re.search(
        r"boot command: typing install url=http://(10\.77\.0\.1):(\d+)/answers<enter>", log
    )
    assert typed, "the typed boot command (with the substituted address) is in the log"
    assert re.search(r"\[web\] http: 10\.77\.0\.\d+ \(web\) GET /answers -> 200, \d+ bytes", log)
    assert f"HTTP server for the build's guests on {typed[1]}:{typed[2]}" in log
    assert "firmware=bios source=url disk=/dev/vda" in log
    assert "installed-web" in log
    version = version_of(done)
    assert not version.version_spec.vm("web").firmware.uefi
    said = boot_disk_alone(hv, storage, version, keypair[0])
    assert "firmware=bios source=url" in said and "provisioned-after-install" in said


def test_a_uefi_iso_install_reads_a_floppy_and_its_clone_boots_with_the_kept_nvram(
    installer_iso, keypair, hv, storage
):
    # GRUB's EFI loader runs out of memory loading the kernel in 256 MiB under OVMF.
    extra = "    efiFirmware: {}\n    floppy: {files: [{name: answers}]}\n"
    done = build(
        manifest(installer_iso, keypair, boot="<wait40>install floppy<enter>", memory="512Mi",
                 extra_vm=extra)
    )  # fmt: skip
    lines = log_lines(done)
    print("\n" + excerpt(lines))
    assert done.status == BuildStatus.SUCCEEDED, done.error + "\n" + "\n".join(lines[-40:])
    log = "\n".join(lines)
    assert "boot command: typing install floppy<enter>" in log
    assert "floppy attached with answers" in log
    assert "firmware=uefi source=floppy disk=/dev/vda" in log
    assert " GET /answers" not in log  # the answers came from the floppy
    version = version_of(done)
    firmware = version.version_spec.vm("web").firmware
    nvram = nvram_file(version.version_spec.vm("web"), storage)
    assert firmware.secure_boot is False and nvram.is_file()
    assert nvram.read_bytes() != efi.PLAIN.vars_template.read_bytes()  # OVMF wrote boot entries
    captured = monotonic_count(nvram)  # OVMF counts every boot: installer, installed system
    assert captured >= 2

    clone = launch_one_clone(version)
    vm = clone.vms.get(name="web")
    xml = ET.fromstring(domain_xml(vm.domain_name))
    own = Path(xml.findtext("os/nvram"))
    assert xml.findtext("os/loader") == str(firmware.loader) == str(efi.PLAIN.loader)
    assert own != nvram and own.is_relative_to(Path(clone.storage_path))
    said = what_the_guest_says(vm.mgmt_port, keypair[0])
    assert "firmware=uefi source=floppy" in said and "provisioned-after-install" in said
    # The clone's firmware went on from the build's variables (its boot counter continued),
    # not from OVMF's pristine ones (it would be 1); the template's own NVRAM is untouched.
    assert monotonic_count(own) > captured
    assert efi.sha256_of(nvram) == firmware.nvram.sha256


@pytest.mark.browser
def test_the_build_page_shows_the_installer_screen_while_the_vm_waits_for_ssh(
    installer_iso,
    keypair,
    live_portal,  # noqa: F811  (the fixtures imported above)
    browser,  # noqa: F811
    tmp_path,
    hv,
    in_background,  # noqa: F811
):
    """No boot command: the installer sits at its prompt and SSH never answers. The build
    page shows that screen live in the VM's card, and Cancel ends the build cleanly."""
    from accounts.roles import INSTRUCTORS, add_to_role

    text = manifest(installer_iso, keypair, boot="").replace('    bootCommand: [""]\n', "")
    alice = make_user("alice-iso", superuser=False)
    add_to_role(alice, INSTRUCTORS)
    submitted = submit_manifest(text=text, module_name="iso-watch", user=alice, queue=False)
    live_portal.login(browser, alice)
    browser.get(live_portal.url(f"/builds/{submitted.pk}/"))
    running = in_background(submitted)

    card = browser.find_element(By.CSS_SELECTOR, '.vm[data-vm="web"]')
    until(
        browser,
        lambda d: card.find_element(By.CSS_SELECTOR, ".live-console").is_displayed(),
        300,
        "the live console never showed while waiting for SSH",
        live_portal,
    )
    assert card.find_element(By.CSS_SELECTOR, ".phase").text == "WaitingForSSH"
    browser.switch_to.frame(card.find_element(By.CSS_SELECTOR, ".live-console iframe"))
    until(browser, lambda d: console_state(d) == "connected", 60, "no console", live_portal)
    until(browser, lambda d: canvas_stats(d)["colours"] > 1, 60, "blank console")
    time.sleep(2)  # let the prompt's text settle on the canvas
    browser.switch_to.default_content()
    browser.execute_script("arguments[0].scrollIntoView()", card)
    save_screenshot(browser, "iso-install-console.png", tmp_path)

    browser.find_element(By.CSS_SELECTOR, "#cancel-form button").click()
    until(
        browser,
        lambda d: d.find_element(By.ID, "build-status").text == "Cancelled",
        60,
        "the page never showed Cancelled",
        live_portal,
    )
    # Cancel posted the form and reloaded the page: the card is a new element.
    card = browser.find_element(By.CSS_SELECTOR, '.vm[data-vm="web"]')
    assert not card.find_element(By.CSS_SELECTOR, ".live-console").is_displayed()
    done = running.finish(timeout=120)
    assert done.status == BuildStatus.CANCELLED
    left = hv.list_domains(settings.RUDDERVIRT_NAME_PREFIX)
    assert not [d.name for d in left if f"b{done.pk}-" in d.name]


def test_a_wrong_iso_checksum_fails_before_anything_boots(installer_iso, keypair):
    wrong = hashlib.sha256(b"not the installer").hexdigest()
    boot = "install url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/answers<enter>"
    done = build(manifest(installer_iso, keypair, boot=boot, checksum=wrong))
    assert done.status == BuildStatus.FAILED
    assert f"checksum mismatch for {installer_iso[0]}" in done.error
    assert f"expected sha256:{wrong}, got sha256:{installer_iso[1]}" in done.error
    assert done.vms.get().domain_name == ""  # no domain was ever defined
    assert not any("boot command" in line for line in log_lines(done))
