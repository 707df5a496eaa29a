"""Creating a build's or clone's networks, and removing everything an owner left behind.

Ownership is read from the metadata every domain and network carries (kind + id), never
guessed from names alone, so cleanup of one build cannot touch another's VMs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from ruddervirt.hypervisor.driver import DomainState, Hypervisor, HypervisorError
from ruddervirt.hypervisor.specs import NetworkSpec


def create_networks(hv: Hypervisor, networks: Iterable[NetworkSpec]) -> None:
    for spec in networks:
        hv.define_network(spec)
        hv.start_network(spec.name)


def owned(metadata: Mapping[str, str], owner: Mapping[str, str]) -> bool:
    """Whether `metadata` carries every tag of `owner`."""
    return all(metadata.get(k) == v for k, v in owner.items())


def remove_domain(hv: Hypervisor, name: str) -> None:
    if hv.state(name) not in (DomainState.SHUTOFF, DomainState.ABSENT):
        hv.destroy(name)
    hv.undefine(name)


def remove_owned(
    hv: Hypervisor,
    prefix: str,
    owner: Mapping[str, str],
    *,
    keep_domains: Collection[str] = (),
) -> list[str]:
    """Destroy and undefine every domain and network under `prefix` whose metadata
    matches all of `owner` (e.g. {"kind": "build", "build": "b42"}). Returns what went.
    The domains named in `keep_domains` stay, and with any of them the networks too (a
    failed build VM kept for inspection: engine.build)."""
    removed: list[str] = []
    errors: list[str] = []
    for domain in hv.list_domains(prefix):
        if domain.name in keep_domains:
            continue
        if owned(domain.metadata, owner):
            try:
                remove_domain(hv, domain.name)
                removed.append(f"domain {domain.name}")
            except HypervisorError as exc:
                errors.append(f"domain {domain.name}: {exc}")
    if not keep_domains:
        _remove_networks(hv, prefix, owner, removed, errors)
    if errors:
        raise HypervisorError("cleanup left things behind: " + "; ".join(errors))
    return removed


def remove_owned_networks(hv: Hypervisor, prefix: str, owner: Mapping[str, str]) -> list[str]:
    """Like remove_owned, for the networks only (a build's, once its VMs are off)."""
    removed: list[str] = []
    errors: list[str] = []
    _remove_networks(hv, prefix, owner, removed, errors)
    if errors:
        raise HypervisorError("cleanup left things behind: " + "; ".join(errors))
    return removed


def _remove_networks(
    hv, prefix: str, owner: Mapping[str, str], removed: list[str], errors: list[str]
) -> None:
    for network in hv.list_networks(prefix):
        if owned(network.metadata, owner):
            try:
                if network.active:
                    hv.destroy_network(network.name)
                hv.undefine_network(network.name)
                removed.append(f"network {network.name}")
            except HypervisorError as exc:
                errors.append(f"network {network.name}: {exc}")
