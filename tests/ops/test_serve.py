"""The services `make run` supervises (ruddervirt/serve.py), from the same variables as before."""

from __future__ import annotations

import pytest

from ruddervirt.serve import ConfigError, _log_to, log, portal_services, root


def names(env: dict[str, str]) -> list[str]:
    return [s.name for s in portal_services(env, python="/venv/bin/python")[0]]


def test_defaults_are_the_portal_two_build_workers_one_clone_worker_reconcile_and_watch_ready():
    assert names({}) == [
        "portal", "worker build-1", "worker build-2", "worker clone-1", "reconcile", "watch_ready",
    ]  # fmt: skip


def test_the_variables_of_run_sh_set_address_pools_and_periods():
    env = {
        "RUDDERVIRT_HOST": "127.0.0.2", "RUDDERVIRT_PORT": "8123",
        "RUDDERVIRT_BUILD_WORKERS": "1", "RUDDERVIRT_CLONE_WORKERS": "3",
        "RUDDERVIRT_RECONCILE_EVERY": "30", "RUDDERVIRT_READY_EVERY": "5",
    }  # fmt: skip
    services, banner = portal_services(env, python="/venv/bin/python")
    by_name = {s.name: s for s in services}
    assert by_name["portal"].argv == (
        "/venv/bin/daphne", "-b", "127.0.0.2", "-p", "8123", "ruddervirt.asgi:application",
    )  # fmt: skip
    assert [n for n in by_name if n.startswith("worker clone-")] == [
        "worker clone-1", "worker clone-2", "worker clone-3",
    ]  # fmt: skip
    assert by_name["worker build-1"].argv[2:4] == ("rqworker", "builds")
    assert by_name["worker clone-2"].argv[2:5] == ("rqworker", "clones", "default")
    assert by_name["reconcile"].every == 30
    assert by_name["reconcile"].argv[2:] == ("reconcile", "--quiet")
    assert by_name["watch_ready"].argv[2:] == ("watch_ready", "--every", "5")
    assert "http://127.0.0.2:8123/" in banner


@pytest.mark.parametrize(
    "env",
    [
        {"RUDDERVIRT_BUILD_WORKERS": "0"},
        {"RUDDERVIRT_CLONE_WORKERS": "two"},
        {"RUDDERVIRT_RECONCILE_EVERY": "-1"},
        {"RUDDERVIRT_READY_EVERY": "soon"},
    ],
)
def test_a_worker_count_below_one_or_a_period_that_is_not_positive_is_refused(env):
    with pytest.raises(ConfigError):
        portal_services(env, python="/venv/bin/python")


def test_each_start_of_a_worker_registers_with_rq_under_a_name_of_its_own():
    services, _banner = portal_services({}, python="/venv/bin/python")
    worker = next(s for s in services if s.name == "worker build-1")
    first, second = (worker.argv_for(n) for n in (1, 2))
    name_at = first.index("--name") + 1
    assert first[name_at].endswith("-build-1.1") and second[name_at].endswith("-build-1.2")


def test_a_reconcile_pass_is_killed_after_twice_its_period_but_never_before_two_minutes():
    def timeout(every: str) -> float | None:
        services, _banner = portal_services({"RUDDERVIRT_RECONCILE_EVERY": every}, python="py")
        return next(s for s in services if s.name == "reconcile").timeout

    assert timeout("60") == 120
    assert timeout("300") == 600


def test_the_supervisor_log_is_rotated_and_keeps_a_bounded_number_of_old_files(tmp_path):
    path = tmp_path / "supervisor.log"
    handler = _log_to(path, max_bytes=1000, backups=2)
    try:
        for n in range(200):
            log.warning("worker build-1 exited with status 1 after 0.1s; restart %d", n)
    finally:
        log.removeHandler(handler)
        handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["supervisor.log", "supervisor.log.1", "supervisor.log.2"]
    assert all((tmp_path / f).stat().st_size <= 1000 for f in files)


def test_run_sh_bounds_the_reconcile_before_the_start_and_does_not_hide_its_errors():
    script = (root() / "scripts" / "run.sh").read_text()
    (line,) = [x for x in script.splitlines() if "manage.py reconcile" in x]
    assert line.startswith("timeout 120 ")
    assert "2>/dev/null" not in line
