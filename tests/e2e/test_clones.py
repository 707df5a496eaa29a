"""Clones of a real build under TCG: a class of three, consoles and power per student,
reprovision, delete, the CLI, reconcile, and the capacity check.

The tiny module is built once for this file with the real engine; each test then gets the
module's rows back (transactional tests empty the database after each test), pointing at
the same template disks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.test import override_settings

from accounts.roles import STUDENTS
from builds.models import Build, BuildStatus, BuildVM, ModuleVersion, TemplateVM
from builds.runner import execute_build
from builds.services import submit_manifest
from clones import consoles, services
from clones.models import Class, ClassMembership, Clone, CloneStatus
from clones.reconcile import reconcile_clones
from clones.runner import execute, run_inline
from jobs.models import Operation
from modules.models import ManifestRevision, Module
from ruddervirt.guest import ssh
from tests.e2e.storage import qemu_reachable_folder
from tests.e2e.workers import ROOT, command_env
from tests.helpers import client_for, csrf_post, make_user

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]

MIB = 1024 * 1024
MARKER = "built-by-rudder"


def tiny_manifest(image_server) -> str:
    return f"""\
timeout: 10m
network:
  vpcs: [{{name: lab}}]
  subnets: [{{name: lan, vpc: lab, cidr: 10.10.0.0/24}}]
vms:
  - name: web
    source:
      url: {image_server.url("tiny-20250101.qcow2")}
      checksum: sha256:{image_server.sha256("tiny-20250101.qcow2")}
    resources: {{cpu: 1, memory: 256Mi}}
    disks: [{{name: root, size: 1Gi}}]
    cloudInit: {{}}
    nics: [{{name: eth0, subnet: lan, slot: 1, ip: 10.10.0.10}}]
    provisioners:
      - name: mark
        type: shell
        shell: {{inline: "echo {MARKER} > /root/marker; sync"}}
"""


@dataclass(frozen=True)
class Built:
    """What the build left: enough to put the module's rows back for every test."""

    manifest: str
    build_domains: dict[str, str]
    templates: list[tuple[str, int, str]]  # name, index, domain
    spec: dict  # the version's record (paths relative to the storage root)
    root: Path  # the storage root the build ran in
    storage_path: str


@pytest.fixture(scope="module")
def built(django_db_setup, django_db_blocker, image_server) -> Iterator[Built]:
    root = qemu_reachable_folder("templates")
    text = tiny_manifest(image_server)
    with django_db_blocker.unblock(), override_settings(RUDDERVIRT_STORAGE_ROOT=root):
        user = make_user("builder", superuser=True)
        build = execute_build(
            submit_manifest(text=text, module_name="tiny", user=user, queue=False).pk
        )
        assert build.status == BuildStatus.SUCCEEDED, build.error
        version = ModuleVersion.objects.get(build=build)
        snapshot = Built(
            manifest=text,
            build_domains=dict(
                BuildVM.objects.filter(build=build).values_list("name", "domain_name")
            ),
            templates=[(t.name, t.index, t.domain_name) for t in version.vms.all()],
            spec=version.spec,
            root=root,
            storage_path=version.storage_path,
        )
        from django.core.management import call_command

        call_command("flush", interactive=False, verbosity=0)
    yield snapshot
    shutil.rmtree(root, ignore_errors=True)


def restore(built: Built, owner, *, memory: int | None = None, name: str = "tiny") -> ModuleVersion:
    """The module, its build and version 1 as the build made them (optionally with every
    VM asking for `memory`), in this test's storage root: its modules folder is the
    build's (a link), so the version's storage-relative paths find the template disks."""
    link = Path(settings.RUDDERVIRT_STORAGE_ROOT) / "modules"
    if not link.exists():
        link.symlink_to(built.root / "modules", target_is_directory=True)
    spec = built.spec
    if memory:
        spec = {**spec, "vms": [{**vm, "memory": memory} for vm in spec["vms"]]}
    module = Module.objects.create(name=name, owner=owner)
    revision = ManifestRevision.objects.create(
        module=module, number=1, text=built.manifest, sha256="0" * 64, created_by=owner
    )
    build = Build.objects.create(
        module=module, revision=revision, manifest_text=built.manifest, manifest_sha256="0" * 64,
        requested_by=owner, status=BuildStatus.SUCCEEDED,
    )  # fmt: skip
    for index, (vm, domain) in enumerate(built.build_domains.items()):
        BuildVM.objects.create(build=build, name=vm, index=index, domain_name=domain)
    version = ModuleVersion.objects.create(
        module=module, number=1, build=build, manifest_text=built.manifest,
        manifest_sha256="0" * 64, storage_path=built.storage_path, spec=spec,
    )  # fmt: skip
    for vm, index, domain in built.templates:
        TemplateVM.objects.create(version=version, name=vm, index=index, domain_name=domain)
    return version


def manage(*args: str) -> subprocess.CompletedProcess:
    """A management command in a process of its own, on this test's database. Its Redis
    database is its own too, so no worker of another test run can take its jobs."""
    import sys

    from ruddervirt.redisconf import with_db

    env = {**command_env(), "REDIS_URL": with_db(settings.REDIS_URL, 13)}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def template_disk(built: Built) -> str:
    """The first template disk, where it is (qemu-img records an overlay's backing file
    with its links resolved; this test's storage root links to the build's modules)."""
    path = built.spec["vms"][0]["disks"][0]["path"]
    return str((Path(settings.RUDDERVIRT_STORAGE_ROOT) / path).resolve())


def login(port: int) -> ssh.SSHSession:
    """Root's password: the build's throwaway key is not in the template."""
    target = ssh.SSHTarget(port=port, username="root", password="rudder")
    return ssh.wait_for_ssh(target, timeout=300)


def guest(session: ssh.SSHSession, command: str, timeout: float = 60) -> str:
    result = session.run_capture(command, timeout=timeout)
    out = result.stdout.decode(errors="replace").strip()
    assert result.exit_status == 0, f"{command}: {out} {result.stderr.decode(errors='replace')}"
    return out


WAIT_ADDRESS = (
    "i=0; until ip -4 addr show dev eth0 | grep -q 'inet 10.10.0.10/24'; do "
    "i=$((i+1)); [ $i -gt 240 ] && exit 1; sleep 0.5; done; ping -c 1 -W 3 10.10.0.1 >/dev/null"
)


def qemu_img_info(path: str) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "--force-share", path],
        check=True, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return json.loads(out.stdout)


def gateways_of(clone: Clone) -> set[str]:
    """The network namespaces holding the gateways of the clone's subnets."""
    from clones.runner import clone_request
    from ruddervirt.engine.clone import plan_networks
    from ruddervirt.hypervisor import gateway
    from ruddervirt.runtime import engine_config

    topology = plan_networks(clone_request(clone), engine_config())
    return {gateway.names_for(spec).netns for spec in topology.networks if spec.ipv4}


def netns() -> set[str]:
    folder = Path("/run/netns")
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def on_host(hv, key: str) -> list[str]:
    prefix = f"{settings.RUDDERVIRT_NAME_PREFIX}{key}-"
    return [d.name for d in hv.list_domains(prefix)] + [n.name for n in hv.list_networks(prefix)]


def test_a_class_of_three_gets_isolated_linked_clones_of_the_build(built, hv, storage):
    owner = make_user("teacher", superuser=True)
    version = restore(built, owner)
    students = [make_user(name, STUDENTS) for name in ("ann", "ben", "cy")]
    klass = Class.objects.create(name="Monday", owner=owner)
    for student in students:
        ClassMembership.objects.create(klass=klass, student=student)

    started = time.monotonic()
    made = services.launch(klass, version, by=owner, queue=False)
    run_inline([c.pk for c in made], "provision")
    print(f"\n3 clones created and started in {time.monotonic() - started:.1f}s")
    clones = {c.student.username: c for c in Clone.objects.select_related("student")}
    assert {c.status for c in clones.values()} == {CloneStatus.RUNNING}, [
        c.error for c in clones.values()
    ]

    template_mac = built.spec["vms"][0]["nics"][0]["mac"]
    instances, host_keys = set(), set()
    for clone in clones.values():
        vm = clone.vms.get(name="web")
        disk = vm.disks[0]
        info = qemu_img_info(disk)
        assert info["backing-filename"] == template_disk(built)  # an overlay on the template
        assert info["format"] == "qcow2" and info["virtual-size"] >= 1024 * MIB
        with login(vm.mgmt_port) as session:
            assert guest(session, "cat /root/marker") == MARKER
            assert guest(session, "cat /sys/class/net/eth0/address") == template_mac
            # The template's address, from the clone's own private gateway.
            guest(session, WAIT_ADDRESS, timeout=150)
            # Its own seed: a new instance, so new host keys (the tiny guest's seed reader).
            instance = guest(session, "cat /var/lib/tiny-seed/instance-id")
            assert instance.startswith(f"{vm.domain_name}-"), instance
            instances.add(instance)
            host_keys.add(guest(session, "md5sum < /etc/dropbear/dropbear_ed25519_host_key"))
    assert len(instances) == len(host_keys) == 3

    # One student cannot open another's console or act on another's clone.
    ann, ben = clones["ann"], clones["ben"]
    with pytest.raises(PermissionDenied):
        consoles.resolve(ben.student, ann.pk, "web")
    assert consoles.resolve(ann.student, ann.pk, "web") == ann.vms.get().domain_name
    bens_browser = client_for(ben.student)
    for action in ("off", "restart"):
        response = csrf_post(bens_browser, f"/clones/{ann.pk}/power/{action}/", {}, page="/labs/")
        assert response.status_code == 403
    assert bens_browser.get(f"/console/clone/{ann.pk}/web/").status_code == 403
    assert Clone.objects.get(pk=ann.pk).status == CloneStatus.RUNNING

    # A file written in a clone is gone after reprovision; the identity stays.
    vm = ann.vms.get()
    with login(vm.mgmt_port) as session:
        guest(session, "echo student-work > /root/scratch; sync")
    services.request_action(ann, "reprovision", user=owner, queue=False)
    assert execute(ann.pk, "reprovision").status == CloneStatus.RUNNING
    again = Clone.objects.get(pk=ann.pk).vms.get()
    assert (again.domain_name, again.nics, again.disks) == (vm.domain_name, vm.nics, vm.disks)
    with login(again.mgmt_port) as session:
        assert guest(session, "test -e /root/scratch && echo kept || echo gone") == "gone"
        assert guest(session, "cat /root/marker") == MARKER
        assert guest(session, "cat /sys/class/net/eth0/address") == template_mac
    assert qemu_img_info(again.disks[0])["backing-filename"] == template_disk(built)

    # Delete removes domains, disks and networks (their gateways included).
    keys = {c.key: c.storage_path for c in clones.values()}
    gateways = set().union(*(gateways_of(c) for c in clones.values()))
    assert len(gateways) == 3 and gateways <= netns()
    done, refused = services.request_for_class(klass, "delete", user=owner, queue=False)
    assert len(done) == 3 and not refused
    run_inline([c.pk for c in done], "delete")
    assert not Clone.objects.exists()
    for key, folder in keys.items():
        assert on_host(hv, key) == []
        assert not Path(folder).exists()
    assert not gateways & netns()
    assert Path(template_disk(built)).exists()


def test_launch_class_and_clone_action_work_without_a_worker_and_reconcile_follows_libvirt(
    built, hv, storage
):
    owner = make_user("root-admin", superuser=True)
    restore(built, owner)
    done = manage("launch_class", "--module", "tiny@1", "--students", "solo", "--wait", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout.strip().splitlines()[-1])
    [entry] = data["clones"]
    assert entry["student"] == "solo" and entry["status"] == "Running"
    assert Class.objects.get(pk=data["class"]).adhoc
    clone = Clone.objects.get(pk=entry["id"])
    domain = clone.vms.get().domain_name
    assert entry["vms"][0]["domain"] == domain

    hv.destroy(domain)  # someone pulls the plug with virsh
    actions = reconcile_clones(hv)
    assert f"clone {clone.pk}: now Stopped (as libvirt says)" in actions
    assert Clone.objects.get(pk=clone.pk).status == CloneStatus.STOPPED

    started = manage("clone_action", str(clone.pk), "start")
    assert started.returncode == 0 and started.stdout.strip() == f"clone {clone.pk}: Running", (
        started.stderr
    )
    with login(clone.vms.get().mgmt_port) as session:
        assert guest(session, "cat /root/marker") == MARKER

    deleted = manage("clone_action", str(clone.pk), "delete")
    assert deleted.stdout.strip() == f"clone {clone.pk}: deleted", deleted.stderr
    assert on_host(hv, clone.key) == []


def test_launch_class_wait_ready_sees_every_tiny_guest_ready_by_its_ssh_banner(built, hv, storage):
    owner = make_user("root-admin", superuser=True)
    restore(built, owner)
    began = time.monotonic()
    done = manage(
        "launch_class", "--module", "tiny@1", "--students", "ann,ben", "--wait-ready", "--json"
    )
    took = time.monotonic() - began
    assert done.returncode == 0, done.stdout + done.stderr
    entries = json.loads(done.stdout.strip().splitlines()[-1])["clones"]
    assert len(entries) == 2
    for entry in entries:
        [vm] = entry["vms"]
        print(f"\nclone {entry['id']} VM ready in {vm['ready_s']}s ({vm['ready_via']})")
        # No agent in the tiny guest: its SSH server's banner says it booted, some seconds
        # after the VM started (it boots in ~8 s under TCG) and before the command returned.
        assert vm["ready"] is True and vm["ready_via"] == "ssh"
        assert 0 < vm["ready_s"] < took
        port = Clone.objects.get(pk=entry["id"]).vms.get().mgmt_port
        assert (ssh.read_banner(port, timeout=10) or "").startswith("SSH-")
        assert hv.agent_ping(vm["domain"], 1) is False
    for clone in Clone.objects.filter(pk__in=[e["id"] for e in entries]):
        deleted = manage("clone_action", str(clone.pk), "delete")
        assert deleted.returncode == 0, deleted.stderr
        assert on_host(hv, clone.key) == []


def test_a_class_that_would_not_fit_is_refused_before_anything_is_created(built, hv, storage):
    owner = make_user("teacher", superuser=True)
    # The same disks, but every VM asks for more memory than this whole host has.
    host_memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    version = restore(built, owner, memory=host_memory // 2)
    klass = Class.objects.create(name="Too big", owner=owner)
    for name in ("ann", "ben", "cy"):
        ClassMembership.objects.create(klass=klass, student=make_user(name, STUDENTS))
    with pytest.raises(services.CapacityRefused) as refused:
        services.launch(klass, version, by=owner, queue=False)
    assert "not enough memory: 3 clone(s) of tiny@1 need" in str(refused.value)
    assert not Clone.objects.exists()
    assert not (storage / "clones").exists()
    assert [
        d
        for d in hv.list_domains(settings.RUDDERVIRT_NAME_PREFIX)
        if d.metadata.get("kind") == "clone"
    ] == []


# --- the browser ------------------------------------------------------------------------
from tests.browser.live import browser, live_portal  # noqa: E402, F401


def wait_until(driver, predicate, timeout: float, what: str, portal=None):
    from tests.e2e.livebuild import until

    return until(driver, predicate, timeout, f"timed out waiting for {what}", portal)


def console_connects(driver, portal) -> None:
    """Wait for the console page to connect. Chromium aborts the requests in flight when
    the host's interfaces change (`net::ERR_NETWORK_CHANGED`), and this suite's clones and
    builds add and remove bridges all the time: a page whose noVNC modules were cut off that
    way never connects, so it is loaded once more before the test gives up."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser.screens import console_state

    try:
        WebDriverWait(driver, 60, poll_frequency=0.25).until(
            lambda d: console_state(d) == "connected"
        )
        return
    except TimeoutException:
        driver.refresh()
    wait_until(driver, lambda d: console_state(d) == "connected", 120, "the console", portal)


def statuses(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('[data-clone] [data-field=status]')]"
        ".map(e => e.textContent.trim());"
    )


def detached(element) -> bool:
    """Whether the page that held `element` has gone (chromedriver reports that in more
    than one way while the next page loads)."""
    from selenium.common.exceptions import WebDriverException

    try:
        element.is_enabled()
    except WebDriverException:
        return True
    return False


def submit(driver, form_css: str, fields: dict[str, str]) -> None:
    """Fill in and submit a form, and wait for the page that answers."""
    from selenium.webdriver.common.by import By

    form = driver.find_element(By.CSS_SELECTOR, form_css)
    for name, value in fields.items():
        field = form.find_element(By.NAME, name)
        if field.tag_name == "select":
            from selenium.webdriver.support.ui import Select

            Select(field).select_by_value(value)
        else:
            field.clear()
            field.send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button[type=submit], button:not([type])").click()
    wait_until(driver, lambda d: detached(form), 60, f"the page after submitting {form_css}")


def log_in_on_the_console(driver, clone: Clone) -> None:
    """Type root's login and a command into the console, as a student would."""
    from selenium.webdriver.common.by import By

    login(clone.vms.get().mgmt_port).close()  # booted: getty is up on the screen
    time.sleep(2)
    driver.find_element(By.CSS_SELECTOR, ".console-paste-toggle").click()
    text = "root\nrudder\nclear; cat /root/marker; ip -4 addr show eth0 | grep inet\n"
    driver.find_element(By.CSS_SELECTOR, ".console-paste-text").send_keys(text)
    driver.find_element(By.CSS_SELECTOR, ".console-paste-send").click()
    wait_until(
        driver,
        lambda d: "typed" in d.find_element(By.CSS_SELECTOR, ".console-paste-progress").text,
        60,
        "the keystrokes",
    )
    driver.find_element(By.CSS_SELECTOR, ".console-paste-toggle").click()
    time.sleep(4)  # the shell answers


@pytest.mark.browser
def test_from_the_browser_an_instructor_launches_for_three_students_who_each_see_their_console(
    built,
    hv,
    storage,
    live_portal,  # noqa: F811 - the fixture imported above
    browser,  # noqa: F811
    tmp_path,
):
    from selenium.webdriver.common.by import By

    from accounts.roles import INSTRUCTORS
    from tests.browser.screens import canvas_stats, save_screenshot
    from tests.e2e.workers import kill_hard, start_worker

    teacher = make_user("teacher", INSTRUCTORS)
    version = restore(built, teacher)
    worker = start_worker("clones")
    url = live_portal.url
    try:
        live_portal.login(browser, teacher)
        browser.get(url("/clones/classes/"))
        submit(browser, "form.inline-form", {"name": "Networks 101"})
        klass = Class.objects.get(name="Networks 101")
        submit(browser, "#students-form", {"entries": "ann\nben\ncy", "mode": "password"})
        rows = browser.find_elements(By.CSS_SELECTOR, "#added tbody tr")
        passwords = {
            row.find_elements(By.TAG_NAME, "td")[0].text: row.find_element(
                By.CSS_SELECTOR, ".secret"
            ).text
            for row in rows
        }
        assert sorted(passwords) == ["ann", "ben", "cy"]
        browser.get(url(klass.get_absolute_url()))
        submit(browser, "#launch-form", {"version": str(version.pk)})
        wait_until(
            browser,
            lambda d: statuses(d) == ["Running"] * 3,
            300,
            "three running clones",
            live_portal,
        )
        save_screenshot(browser, "class-dashboard.png", tmp_path)

        clones = {c.student.username: c for c in Clone.objects.select_related("student")}
        for name, password in passwords.items():
            browser.delete_all_cookies()
            browser.get(url("/login/"))
            submit(browser, "form", {"username": name, "password": password})
            new = "Lab-password-2024!"
            submit(browser, "main form", {"new_password1": new, "new_password2": new})
            assert browser.current_url.endswith("/labs/")
            cards = browser.find_elements(By.CSS_SELECTOR, "section.lab")
            assert [c.get_attribute("data-clone") for c in cards] == [str(clones[name].pk)]
            cards[0].find_element(By.PARTIAL_LINK_TEXT, "Open console").click()
            assert browser.current_url.endswith(f"/console/clone/{clones[name].pk}/web/")
            console_connects(browser, live_portal)
            wait_until(browser, lambda d: canvas_stats(d)["colours"] > 1, 120, "the guest's screen")
            if name == "ann":
                log_in_on_the_console(browser, clones[name])
                save_screenshot(browser, "student-console.png", tmp_path)
            other = clones["ben" if name == "ann" else "ann"]
            browser.get(url(f"/console/clone/{other.pk}/web/"))
            assert "403" in browser.title or "Forbidden" in browser.page_source

        # The instructor resets ann's clone from the dashboard.
        live_portal.login(browser, teacher)
        browser.get(url(klass.get_absolute_url()))
        ann = clones["ann"]
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-clone="{ann.pk}"]')
        row.find_element(By.XPATH, ".//button[text()='Reprovision']").click()
        browser.switch_to.alert.accept()
        wait_until(
            browser,
            lambda d: Clone.objects.get(pk=ann.pk).reprovisions == 1,
            120,
            "the reprovision",
        )
        wait_until(
            browser, lambda d: statuses(d) == ["Running"] * 3, 300, "running again", live_portal
        )
    finally:
        kill_hard(worker)
        for clone in Clone.objects.all():
            Operation.objects.for_target(clone).running().update(status="Interrupted")
            Clone.objects.filter(pk=clone.pk).update(status=CloneStatus.DELETING)
            execute(clone.pk, "delete")
    assert not Clone.objects.exists()
