"""The manifest.md example and the shipped examples/ validate clean."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from ruddervirt.manifest import parse, schema, validate

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(__file__).parent / "examples" / "reference.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
UNPINNED = "the URL contains 'latest'"
# The warnings an example keeps on purpose (message beginnings, in order): the Debian one
# uses Debian's `latest` URL so that it works as pasted (docs/examples.md).
EXPECTED_WARNINGS = {
    "handbuild-appliance.yaml": ["handbuild is a last resort"],
    "debian-12-lab.yaml": [UNPINNED, UNPINNED],
}


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_reference_example_from_manifest_md_is_valid() -> None:
    result = validate(REFERENCE.read_text())
    assert result.errors == [], "\n".join(map(str, result.errors))
    assert result.warnings == []
    manifest = result.manifest
    assert [vm.name for vm in manifest.vms] == ["web", "client"]
    assert manifest.timeout == 45 * 60
    assert manifest.vm("client").source.build_ref.module == "kali-base"
    assert manifest.network.vpc("lab").internet is False
    assert manifest.for_build().network.vpc("lab").internet is True
    assert [s.name for s in manifest.vm("web").provisioners] == ["motd", "nginx", "cleanup"]


def test_there_are_four_to_six_examples() -> None:
    assert 4 <= len(EXAMPLES) <= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates_clean(path: Path) -> None:
    result = validate(path.read_bytes())
    assert result.errors == [], "\n".join(map(str, result.errors))
    expected = EXPECTED_WARNINGS.get(path.name, [])
    assert [
        w.message[: len(e)] for w, e in zip(result.warnings, expected, strict=False)
    ] == expected
    assert len(result.warnings) == len(expected), "\n".join(map(str, result.warnings))
    assert parse(path.read_text()) == result.manifest
