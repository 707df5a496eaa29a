"""Rubrics are checked the manifest's way: every problem with its path and line, caps on
every value, a typed Rubric with defaults applied when valid."""

from __future__ import annotations

import pytest

from ruddervirt import rubric
from ruddervirt.manifest import schema

GOOD = """\
studentCanRun: true
checks:
  - name: page changed
    vm: server
    run: grep -q student /srv/www/index.html
    expect: {exitCode: 0}
    timeout: 30s
    points: 5
  - name: service up
    vm: server
    run: systemctl is-active nginx
    expect: {stdoutMatches: '^active$'}
"""


def where(result: rubric.RubricResult) -> list[tuple[str, int | None]]:
    return [(p.path, p.line) for p in result.errors]


def test_a_good_rubric_becomes_checks_with_defaults():
    result = rubric.validate(GOOD)
    assert result.valid, result.errors
    first, second = result.rubric.checks
    assert (first.name, first.vm, first.points, first.timeout_s, first.exit_code) == (
        "page changed", "server", 5, 30.0, 0,
    )  # fmt: skip
    assert (second.points, second.timeout_s, second.stdout_matches) == (1, 30.0, "^active$")
    assert result.rubric.student_can_run is True
    assert result.rubric.max_score == 6


def test_the_command_is_an_argument_of_the_shell_never_part_of_a_shell_string():
    check = rubric.parse(GOOD).checks[0]
    assert check.argv == ["/bin/sh", "-c", "grep -q student /srv/www/index.html"]


def test_schema_errors_name_the_path_and_the_line():
    text = """\
checks:
  - name: a
    vm: Server_1
    run: "true"
    expect: {exitCode: 300}
    points: -1
    colour: red
"""
    result = rubric.validate(text)
    assert ("checks[0].vm", 3) in where(result)
    assert ("checks[0].expect.exitCode", 5) in where(result)
    assert ("checks[0].points", 6) in where(result)
    assert ("checks[0].colour", 7) in where(result)
    assert any("unknown key 'colour'" in p.message for p in result.errors)
    assert result.rubric is None


def test_expect_takes_exactly_one_of_exit_code_or_stdout_matches():
    text = "checks: [{name: a, vm: s, run: x, expect: {exitCode: 0, stdoutMatches: y}}]\n"
    result = rubric.validate(text)
    assert where(result) == [("checks[0].expect", 1)]
    assert "exactly one of exitCode or stdoutMatches" in result.errors[0].message


def test_a_bad_regex_a_duplicate_name_and_a_long_timeout_are_errors_with_their_lines():
    text = """\
checks:
  - name: a
    vm: s
    run: x
    expect: {stdoutMatches: '(unclosed'}
  - name: a
    vm: s
    run: x
    expect: {exitCode: 0}
    timeout: 10m
"""
    result = rubric.validate(text)
    assert where(result) == [
        ("checks[0].expect.stdoutMatches", 5),
        ("checks[1].name", 6),
        ("checks[1].timeout", 10),
    ]
    assert "not a regular expression" in result.errors[0].message
    assert "another check is named 'a'" in result.errors[1].message
    assert "from 1s to 300s" in result.errors[2].message


def test_unquoted_yaml_booleans_get_a_hint():
    result = rubric.validate("checks: [{name: a, vm: s, run: true, expect: {exitCode: 0}}]\n")
    assert "quote the value" in result.errors[0].message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("checks: []\n", "a list of 1 to 50 checks"),
        ("{}\n", "required key 'checks' is missing"),
        ("- a\n", "mapping"),
        ("checks: [{name: a, vm: s, run: x, expect: {exitCode: 0}}]\nchecks: []\n", "duplicate"),
    ],
)
def test_broken_documents_are_refused_with_a_message(text, message):
    result = rubric.validate(text)
    assert not result.valid
    assert message in " ".join(p.message for p in result.errors)


def test_caps_on_count_size_and_command_length():
    one = "  - {name: c%d, vm: s, run: x, expect: {exitCode: 0}}\n"
    many = "checks:\n" + "".join(one % i for i in range(rubric.MAX_CHECKS + 1))
    assert "a list of 1 to 50 checks" in rubric.validate(many).errors[0].message
    long_run = "checks: [{name: a, vm: s, run: '%s', expect: {exitCode: 0}}]\n" % ("x" * 5000)
    assert where(rubric.validate(long_run)) == [("checks[0].run", 1)]
    huge = "# " + "x" * rubric.MAX_BYTES + "\n" + GOOD
    assert "at most 64 KiB" in rubric.validate(huge).errors[0].message


def test_a_vm_the_module_lacks_is_a_warning_not_an_error():
    result = rubric.validate(GOOD, vms=["client"])
    assert result.valid
    assert [(p.path, p.line) for p in result.warnings] == [
        ("checks[0].vm", 4),
        ("checks[1].vm", 10),
    ]
    assert "has no VM 'server' (it has: client)" in result.warnings[0].message


def test_passing_reads_the_exit_code_or_searches_stdout_line_by_line():
    by_code, by_output = rubric.parse(GOOD).checks
    assert by_code.passed(0, "") and not by_code.passed(1, "") and not by_code.passed(None, "")
    assert by_output.passed(3, "x\nactive\n") and not by_output.passed(0, "inactive\n")


def test_the_rubric_is_not_part_of_the_manifest_schema():
    text = str(schema())
    assert "studentCanRun" not in text and "stdoutMatches" not in text
