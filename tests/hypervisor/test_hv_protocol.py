"""Both drivers satisfy the Hypervisor protocol, and the layer keeps its import rules."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import libvirt
import pytest

import ruddervirt.hypervisor
from ruddervirt.hypervisor.driver import DomainState, Hypervisor
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.hypervisor.libvirt_driver import LibvirtHypervisor, map_state

PROTOCOL_METHODS = sorted(
    name
    for name, value in vars(Hypervisor).items()
    if inspect.isfunction(value) and not name.startswith("_")
)
PACKAGE_DIR = Path(ruddervirt.hypervisor.__file__).parent


def test_protocol_lists_the_whole_interface() -> None:
    domain_ops = "define start shutdown destroy undefine state fault wait_for_state list_domains"
    domain_ops += " agent_ping fsfreeze save restore resume set_guest_time guest_exec"
    console_ops = "console_address send_keys screenshot"
    network_ops = "define_network start_network destroy_network undefine_network list_networks"
    expected = f"{domain_ops} {console_ops} {network_ops} network_exists".split()
    assert sorted(expected) == PROTOCOL_METHODS


@pytest.mark.parametrize("driver_class", [FakeHypervisor, LibvirtHypervisor])
def test_driver_is_a_hypervisor(driver_class: type) -> None:
    assert isinstance(driver_class(), Hypervisor)  # the libvirt one connects lazily


@pytest.mark.parametrize("driver_class", [FakeHypervisor, LibvirtHypervisor])
@pytest.mark.parametrize("method", PROTOCOL_METHODS)
def test_driver_signature_matches_the_protocol(driver_class: type, method: str) -> None:
    def shape(function: object) -> list[tuple[str, object, object]]:
        parameters = inspect.signature(function).parameters.values()  # type: ignore[arg-type]
        return [(p.name, p.kind, p.default) for p in parameters]

    assert shape(getattr(driver_class, method)) == shape(getattr(Hypervisor, method))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_libvirt_driver_imports_libvirt_and_nothing_imports_django() -> None:
    importers = set()
    for path in [*PACKAGE_DIR.glob("*.py"), PACKAGE_DIR.parent / "proc.py"]:
        modules = imported_modules(path)
        assert "django" not in modules, path
        if "libvirt" in modules:
            importers.add(path.name)
    assert importers == {"libvirt_driver.py"}


@pytest.mark.parametrize(
    "state, reason, expected",
    [
        (libvirt.VIR_DOMAIN_RUNNING, 1, DomainState.RUNNING),
        (libvirt.VIR_DOMAIN_BLOCKED, 0, DomainState.RUNNING),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER, DomainState.PAUSED),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_CRASHED, DomainState.CRASHED),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN, DomainState.SHUTOFF),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, DomainState.CRASHED),
        (libvirt.VIR_DOMAIN_CRASHED, 0, DomainState.CRASHED),
        (libvirt.VIR_DOMAIN_PMSUSPENDED, 0, DomainState.OTHER),
    ],
)
def test_libvirt_states_map_to_ours(state: int, reason: int, expected: DomainState) -> None:
    assert map_state(state, reason) is expected
