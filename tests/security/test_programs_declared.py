"""Every external program the code runs is declared once, in scripts/packages.txt, with the
Debian package it comes from, and setup installs exactly those packages: so `make test` on a
fresh machine never meets a missing tool (it did: grub-mkstandalone).

Two nets catch an undeclared program: a static scan of the sources (programscan.py), and the
check every process the tests start goes through (conftest.py turns it on; proc.run also
checks in the tests' child processes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ruddervirt import proc, programs
from tests.security import programscan

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("ruddervirt", "tools", "tests", "bench", "scripts", "accounts", "builds", "clones",
           "consoles", "modules")  # fmt: skip
# Launches whose program is not declared on purpose, with the reason.
EXPECTED_UNDECLARED = {
    "rv-no-such-tool": "tests/hypervisor/test_hv_proc.py runs a program that does not exist",
    "rv-undeclared": "this file proves that an undeclared program fails the tests",
}
OWN_SCRIPTS = {p.name for p in (ROOT / "scripts").iterdir()}  # setup.sh, redis.sh: ours
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's, not /usr/local or a user's PATH


def test_every_program_the_sources_run_is_declared() -> None:
    launches = programscan.scan(ROOT, FOLDERS)
    assert len(launches) > 50  # the scan sees the code at all
    unresolved = [launch.where() for launch in launches if launch.program is None]
    assert not unresolved, f"cannot tell which program these run: {unresolved}"
    undeclared = {
        launch.where(): launch.program
        for launch in launches
        if launch.program != programscan.PYTHON
        and os.path.basename(launch.program or "") not in programs.declared()
        and os.path.basename(launch.program or "") not in {*EXPECTED_UNDECLARED, *OWN_SCRIPTS}
    }
    assert not undeclared, f"add these to scripts/packages.txt: {undeclared}"


def test_the_scan_sees_programs_behind_constants_wrappers_and_namespaces(tmp_path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "tool.py").write_text(
        "import shutil, subprocess\n"
        "from ruddervirt.proc import run\n"
        'ONE = shutil.which("rv-one", path="/usr/sbin") or "rv-one"\n'
        'TWO = ["rv-two", "-q"]\n'
        "def _ip(*args):\n"
        '    return run(["ip", *args], timeout=5)\n'
        "def go(ns):\n"
        '    run([ONE, "x"], timeout=5)\n'
        '    subprocess.run([*TWO, "y"], timeout=5)\n'
        '    args = ["rv-three"]\n'
        "    subprocess.Popen(args)\n"
        '    run(["ip", "netns", "exec", ns, "rv-four"], timeout=5)\n'
        '    _ip("link")\n'
    )
    found = {launch.program for launch in programscan.scan(tmp_path, ("pkg",))}
    assert found == {"rv-one", "rv-two", "rv-three", "rv-four", "ip"}


def test_running_an_undeclared_program_fails_the_tests() -> None:
    assert os.environ.get(programs.CHECK_ENV) == "1"  # conftest.py turned the check on
    with pytest.raises(programs.UndeclaredProgram, match="rv-undeclared"):
        proc.run(["rv-undeclared", "--version"], timeout=5)
    with pytest.raises(programs.UndeclaredProgram, match="rv-undeclared"):
        subprocess.run(["/usr/bin/rv-undeclared"], timeout=5, check=False)  # any launcher
    assert programs.undeclared(["ip", "netns", "exec", "ns1", "rv-undeclared"]) == "rv-undeclared"
    assert programs.undeclared(["ip", "netns", "exec", "ns1", "dnsmasq", "-k"]) is None
    assert programs.undeclared([sys.executable, "-c", "pass"]) is None  # the virtualenv's


def test_setup_installs_exactly_the_declared_packages() -> None:
    listed = subprocess.run(
        [str(ROOT / "scripts" / "setup.sh"), "--list-packages"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()  # fmt: skip
    wanted = ["|".join(p.names) for p in programs.packages() if not (p.optional or p.venv)]
    assert listed == wanted
    assert {"grub-efi-amd64-bin", "grub-common", "iptables", "mmdebstrap"} <= set(listed)


def test_setup_installs_an_optional_package_only_when_named_and_refuses_unknown_ones() -> None:
    listed = subprocess.run(
        [str(ROOT / "scripts" / "setup.sh"), "--list-packages", "--with", "packer"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()  # fmt: skip
    wanted = [
        "|".join(p.names)
        for p in programs.packages()
        if not p.venv and (not p.optional or p.names == ("packer",))
    ]
    assert listed == wanted
    assert "packer" in listed and "systemd" not in listed
    refused = subprocess.run(
        [str(ROOT / "scripts" / "setup.sh"), "--list-packages", "--with", "qemu-utils"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "not an optional package" in refused.stderr


def _owners(paths: list[str]) -> dict[str, set[str]]:
    """dpkg's owning packages of each path (none for a path no package ships)."""
    out = subprocess.run(
        ["dpkg-query", "-S", *paths], capture_output=True, text=True, timeout=60, check=False
    ).stdout  # exits 1 when some path has no owner: expected for the aliases tried
    owners: dict[str, set[str]] = {}
    for line in out.splitlines():
        names, _, path = line.partition(": ")
        owners.setdefault(path, set()).update(n.split(":")[0] for n in names.split(", "))
    return owners


def _candidates(program: str) -> list[str]:
    """The path the system runs for ``program`` and what dpkg may call it (the link itself,
    its target, and their /bin <-> /usr/bin aliases of the merged /usr)."""
    found = shutil.which(program, path=SYSTEM_PATH)
    if found is None:
        return []
    paths = {found, os.path.realpath(found)}
    for path in list(paths):
        paths.add(path.removeprefix("/usr") if path.startswith("/usr/") else "/usr" + path)
    return sorted(paths)


def _installed(packages: list[str]) -> set[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Status}\n", *packages],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout  # exits 1 when some package is unknown: an optional one, or a problem below
    rows = (line.split("\t") for line in out.splitlines())
    return {row[0] for row in rows if row[-1] == "install ok installed"}


def test_every_declared_program_comes_from_its_debian_package_installed_here() -> None:
    problems = []
    checked = [p for p in programs.packages() if not p.venv]
    installed = _installed([name for p in checked for name in p.names])
    paths = {prog: _candidates(prog) for p in checked for prog in p.programs}
    owners = _owners([path for found in paths.values() for path in found])
    for package in checked:
        if not installed & set(package.names):
            if not package.optional:
                problems.append(f"{'|'.join(package.names)} is not installed")
            continue
        for program in package.programs:
            owned = {name for path in paths[program] for name in owners.get(path, ())}
            if not paths[program]:
                problems.append(f"{program} ({package.names[0]}) is not on {SYSTEM_PATH}")
            elif not owned & set(package.names):
                problems.append(f"{program} comes from {sorted(owned)}, not {package.names}")
    assert not problems, problems
