"""The step cache on the tiny guest: a build failing at its third step, then the fixed
manifest reusing the first two (issue 15 item 7, the cache part)."""

from __future__ import annotations

import pytest

from builds.models import BuildStatus, BuildStep, StepStatus
from tests.e2e.guestfs import read_file
from tests.e2e.test_build import build, log_text, manifest, template_disk
from tests.helpers import make_user

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]

FIRST_TWO = """\
      - name: roll
        type: shell
        shell:
          inline: |
            head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /root/rolled
            cat /root/rolled
      - name: copy
        type: shell
        shell: {inline: "cp /root/rolled /root/copied"}
"""
THIRD = """\
      - name: check
        type: shell
        shell:
          inline: |
            test -s /root/copied && cmp /root/rolled /root/copied
            cp /root/copied /root/seen-by-third
            {last}
"""


def test_a_fixed_manifest_reuses_the_first_two_steps_of_the_failed_build(image_server):
    # The same instructor twice: the cache is per instructor (builds.md).
    instructor = make_user("inst-cache", superuser=True)
    failed = build(manifest(image_server, FIRST_TWO + THIRD.format(last="exit 7")), user=instructor)
    assert failed.status == BuildStatus.FAILED, failed.error
    rolled = next(
        line.text
        for line in failed.log_lines.filter(vm="web", stream="stdout")
        if len(line.text) == 32
    )
    assert "step cache: checkpoint" in log_text(failed)

    fixed = build(manifest(image_server, FIRST_TWO + THIRD.format(last="true")), user=instructor)
    assert fixed.status == BuildStatus.SUCCEEDED, fixed.error
    steps = {s.name: s for s in BuildStep.objects.filter(vm__build=fixed)}
    assert [steps[n].status for n in ("roll", "copy", "check")] == [
        StepStatus.REUSED, StepStatus.REUSED, StepStatus.SUCCEEDED
    ]  # fmt: skip
    assert steps["roll"].reused_from == failed.pk and steps["roll"].saved_s > 0
    text = log_text(fixed)
    assert f"roll (shell): reused from build #{failed.pk}" in text
    assert f"copy (shell): reused from build #{failed.pk}" in text
    assert "step 1/3: roll (shell)\n" not in text + "\n"  # never ran: only "reused" lines
    assert fixed.cache_starts["web"]["build"] == failed.pk
    # The third step of the second build saw the value only the first build rolled.
    disk = template_disk(fixed)
    assert read_file(disk, "/root/seen-by-third").decode() == rolled
    assert b"ruddervirt-build" not in read_file(disk, "/root/.ssh/authorized_keys")
