"""Checks of students' work with the fake hypervisor: scoring, the agent that does not
answer, who may run and see what, the gradebook, its CSV, `manage.py grade --json`,
`manage.py set_rubric`, the rubric page and the lab page's briefing."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.core.management import call_command

from clones import grading, services
from clones.models import CheckResult, Clone, GradingRun
from clones.runner import run_inline
from jobs.models import Operation
from modules.rubrics import RubricRejected, save_rubric
from ruddervirt.hypervisor.driver import ExecResult
from tests.helpers import client_for, csrf_post

pytestmark = pytest.mark.django_db(transaction=True)

RUBRIC = """\
studentCanRun: {can_run}
checks:
  - name: page changed
    vm: web
    run: grep -q student /srv/www/index.html
    expect: {{exitCode: 0}}
    points: 5
  - name: service up
    vm: web
    run: systemctl is-active nginx
    expect: {{stdoutMatches: '^active$'}}
    points: 3
  - name: dc reachable
    vm: dc
    run: ping -c1 10.10.0.10
    expect: {{exitCode: 0}}
"""
SECRET = "grep -q student"


def guest(passing: bool):
    """A guest whose answers pass every check of RUBRIC, or fail them."""

    def answer(argv: list[str]) -> ExecResult:
        assert argv[:2] == ["/bin/sh", "-c"]
        if "systemctl" in argv[2]:
            return ExecResult(exit_code=0, stdout=b"active\n" if passing else b"inactive\n")
        return ExecResult(exit_code=0 if passing else 1, stderr=b"" if passing else b"no match")

    return answer


@pytest.fixture
def clones(klass, version, instructor, fake_hv) -> dict[str, Clone]:
    made = services.launch(klass, version, by=instructor, queue=False)
    run_inline([c.pk for c in made], "provision")
    found = {c.student.username: c for c in Clone.objects.select_related("student")}
    for name, passing in (("carol", True), ("dave", False)):
        for vm in found[name].vms.all():
            fake_hv.agents.add(vm.domain_name)
            fake_hv.guests[vm.domain_name] = guest(passing)
    return found


def rubric_for(version, instructor, *, can_run: bool = True):
    return save_rubric(
        module=version.module, text=RUBRIC.format(can_run=str(can_run).lower()), user=instructor
    ).revision


def grade_now(clones, instructor, fake_hv):
    runs = grading.request_grading(clones, by=instructor, queue=False)
    grading.run_now(runs, hv=fake_hv)
    return [GradingRun.objects.get(pk=r.pk) for r in runs]


def test_checks_run_in_each_clone_through_the_agent_and_are_scored(
    clones, version, instructor, fake_hv
):
    rubric_for(version, instructor)
    carol, dave = grade_now([clones["carol"], clones["dave"]], instructor, fake_hv)
    assert (carol.score, carol.max_score, dave.score, dave.max_score) == (9, 9, 0, 9)
    assert [r.passed for r in dave.results.all()] == [False, False, False]
    assert dave.results.get(name="page changed").output == "no match"
    assert dave.results.get(name="page changed").exit_code == 1
    commands = [argv for _, argv in fake_hv.executed]
    assert ["/bin/sh", "-c", "grep -q student /srv/www/index.html"] in commands
    web = clones["carol"].vms.get(name="web").domain_name
    assert (web, ["/bin/sh", "-c", "ping -c1 10.10.0.10"]) not in fake_hv.executed  # dc's
    op = Operation.objects.get(kind="grade", target_id=carol.pk)
    assert (op.status, op.outcome, op.queue) == ("Succeeded", "9/9", "clones")


def test_a_vm_whose_agent_does_not_answer_fails_its_checks_with_the_reason(
    clones, version, instructor, fake_hv
):
    rubric_for(version, instructor)
    fake_hv.agents.clear()
    (run,) = grade_now([clones["carol"]], instructor, fake_hv)
    assert run.score == 0 and run.done
    assert {r.output for r in run.results.all()} == {"guest agent not answering"}


def test_a_stopped_clone_is_graded_as_failed_not_crashed(clones, version, instructor, fake_hv):
    rubric_for(version, instructor)
    for vm in clones["carol"].vms.all():
        fake_hv.destroy(vm.domain_name)
    (run,) = grade_now([clones["carol"]], instructor, fake_hv)
    assert run.done and run.score == 0
    assert "guest agent not answering" in run.results.first().output


def test_a_module_without_a_rubric_is_refused(clones, instructor):
    with pytest.raises(grading.GradingRefused, match="has no rubric"):
        grading.request_grading([clones["carol"]], by=instructor, queue=False)


def test_asking_twice_while_a_run_is_open_runs_the_checks_once(clones, version, instructor):
    rubric_for(version, instructor)
    first = grading.request_grading([clones["carol"]], by=instructor, queue=False)
    again = grading.request_grading([clones["carol"]], by=instructor, queue=False)
    assert [r.pk for r in first] == [r.pk for r in again]
    assert GradingRun.objects.count() == 1


def test_the_gradebook_shows_students_by_checks_with_totals_and_the_csv_matches(
    klass, clones, version, instructor, fake_hv
):
    rubric_for(version, instructor)
    grade_now(list(clones.values()), instructor, fake_hv)
    page = client_for(instructor).get(f"/clones/classes/{klass.pk}/").content.decode()
    assert 'id="gradebook-table"' in page
    assert "9 / 9" in page and "0 / 9" in page
    assert "<th>page changed</th>" in page
    response = client_for(instructor).get(f"/clones/classes/{klass.pk}/gradebook.csv")
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == [
        "student", "clone", "ran_at", "page changed", "service up", "dc reachable", "score", "max",
    ]  # fmt: skip
    by_student = {row[0]: row for row in rows[1:]}
    assert by_student["carol"][3:] == ["5", "3", "1", "9", "9"]
    assert by_student["dave"][3:] == ["0", "0", "0", "0", "9"]


def test_grade_json_runs_the_checks_and_prints_the_promised_shape(
    klass, clones, version, instructor, fake_hv, capsys
):
    rubric_for(version, instructor)
    call_command("grade", str(klass.pk), "--json")
    data = json.loads(capsys.readouterr().out)
    assert data["class"] == klass.pk
    assert set(data) == {"class", "students"}
    first = data["students"][0]
    assert set(first) == {"student", "clone", "score", "max", "checks"}
    assert set(first["checks"][0]) == {"name", "passed", "points", "output"}
    scores = {s["student"]: (s["score"], s["max"]) for s in data["students"]}
    assert scores == {"carol": (9, 9), "dave": (0, 9)}
    call_command("grade", klass.name, "--json", "--no-run")
    again = json.loads(capsys.readouterr().out)
    assert again == data
    assert GradingRun.objects.count() == 2  # --no-run ran nothing


def test_set_rubric_saves_a_revision_and_reports_errors_with_lines(
    version, instructor, tmp_path, capsys
):
    good = tmp_path / "rubric.yaml"
    good.write_text(RUBRIC.format(can_run="false"))
    call_command("set_rubric", version.module.name, str(good))
    assert "revision 1" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("checks:\n  - name: a\n    vm: web\n    run: x\n    expect: {exitCode: nine}\n")
    with pytest.raises(SystemExit) as stopped:
        call_command("set_rubric", version.module.name, str(bad))
    assert stopped.value.code == 1
    assert "checks[0].expect.exitCode (line 5" in capsys.readouterr().err
    assert version.module.rubric.number == 1


def test_rubric_revisions_keep_the_history(version, instructor):
    first = rubric_for(version, instructor, can_run=False)
    second = rubric_for(version, instructor, can_run=True)
    again = rubric_for(version, instructor, can_run=True)
    assert (first.number, second.number, again.pk) == (1, 2, second.pk)
    with pytest.raises(RubricRejected):
        save_rubric(module=version.module, text="checks: []\n", user=instructor)


def test_the_rubric_page_validates_with_lines_and_saves(version, instructor, other_instructor):
    url = f"/modules/{version.module.name}/rubric/"
    client = client_for(instructor)
    assert client.get(url).status_code == 200
    answer = csrf_post(
        client, url + "validate/", {"rubric": "checks:\n  - name: a\n    vm: nope\n"}, page=url
    ).json()
    assert not answer["valid"]
    assert {"path": "checks[0].run", "line": 2} in [
        {"path": p["path"], "line": p["line"]} for p in answer["errors"]
    ]
    other_vm = RUBRIC.format(can_run="true").replace("vm: dc", "vm: db")
    warned = csrf_post(client, url + "validate/", {"rubric": other_vm}, page=url).json()
    assert warned["valid"] and "has no VM 'db'" in warned["warnings"][0]["message"]
    saved = csrf_post(client, url, {"rubric": RUBRIC.format(can_run="true")}, page=url)
    assert saved.status_code == 302 and version.module.rubric.number == 1
    assert client_for(other_instructor).get(url).status_code == 403


def test_students_see_names_and_points_of_their_own_checks_never_commands_or_output(
    clones, version, instructor, student, second_student, fake_hv
):
    rubric_for(version, instructor, can_run=True)
    grade_now(list(clones.values()), instructor, fake_hv)
    mine, theirs = clones["carol"], clones["dave"]
    client = client_for(student)
    page = client.get(f"/clones/{mine.pk}/lab/").content.decode()
    assert "page changed" in page and "Check my work" in page
    assert SECRET not in page and "systemctl" not in page
    data = client.get(f"/clones/{mine.pk}/checks.json").json()
    assert data["score"] == 9
    assert all(set(c) == {"name", "points", "passed"} for c in data["checks"])
    assert SECRET not in json.dumps(data)
    assert client.get(f"/clones/{theirs.pk}/checks.json").status_code == 403
    assert client.get(f"/clones/{theirs.pk}/lab/").status_code == 403
    assert client.get(f"/clones/classes/{mine.klass_id}/gradebook.csv").status_code == 403
    assert client.get(f"/modules/{version.module.name}/rubric/").status_code == 403
    assert client.get(f"/modules/{version.module.name}/rubric/1.yaml").status_code == 403


def test_a_student_checks_their_work_only_when_the_rubric_allows_it(
    clones, version, instructor, student, fake_hv
):
    mine = clones["carol"]
    rubric_for(version, instructor, can_run=False)
    url = f"/clones/{mine.pk}/check/"
    client = client_for(student)
    assert csrf_post(client, url, {}, page="/labs/").status_code == 403
    assert "Check my work" not in client.get(f"/clones/{mine.pk}/lab/").content.decode()
    rubric_for(version, instructor, can_run=True)
    assert csrf_post(client, url, {}, page="/labs/").status_code == 302
    run = GradingRun.objects.get()
    assert run.by_student and run.clone == mine
    assert client.post(url).status_code == 403  # no CSRF token
    grading.run_now([run], hv=fake_hv)
    assert client.get(f"/clones/{mine.pk}/checks.json").json()["score"] == 9


def test_other_instructors_can_neither_run_nor_see_the_checks(
    klass, clones, version, instructor, other_instructor, fake_hv
):
    rubric_for(version, instructor)
    other = client_for(other_instructor)
    assert (
        csrf_post(other, f"/clones/classes/{klass.pk}/grade/", {}, page="/modules/").status_code
        == 403
    )
    assert (
        csrf_post(other, f"/clones/{clones['carol'].pk}/grade/", {}, page="/modules/").status_code
        == 403
    )
    assert other.get(f"/clones/classes/{klass.pk}/gradebook.csv").status_code == 403
    assert not GradingRun.objects.exists()
    owner = client_for(instructor)
    response = csrf_post(owner, f"/clones/classes/{klass.pk}/grade/", {}, page="/modules/")
    assert response.status_code == 302
    assert GradingRun.objects.count() == 2
    assert Operation.objects.filter(kind="grade").count() == 2


def test_csv_cells_cannot_be_formulas(klass, clones, version, instructor, fake_hv):
    rubric_for(version, instructor)
    grade_now([clones["carol"]], instructor, fake_hv)
    student = clones["carol"].student
    student.username = "=cmd|calc"
    student.save()
    text = grading.gradebook_csv(grading.gradebook(klass))
    assert "'=cmd|calc" in text


def test_the_lab_page_shows_the_briefing_sanitized_and_the_time_left(
    clones, version, student, instructor
):
    version.briefing = (
        "# Task\n\nEdit **index.html**. <script>alert('x')</script>"
        '<img src=x onerror="alert(1)"> [docs](https://example.org) [bad](javascript:alert(1))'
    )
    version.save()
    mine = clones["carol"]
    services.set_limits([mine], expires_at=mine.created_at.replace(year=2099), inactivity_s=None)
    page = client_for(student).get(f"/clones/{mine.pk}/lab/").content.decode()
    assert "<h1>Task</h1>" in page and "<strong>index.html</strong>" in page
    assert "<script>alert" not in page and "onerror" not in page and "javascript:" not in page
    assert 'href="https://example.org" target="_blank" rel="noopener noreferrer nofollow"' in page
    assert 'data-expires="2099-' in page
    assert f"/console/clone/{mine.pk}/web/?embed=1" in page
    assert f"/console/clone/{mine.pk}/dc/" not in page  # invisible


def test_a_version_gets_the_module_briefing_and_is_edited_on_its_own(version, instructor):
    module = version.module
    client = client_for(instructor)
    url = f"/modules/{module.name}/briefing/"
    assert csrf_post(client, url, {"briefing": "Module text"}, page=url).status_code == 302
    module.refresh_from_db()
    assert module.briefing == "Module text"
    vurl = f"/modules/{module.name}/versions/{version.number}/briefing/"
    assert csrf_post(client, vurl, {"briefing": "Only v1"}, page=vurl).status_code == 302
    version.refresh_from_db()
    module.refresh_from_db()
    assert (version.briefing, module.briefing) == ("Only v1", "Module text")


def test_results_are_kept_per_run(clones, version, instructor, fake_hv):
    rubric_for(version, instructor)
    grade_now([clones["dave"]], instructor, fake_hv)
    for vm in clones["dave"].vms.all():
        fake_hv.guests[vm.domain_name] = guest(True)
    grade_now([clones["dave"]], instructor, fake_hv)
    assert list(GradingRun.objects.order_by("pk").values_list("score", flat=True)) == [0, 9]
    assert CheckResult.objects.count() == 6
    latest = grading.latest_runs([clones["dave"]])[clones["dave"].pk]
    assert latest.score == 9
