"""The composition root: where Django's settings become the engine's objects.

The apps (builds, clones, consoles), the management commands and the benchmarks take their
hypervisor, their engine configuration and this process's worker identity from here, so
none of them needs another app for it. It imports the core (ruddervirt.engine,
ruddervirt.hypervisor) and no app; the core never imports it.
"""

from __future__ import annotations

import atexit
import os
import socket
from pathlib import Path

from django.conf import settings
from django.utils.module_loading import import_string

from ruddervirt.engine.config import EngineConfig
from ruddervirt.fetch_settings import portal_fetch_policy
from ruddervirt.hypervisor.driver import Hypervisor

_hypervisor: Hypervisor | None = None


def engine_config() -> EngineConfig:
    """The engine's settings, read from Django's (the environment, see settings.py)."""
    return EngineConfig(
        storage_root=Path(settings.RUDDERVIRT_STORAGE_ROOT),
        domain_type=settings.RUDDERVIRT_DOMAIN_TYPE,
        name_prefix=settings.RUDDERVIRT_NAME_PREFIX,
        allow_internet=settings.RUDDERVIRT_ALLOW_INTERNET,
        boot_key_interval_s=settings.RUDDERVIRT_BOOT_KEY_INTERVAL_MS / 1000,
        boot_key_hold_ms=settings.RUDDERVIRT_BOOT_KEY_HOLD_MS,
        fetch_policy=portal_fetch_policy(),
        # A cap of 0 turns the cache off (never "no cap": the cache is always bounded).
        step_cache=settings.RUDDERVIRT_STEP_CACHE and settings.RUDDERVIRT_STEP_CACHE_MAX_BYTES > 0,
        step_cache_max_bytes=settings.RUDDERVIRT_STEP_CACHE_MAX_BYTES or None,
        step_cache_max_age_s=settings.RUDDERVIRT_STEP_CACHE_MAX_AGE_S or None,
    )


def get_hypervisor() -> Hypervisor:
    """The process-wide hypervisor, made on first use (views that never ask need no libvirt).

    RUDDERVIRT_HYPERVISOR names its class by dotted path; it is called as
    ``cls(RUDDERVIRT_LIBVIRT_URI, name_prefix=RUDDERVIRT_NAME_PREFIX)``, and its ``close()``,
    when it has one, runs at interpreter exit."""
    global _hypervisor
    if _hypervisor is None:
        factory = import_string(settings.RUDDERVIRT_HYPERVISOR)
        hv = factory(settings.RUDDERVIRT_LIBVIRT_URI, name_prefix=settings.RUDDERVIRT_NAME_PREFIX)
        close = getattr(hv, "close", None)
        if close is not None:
            # Close while the interpreter is intact (libvirt's __del__ fails at shutdown).
            atexit.register(close)
        _hypervisor = hv
    return _hypervisor


def worker_identity() -> str:
    """This process as a build or clone records its worker: "host:pid"."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(identity: str) -> bool | None:
    """Whether the worker `identity` ("host:pid", as recorded on a build or clone) is alive:
    True/False when it ran on this host; None when we cannot tell."""
    host, _, pid = identity.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return process_alive(int(pid))


def process_alive(pid: int | None) -> bool:
    """Whether `pid` runs on this host (a zombie, killed but not reaped, does not count)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}
