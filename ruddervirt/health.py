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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from django.conf import settings
from django.db import connection, connections
from django.db.migrations.executor import MigrationExecutor
from rq import Worker

from ruddervirt import proc, programs, redisconf
from ruddervirt.hypervisor import kvm_probe

TIMEOUT_S = 10.0
# The HTTP health check (/healthz/ready) answers within this, and runs its checks at most
# once per CACHE_S whatever the number of requests.
HTTP_TIMEOUT_S = 5.0
CACHE_S = 5.0
# The queues that need a worker each (settings.RQ_QUEUES; "default" is served by clone workers).
WORKER_QUEUES = ("builds", "clones")
SYSTEM_BIN = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@dataclass(frozen=True)
class Check:
    """One check's result. ``warning``: a failure that does not stop the portal."""

    name: str
    ok: bool
    message: str
    warning: bool = False


def database(timeout: float = TIMEOUT_S) -> Check:
    """The database answers a query and has every migration applied, within ``timeout``
    (a database that does not answer, a lock held forever, is a failed check)."""
    return in_threads({"database": _database}, timeout)[0]


def _database() -> Check:
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


def guarded(check: Callable[[], Check], name: str, *, own_connection: bool = False) -> Check:
    """``check()``, or a failed ``name`` check when it raises. ``own_connection``: close this
    thread's database connections afterwards (for a check run in a thread of its own)."""
    try:
        return check()
    except Exception as exc:  # a check that raises is a failed check
        return Check(name, False, f"{type(exc).__name__}: {exc}")
    finally:
        if own_connection:
            connections.close_all()


def in_threads(
    checks: dict[str, Callable[[], Check]], timeout: float, *, database: str = "database"
) -> list[Check]:
    """Every check of ``checks`` at once, each in a daemon thread; one that has not answered
    within ``timeout`` is a failed check (its thread is left to finish on its own)."""
    results: dict[str, Check] = {}

    def run(name: str, check: Callable[[], Check]) -> None:
        results[name] = guarded(check, name, own_connection=name == database)

    threads = [
        threading.Thread(target=run, args=item, name=f"health-{item[0]}", daemon=True)
        for item in checks.items()
    ]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    late = f"no answer within {timeout:g}s"
    return [results.get(name) or Check(name, False, late) for name in checks]


def _redis_client(timeout: float) -> redis.Redis:
    url = redisconf.with_password(settings.REDIS_URL, settings.REDIS_PASSWORD)
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def redis_server() -> Check:
    """Redis (REDIS_URL, with its password) answers PING."""
    try:
        client = _redis_client(TIMEOUT_S)
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


def workers(queues: Sequence[str] = WORKER_QUEUES, timeout: float = TIMEOUT_S) -> Check:
    """Every queue of ``queues`` has an RQ worker registered in Redis. A worker that exits
    removes its registration; one killed outright stays listed until its key expires (RQ's
    worker TTL, 420 s), so this sees a dead worker within minutes, not at once."""
    try:
        client = _redis_client(timeout)
        found = Worker.all(connection=client)
        client.close()
    except (redis.RedisError, OSError) as exc:
        return Check("workers", False, f"cannot list them: {exc}")
    counts = {q: sum(q in w.queue_names() for w in found) for q in queues}
    said = ", ".join(f"{q}: {n}" for q, n in counts.items())
    if not all(counts.values()):
        idle = [q for q, n in counts.items() if not n]
        return Check("workers", False, f"no worker for {', '.join(idle)} ({said})")
    return Check("workers", True, said)


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


def portal_checks(timeout: float = HTTP_TIMEOUT_S) -> list[Check]:
    """What the HTTP health check reports: the database, Redis, libvirtd and the workers,
    checked at once, all answered within ``timeout``."""
    checks: dict[str, Callable[[], Check]] = {
        "database": _database, "redis": redis_server, "libvirtd": libvirtd,
        "workers": lambda: workers(timeout=timeout),
    }  # fmt: skip
    return in_threads(checks, timeout)


_cache_lock = threading.Lock()
_cached: tuple[float, list[Check]] | None = None


def cached_portal_checks(max_age: float = CACHE_S) -> list[Check]:
    """portal_checks(), run again only when the last answer is older than ``max_age``: a
    flood of health requests runs one round of checks (and one virsh) per ``max_age``."""
    global _cached
    with _cache_lock:
        if _cached is None or time.monotonic() - _cached[0] >= max_age:
            _cached = (time.monotonic(), portal_checks())
        return _cached[1]
