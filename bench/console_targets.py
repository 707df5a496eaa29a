"""The benchmark's console kind: object id = a VNC port on 127.0.0.1 (fake RFB servers or
QEMU domains the benchmark started). Any logged-in user may open them; only the
benchmark's settings (bench/console_settings.py) register this kind."""

from __future__ import annotations

from typing import Any

from ruddervirt.hypervisor.driver import ConsoleAddress


def resolve(user: Any, object_id: int, vm_name: str) -> str:
    return f"bench-{object_id}"


def locate(domain_name: str) -> ConsoleAddress:
    return ConsoleAddress(host="127.0.0.1", port=int(domain_name.removeprefix("bench-")))
