"""What the tests left on the host, and removing it."""

from __future__ import annotations

from ruddervirt.engine.cleanup import remove_owned


def build_leftovers(hv, prefix: str) -> list[str]:
    found = [
        f"domain {d.name}" for d in hv.list_domains(prefix) if d.metadata.get("kind") == "build"
    ]
    found += [
        f"network {n.name}" for n in hv.list_networks(prefix) if n.metadata.get("kind") == "build"
    ]
    return found


def remove_everything(hv, prefix: str) -> None:
    remove_owned(hv, prefix, {})  # no owner to match: every domain and network under prefix
