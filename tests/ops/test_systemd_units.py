"""The systemd units of deploy/systemd, checked without systemd running.

They parse; each ExecStart runs the venv's daphne or an existing `manage.py` command; the
long-running services restart on failure; the target wants units that exist; they run the same
commands `make run` supervises (ruddervirt/serve.py); and `systemd-analyze verify` (when the
systemd package is installed) finds nothing to say about them.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from django.core.management import get_commands

from ruddervirt.serve import portal_services, root

UNITS = root() / "deploy" / "systemd"
INSTALL_DIR = "/opt/ruddervirt"
LONG_RUNNING = (
    "ruddervirt-portal.service",
    "ruddervirt-build-worker@.service",
    "ruddervirt-clone-worker@.service",
    "ruddervirt-watch-ready.service",
)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections: every key's values in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}:{number}: not KEY=VALUE in a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def services() -> dict[str, dict[str, dict[str, list[str]]]]:
    return {p.name: parse_unit(p) for p in sorted(UNITS.glob("*.service"))}


def exec_start(unit: dict[str, dict[str, list[str]]]) -> list[str]:
    (line,) = unit["Service"]["ExecStart"]
    return shlex.split(line)


def test_every_service_runs_the_venvs_daphne_or_an_existing_manage_py_command():
    commands = get_commands()
    for name, unit in services().items():
        argv = exec_start(unit)
        assert unit["Service"]["WorkingDirectory"] == [INSTALL_DIR], name
        if argv[0] == f"{INSTALL_DIR}/.venv/bin/daphne":
            assert argv[-1] == "ruddervirt.asgi:application"
            assert (root() / ".venv" / "bin" / "daphne").exists()
            continue
        assert argv[:2] == [f"{INSTALL_DIR}/.venv/bin/python", "manage.py"], name
        assert argv[2] in commands, f"{name}: manage.py has no command {argv[2]!r}"


def test_long_running_services_restart_on_failure_and_give_up_on_a_crash_loop():
    units = services()
    for name in LONG_RUNNING:
        assert units[name]["Service"]["Restart"] == ["on-failure"], name
        assert units[name]["Unit"]["StartLimitBurst"], name
    assert units["ruddervirt-reconcile.service"]["Service"]["Type"] == ["oneshot"]
    timer = parse_unit(UNITS / "ruddervirt-reconcile.timer")
    assert timer["Timer"]["OnUnitInactiveSec"] == ["60"]


def test_the_target_wants_only_units_that_exist():
    target = parse_unit(UNITS / "ruddervirt.target")
    wanted = [w for line in target["Unit"]["Wants"] for w in line.split()]
    assert wanted
    for unit in wanted:
        prefix, at, rest = unit.partition("@")
        file = f"{prefix}@.{rest.rsplit('.', 1)[1]}" if at else unit
        assert (UNITS / file).exists(), unit


def test_the_units_run_the_same_commands_as_make_run():
    made = portal_services({}, python="python")[0]
    supervised = {s.argv[2] for s in made if "manage.py" in s.argv[1]}
    in_units = {exec_start(u)[2] for u in services().values() if "manage.py" in exec_start(u)}
    assert in_units == supervised  # rqworker, reconcile, watch_ready
    queues = {tuple(exec_start(u)[3:]) for u in services().values() if "rqworker" in exec_start(u)}
    assert queues == {("builds",), ("clones", "default")}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path):
    for path in UNITS.iterdir():
        text = path.read_text().replace(INSTALL_DIR, str(root()))
        names = [path.name.replace("@.", "@1.")] if "@." in path.name else [path.name]
        for name in names:
            (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True, text=True, timeout=30, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.stderr.strip() == "", result.stderr


def test_every_service_starts_after_libvirt_and_redis_and_wants_them():
    for name, unit in services().items():
        after = " ".join(unit["Unit"]["After"]).split()
        wants = " ".join(unit["Unit"]["Wants"]).split()
        for dependency in ("libvirtd.service", "redis-server.service"):
            assert dependency in after and dependency in wants, name


def test_every_service_is_hardened_and_the_portal_and_watcher_see_the_system_read_only():
    units = services()
    for name, unit in units.items():
        for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
            assert unit["Service"][key] == ["yes"], f"{name}: {key}"
    for name in ("ruddervirt-portal.service", "ruddervirt-watch-ready.service"):
        assert units[name]["Service"]["ProtectSystem"] == ["full"], name


def test_the_watchers_period_comes_from_the_environment_with_make_runs_default():
    unit = services()["ruddervirt-watch-ready.service"]
    assert exec_start(unit)[-2:] == ["--every", "${RUDDERVIRT_READY_EVERY}"]
    assert "RUDDERVIRT_READY_EVERY=2" in unit["Service"]["Environment"]
    made = {s.name: s for s in portal_services({}, python="python")[0]}
    assert made["watch_ready"].argv[-2:] == ("--every", "2")
