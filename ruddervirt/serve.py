"""The portal's services, from the environment: what ``make run`` supervises
(``python -m ruddervirt.serve``, started by scripts/run.sh).

One list, read by the supervisor (ruddervirt/supervisor.py) and mirrored by the systemd units
of deploy/systemd (docs/operations.md; tests/test_serve.py holds the two together):

- ``portal``: daphne serving ``ruddervirt.asgi`` on RUDDERVIRT_HOST:RUDDERVIRT_PORT;
- ``worker build-N`` (RUDDERVIRT_BUILD_WORKERS, default 2): RQ workers of the ``builds`` queue;
- ``worker clone-N`` (RUDDERVIRT_CLONE_WORKERS, default 1): RQ workers of ``clones`` and
  ``default``, so a long build never holds up a clone's start or stop;
- ``reconcile``: ``manage.py reconcile --quiet`` every RUDDERVIRT_RECONCILE_EVERY s (60), killed
  when one pass runs longer than :func:`reconcile_timeout` (twice the period, at least 120 s);
- ``watch_ready``: ``manage.py watch_ready --every RUDDERVIRT_READY_EVERY`` (2 s).

The supervisor's log lines go to RUDDERVIRT_SUPERVISOR_LOG (default var/supervisor.log), rotated
at ``LOG_BYTES`` with ``LOG_BACKUPS`` old files kept (supervisor.log.1, ...).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ruddervirt.supervisor import (
    DEFAULT_GRACE_S,
    START,
    Service,
    Supervisor,
    install_signal_handlers,
    log,
)

LOG_BYTES = 5 * 1024 * 1024
LOG_BACKUPS = 3
RECONCILE_TIMEOUT_MIN_S = 120.0


class ConfigError(ValueError):
    """An environment variable of the services has a value they cannot run with."""


def root() -> Path:
    """The checkout: where manage.py is."""
    return Path(__file__).resolve().parent.parent


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, str(default))
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(
            "RUDDERVIRT_BUILD_WORKERS and RUDDERVIRT_CLONE_WORKERS must be at least 1 "
            f"({name}={value!r})"
        )
    return int(value)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name, str(default))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds ({value!r})")
    return seconds


def reconcile_timeout(every: float) -> float:
    """The longest one reconcile pass may run: twice its period, at least 120 s."""
    return max(RECONCILE_TIMEOUT_MIN_S, 2 * every)


def portal_services(env: Mapping[str, str], *, python: str) -> tuple[list[Service], str]:
    """The services for this environment, and the line that says where the portal is.
    Raises ConfigError for a worker count below 1 or a period that is not positive."""
    host = env.get("RUDDERVIRT_HOST", "127.0.0.1")
    port = env.get("RUDDERVIRT_PORT", "8000")
    builds = _count(env, "RUDDERVIRT_BUILD_WORKERS", 2)
    clones = _count(env, "RUDDERVIRT_CLONE_WORKERS", 1)
    reconcile_every = _seconds(env, "RUDDERVIRT_RECONCILE_EVERY", 60)
    ready_every = env.get("RUDDERVIRT_READY_EVERY", "2")
    _seconds(env, "RUDDERVIRT_READY_EVERY", 2)
    manage = (python, str(root() / "manage.py"))
    daphne = str(Path(python).parent / "daphne")
    tag = f"rudder-{os.getpid()}"
    services = [
        Service("portal", (daphne, "-b", host, "-p", port, "ruddervirt.asgi:application")),
        *(
            Service(
                f"worker build-{i}",
                (*manage, "rqworker", "builds", "--name", f"{tag}-build-{i}.{START}"),
            )
            for i in range(1, builds + 1)
        ),
        *(
            Service(
                f"worker clone-{i}",
                (*manage, "rqworker", "clones", "default", "--name", f"{tag}-clone-{i}.{START}"),
            )
            for i in range(1, clones + 1)
        ),
        Service(
            "reconcile",
            (*manage, "reconcile", "--quiet"),
            every=reconcile_every,
            timeout=reconcile_timeout(reconcile_every),
        ),
        Service("watch_ready", (*manage, "watch_ready", "--every", ready_every)),
    ]
    domain_type = env.get("RUDDERVIRT_DOMAIN_TYPE", "kvm")
    banner = (
        f"RudderVirt is at http://{host}:{port}/ (domain type: {domain_type}); "
        "Ctrl-C stops it. A service that exits is restarted (var/supervisor.log)."
    )
    return services, banner


def _log_to(
    path: Path, *, max_bytes: int = LOG_BYTES, backups: int = LOG_BACKUPS
) -> logging.Handler:
    """Log lines (every exit and restart, with a time stamp) to ``path``, rotated once it
    reaches ``max_bytes`` (``backups`` old files kept); the console hears them through
    ``Supervisor.say``. Returns the handler added to the supervisor's logger."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the services of :func:`portal_services` until SIGINT, SIGTERM or SIGHUP."""
    try:
        services, banner = portal_services(os.environ, python=sys.executable)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    _log_to(Path(os.environ.get("RUDDERVIRT_SUPERVISOR_LOG", root() / "var" / "supervisor.log")))
    supervisor = Supervisor(services, cwd=root(), grace=DEFAULT_GRACE_S)
    install_signal_handlers(supervisor)
    print(banner, flush=True)
    supervisor.run()
    print("RudderVirt stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
