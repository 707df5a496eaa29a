"""Does every dependency of the portal answer? The checks of ``manage.py doctor``.

Each check returns a :class:`Check`: its name, whether it passed, one line saying what was
found, and whether a failure is only a warning. None raises; each has a timeout (a dependency
that hangs is a failed check, not a hung doctor). The KVM check boots a tiny guest
(ruddervirt/hypervisor/kvm_probe.py) and takes a few seconds; the others take milliseconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from ruddervirt import proc, programs, redisconf
from ruddervirt.hypervisor import kvm_probe

TIMEOUT_S = 10.0
SYSTEM_BIN = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@dataclass(frozen=True)
class Check:
    """One check's result. ``warning``: a failure that does not stop the portal."""

    name: str
    ok: bool
    message: str
    warning: bool = False


def database() -> Check:
    """The database answers a query and has every migration applied."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception as exc:  # any driver's error: the check reports it, never raises
        return Check("database", False, f"{connection.vendor}: {exc}")
    if pending:
        return Check(
            "database", False, f"{len(pending)} migration(s) not applied: manage.py migrate"
        )
    return Check("database", True, f"{connection.vendor} answers, migrations applied")


def redis_server() -> Check:
    """Redis (REDIS_URL, with its password) answers PING."""
    url = redisconf.with_password(settings.REDIS_URL, settings.REDIS_PASSWORD)
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
        )
        client.ping()
        client.close()
    except (redis.RedisError, OSError) as exc:
        return Check("redis", False, f"{settings.REDIS_URL}: {exc}")
    return Check("redis", True, f"{settings.REDIS_URL} answers")


def libvirtd() -> Check:
    """libvirtd answers on RUDDERVIRT_LIBVIRT_URI (``virsh version``)."""
    uri = settings.RUDDERVIRT_LIBVIRT_URI
    try:
        out = proc.run(["virsh", "-c", uri, "version"], timeout=TIMEOUT_S).stdout.decode()
    except proc.ExternalCommandError as exc:
        return Check("libvirtd", False, f"{uri}: {exc}")
    running = [line.split(":", 1)[1].strip() for line in out.splitlines() if "hypervisor" in line]
    return Check("libvirtd", True, f"{uri} answers ({', '.join(running) or 'no hypervisor line'})")


def missing_programs(path: str | None = None) -> list[str]:
    """Declared programs (scripts/packages.txt, not optional, not pip's) found nowhere on
    ``path`` nor the system folders, each with its package."""
    search = os.pathsep.join([path or os.environ.get("PATH", ""), *SYSTEM_BIN])
    return [
        f"{program} ({'|'.join(package.names)})"
        for program, package in sorted(programs.declared().items())
        if not package.optional and not package.venv and shutil.which(program, path=search) is None
    ]


def declared_programs() -> Check:
    """Every program of scripts/packages.txt is installed."""
    missing = missing_programs()
    if missing:
        return Check(
            "programs", False, "missing: " + ", ".join(missing) + " (run scripts/setup.sh)"
        )
    return Check("programs", True, f"all {len(programs.declared())} declared programs found")


def storage_root() -> Check:
    """RUDDERVIRT_STORAGE_ROOT exists (or can be made) and takes a file."""
    root = Path(settings.RUDDERVIRT_STORAGE_ROOT)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("storage", False, f"{root} is not writable: {exc}")
    return Check("storage", True, f"{root} is writable")


def kvm(probe: Callable[[], kvm_probe.KvmVerdict] = kvm_probe.probe_kvm) -> Check:
    """KVM runs a guest. A failure is an error when RUDDERVIRT_DOMAIN_TYPE is kvm, a warning
    when the portal uses TCG (qemu) anyway."""
    domain_type = settings.RUDDERVIRT_DOMAIN_TYPE
    verdict = probe()
    if verdict.works:
        hint = "" if domain_type == "kvm" else " (RUDDERVIRT_DOMAIN_TYPE=qemu: TCG is slower)"
        return Check("kvm", True, verdict.message + hint)
    if domain_type == "qemu":
        return Check("kvm", False, f"{verdict.message}; TCG is in use", warning=True)
    return Check("kvm", False, verdict.message)


def run_checks(*, with_kvm: bool = True) -> list[Check]:
    """Every check, in order; the KVM probe only when ``with_kvm``."""
    checks: list[Callable[[], Check]] = [
        database, redis_server, libvirtd, declared_programs, storage_root,
    ]  # fmt: skip
    if with_kvm:
        checks.append(kvm)
    results = []
    for check in checks:
        started = time.monotonic()
        result = check()
        took = time.monotonic() - started
        results.append(
            Check(result.name, result.ok, f"{result.message} [{took:.2f}s]", result.warning)
        )
    return results
