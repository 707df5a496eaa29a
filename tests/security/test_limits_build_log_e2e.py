"""A real guest floods its build log: the log keeps the cap plus a count, and the build
still completes (tiny guest under TCG)."""

from __future__ import annotations

import pytest

from builds.models import BuildLogLine, BuildStatus
from tests.e2e.conftest import clean_host, hv, image_server, storage, tiny_image  # noqa: F401
from tests.e2e.test_build import build, manifest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]
FLOOD = 200_000


def test_a_shell_step_printing_200000_lines_keeps_1000_and_the_build_completes(
    request, settings
) -> None:
    settings.RUDDERVIRT_BUILD_LOG_MAX_LINES = 1000
    server = request.getfixturevalue("image_server")
    recipe = f"      - {{name: flood, type: shell, shell: {{inline: 'seq 1 {FLOOD}'}}}}\n"
    done = build(manifest(server, recipe), name="flood")
    assert done.status == BuildStatus.SUCCEEDED, done.error
    lines = list(BuildLogLine.objects.filter(build=done).order_by("seq"))
    output = [line.text for line in lines if line.stream == "stdout"]
    assert output == [str(n) for n in range(1, len(output) + 1)]  # the first lines, in order
    assert 900 < len(output) < 1000  # the build's own lines before the step share the cap
    # 1000 lines of any kind, then only the engine's phase and error lines, then the count.
    assert len(lines) > 1000
    assert all(line.stream in ("phase", "error") for line in lines[1000:-1])
    last = lines[-1].text
    assert last.startswith("... ") and "more lines not kept" in last
    dropped = int(last.split()[1])
    assert dropped >= FLOOD - len(output)  # every line of the flood is kept or counted
