"""Checks of students' work on real Debian 12 guests under TCG (issue 16, items 1 and 5): a
one-VM module whose build serves a page, a rubric of three checks, a class of two; one
student changes their VM (over SSH, as a student would), the instructor runs the checks,
which run inside each clone through its qemu-guest-agent, and the gradebook, the CSV and
`manage.py grade --json` show the difference. The student sees names and points only, never
the commands, and not the other student's results.

What the run printed is kept in /tmp/rv/grade/ (grade.json, gradebook.csv, gradebook.html,
and the student's lab page, lab.html) for the record.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from textwrap import indent

import pytest
from django.core.management import call_command

from accounts.roles import STUDENTS
from builds.models import BuildStatus, ModuleVersion
from builds.runner import execute_build
from builds.services import submit_manifest
from clones import grading, services
from clones.models import Class, ClassMembership, Clone, CloneStatus, GradingRun
from clones.runner import run_inline
from modules.rubrics import save_rubric
from ruddervirt.guest import ssh
from ruddervirt.runtime import get_hypervisor
from tests.debianimage.conftest import debian_image
from tests.e2e.test_debian_clones import guest
from tests.helpers import client_for, csrf_post, make_user

__all__ = ["debian_image"]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.debian,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
    pytest.mark.timeout(2400),  # a Debian build and two clones under TCG
]

IMAGE = "debian12-grading.qcow2"
RECORD = Path("/tmp/rv/grade")
RUBRIC = """\
studentCanRun: true
checks:
  - name: page changed
    vm: server
    run: grep -q student /srv/www/index.html
    expect: {exitCode: 0}
    timeout: 30s
    points: 5
  - name: notes written
    vm: server
    run: cat /home/debian/notes.txt
    expect: {stdoutMatches: '^done: [0-9]+$'}
    points: 3
  - name: it is Debian
    vm: server
    run: . /etc/os-release; echo "$ID"
    expect: {stdoutMatches: '^debian$'}
    points: 2
"""
BRIEFING = "# Web lab\n\nPut the word *student* into `/srv/www/index.html`.<script>x()</script>"
STUDENT_WORK = (
    "sudo sh -c 'echo hello student >> /srv/www/index.html'; echo 'done: 42' > ~/notes.txt"
)


def manifest(image_server, private_key: str) -> str:
    return f"""\
timeout: 25m
files:
  - name: key
    inline: |
{indent(private_key.strip(), " " * 6)}
network:
  vpcs: [{{name: lab}}]
  subnets: [{{name: lan, vpc: lab, cidr: 10.30.0.0/24}}]
vms:
  - name: server
    source:
      url: {image_server.url(IMAGE)}
      checksum: sha256:{image_server.sha256(IMAGE)}
    resources: {{cpu: 1, memory: 768Mi}}
    disks: [{{name: root, size: 3Gi}}]
    communicator: {{sshUsername: debian, sshPrivateKeyFile: key, sshTimeout: 12m}}
    cloudInit: {{}}
    nics: [{{name: eth0, subnet: lan, slot: 1, ip: 10.30.0.10}}]
    provisioners:
      - name: the page
        type: shell
        shell: {{inline: "sudo mkdir -p /srv/www && echo hello | sudo tee /srv/www/index.html"}}
"""


def wait_for_agent(domain: str, timeout: float = 600) -> float:
    hv = get_hypervisor()
    started = time.monotonic()
    while not hv.agent_ping(domain, 2):
        assert time.monotonic() - started < timeout, f"no guest agent in {domain}"
        time.sleep(2)
    return time.monotonic() - started


def test_a_class_of_two_is_graded_inside_its_debian_guests(image_server, debian_image, storage):
    if not (image_server.folder / IMAGE).exists():
        (image_server.folder / IMAGE).symlink_to(debian_image)
    private_key, _ = ssh.generate_keypair("instructor")
    RECORD.mkdir(parents=True, exist_ok=True)
    owner = make_user("grader", superuser=True)
    started = time.monotonic()
    text = manifest(image_server, private_key)
    build = execute_build(
        submit_manifest(text=text, module_name="deb-grade", user=owner, queue=False).pk
    )
    assert build.status == BuildStatus.SUCCEEDED, build.error
    print(f"\nDebian build in {time.monotonic() - started:.1f}s")
    version = ModuleVersion.objects.get(build=build)
    version.briefing = BRIEFING
    version.save()
    save_rubric(module=version.module, text=RUBRIC, user=owner)
    klass = Class.objects.create(name="Debian grading", owner=owner)
    students = {name: make_user(name, STUDENTS) for name in ("erin", "finn")}
    for user in students.values():
        ClassMembership.objects.create(klass=klass, student=user)
    made = services.launch(klass, version, by=owner, queue=False)
    run_inline([c.pk for c in made], "provision")
    clones = {c.student.username: c for c in Clone.objects.select_related("student")}
    try:
        assert {c.status for c in clones.values()} == {CloneStatus.RUNNING}
        for clone in clones.values():
            vm = clone.vms.get(name="server")
            waited = wait_for_agent(vm.domain_name)
            print(f"clone {clone.pk}: agent answered after {waited:.1f}s more")
        erin = clones["erin"].vms.get(name="server")
        target = ssh.SSHTarget(port=erin.mgmt_port, username="debian", private_key=private_key)
        with ssh.wait_for_ssh(target, timeout=600) as session:
            guest(session, STUDENT_WORK)
        started = time.monotonic()
        call_command("grade", str(klass.pk), "--json", stdout=(out := io.StringIO()))
        print(f"grade --json in {time.monotonic() - started:.1f}s")
        judge(klass, clones, students, owner, json.loads(out.getvalue()))
    finally:
        done, _ = services.request_for_class(klass, "delete", user=owner, queue=False)
        run_inline([c.pk for c in done], "delete")


def judge(klass, clones, students, owner, data: dict) -> None:
    (RECORD / "grade.json").write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))
    by_student = {s["student"]: s for s in data["students"]}
    assert data["class"] == klass.pk
    assert (by_student["erin"]["score"], by_student["erin"]["max"]) == (10, 10)
    assert (by_student["finn"]["score"], by_student["finn"]["max"]) == (2, 10)
    finn = {c["name"]: c for c in by_student["finn"]["checks"]}
    assert not finn["page changed"]["passed"] and not finn["notes written"]["passed"]
    assert "No such file" in finn["notes written"]["output"]
    assert finn["it is Debian"]["passed"] and finn["it is Debian"]["output"].strip() == "debian"
    teacher = client_for(owner)
    text = teacher.get(f"/clones/classes/{klass.pk}/gradebook.csv").content.decode()
    (RECORD / "gradebook.csv").write_text(text)
    print(text)
    rows = {row[0]: row for row in csv.reader(io.StringIO(text))}
    assert rows["student"][3:6] == ["page changed", "notes written", "it is Debian"]
    assert rows["erin"][3:] == ["5", "3", "2", "10", "10"]
    assert rows["finn"][3:] == ["0", "0", "2", "2", "10"]
    page = teacher.get(f"/clones/classes/{klass.pk}/").content.decode()
    (RECORD / "gradebook.html").write_text(page)
    assert "10 / 10" in page and "2 / 10" in page
    # The students: their own names and points, no commands, not the other's results.
    finn_client = client_for(students["finn"])
    mine, theirs = clones["finn"], clones["erin"]
    lab = finn_client.get(f"/clones/{mine.pk}/lab/").content.decode()
    (RECORD / "lab.html").write_text(lab)
    assert "<h1>Web lab</h1>" in lab and "<script>x()" not in lab
    assert "notes written" in lab and "grep -q student" not in lab and "os-release" not in lab
    assert finn_client.get(f"/clones/{theirs.pk}/checks.json").status_code == 403
    assert finn_client.get(f"/clones/classes/{klass.pk}/gradebook.csv").status_code == 403
    # "Check my work" runs the same checks in the student's own clone only.
    assert csrf_post(finn_client, f"/clones/{mine.pk}/check/", {}, page="/labs/").status_code == 302
    run = GradingRun.objects.filter(by_student=True).get()
    grading.run_now([run])
    seen = finn_client.get(f"/clones/{mine.pk}/checks.json").json()
    assert (seen["score"], seen["max"]) == (2, 10)
    assert "grep" not in json.dumps(seen) and "output" not in json.dumps(seen)
