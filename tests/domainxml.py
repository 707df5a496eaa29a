"""Reading the management NIC out of a domain's XML (the QEMU command-line arguments that
add it), for the tests of domain_xml and of machine_spec."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ruddervirt.hypervisor.domain_xml import QEMU_NS


def mgmt_args(root: ET.Element) -> list[str]:
    return [arg.get("value", "") for arg in root.findall(f"./{{{QEMU_NS}}}commandline/*")]


def options(value: str) -> dict[str, str]:
    """'user,id=x,restrict=on' -> {'user': '', 'id': 'x', 'restrict': 'on'}."""
    pairs = (part.partition("=") for part in value.split(","))
    return {key: val for key, _, val in pairs}
