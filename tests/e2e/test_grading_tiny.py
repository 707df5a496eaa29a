"""Checks on the tiny guest, which runs no qemu-guest-agent (tools/testimage): the clone
boots and answers SSH, and every check is reported failed with "guest agent not answering",
within the check's time and without a crash; the run and the gradebook say so."""

from __future__ import annotations

import json
import time

import pytest
from django.core.management import call_command

from accounts.roles import STUDENTS
from clones import services
from clones.models import Class, ClassMembership, Clone, CloneStatus, GradingRun
from clones.runner import run_inline
from modules.rubrics import save_rubric
from tests.e2e.test_clones import built, guest, login, restore
from tests.helpers import make_user

__all__ = ["built"]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]

RUBRIC = """\
checks:
  - name: marker there
    vm: web
    run: grep -q built-by-rudder /root/marker
    expect: {exitCode: 0}
    timeout: 10s
    points: 4
"""


def test_a_guest_without_an_agent_fails_its_checks_with_the_reason(built, capsys):
    owner = make_user("tiny-grader", superuser=True)
    version = restore(built, owner)
    save_rubric(module=version.module, text=RUBRIC, user=owner)
    klass = Class.objects.create(name="tiny grading", owner=owner)
    ClassMembership.objects.create(klass=klass, student=make_user("gus", STUDENTS))
    made = services.launch(klass, version, by=owner, queue=False)
    run_inline([c.pk for c in made], "provision")
    clone = Clone.objects.get()
    try:
        assert clone.status == CloneStatus.RUNNING, clone.error
        with login(clone.vms.get(name="web").mgmt_port) as session:  # the guest is up
            assert guest(session, "cat /root/marker") == "built-by-rudder"
        started = time.monotonic()
        call_command("grade", str(klass.pk), "--json")
        elapsed = time.monotonic() - started
        data = json.loads(capsys.readouterr().out)
        print(json.dumps(data, indent=2), f"\ngraded in {elapsed:.1f}s")
        (student,) = data["students"]
        assert (student["score"], student["max"]) == (0, 4)
        assert student["checks"] == [
            {"name": "marker there", "passed": False, "points": 4,
             "output": "guest agent not answering"},
        ]  # fmt: skip
        assert elapsed < 60  # no waiting for an agent that is not there
        assert GradingRun.objects.get().done
    finally:
        done, _ = services.request_for_class(klass, "delete", user=owner, queue=False)
        run_inline([c.pk for c in done], "delete")
