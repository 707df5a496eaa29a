"""Loading: limits against hostile input, duplicate and non-string keys, positions."""

from __future__ import annotations

import time

import pytest

from ruddervirt.manifest import MAX_BYTES, NO_LIMITS, loader, validate
from ruddervirt.manifest.loader import LoadError, load
from tests.manifest.cases import y

VALID = y("""
  vms:
    - name: web
      source: $SRC
  """)


def only_error(text: str | bytes):
    result = validate(text)
    assert len(result.errors) == 1, "\n".join(map(str, result.errors))
    assert result.manifest is None
    return result.errors[0]


def test_document_of_exactly_one_mib_is_accepted() -> None:
    text = VALID + "#" * (MAX_BYTES - len(VALID.encode()) - 1) + "\n"
    assert len(text.encode()) == MAX_BYTES
    assert validate(text).valid


def test_document_over_one_mib_is_rejected_without_position() -> None:
    text = VALID + "#" * (MAX_BYTES - len(VALID.encode())) + "\n"
    error = only_error(text)
    assert "the limit is 1048576 bytes (1 MiB)" in error.message
    assert (error.path, error.line, error.column) == ("", None, None)


def test_size_limit_counts_bytes_not_characters() -> None:
    text = VALID + "# " + "é" * (MAX_BYTES // 2) + "\n"  # fewer characters than the limit
    assert len(text) < MAX_BYTES
    assert "the limit is" in only_error(text).message


def billion_laughs(levels: int, width: int) -> str:
    lines = ["a0: &a0 [lol]"]
    for level in range(1, levels + 1):
        refs = ", ".join(f"*a{level - 1}" for _ in range(width))
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\nvms: []\n"


def test_alias_bomb_with_many_aliases_is_rejected_fast() -> None:
    started = time.monotonic()
    error = only_error(billion_laughs(levels=9, width=12))  # 108 aliases, 12**9 values
    assert "too many YAML aliases (more than 100)" in error.message
    assert error.line is not None
    assert time.monotonic() - started < 1


def test_alias_bomb_within_alias_limit_is_rejected_by_expanded_size() -> None:
    started = time.monotonic()
    error = only_error(billion_laughs(levels=9, width=10))  # 90 aliases, 10**9 values
    assert "expands (through aliases) to more than 100000 values" in error.message
    assert time.monotonic() - started < 1


def test_a_few_aliases_and_merge_keys_are_fine() -> None:
    text = y("""
      vms:
        - &base
          name: web
          source: $SRC
          resources: {cpu: 2}
        - <<: *base
          name: db
      """)
    result = validate(text)
    assert result.valid, result.errors
    assert [vm.resources.cpu for vm in result.manifest.vms] == [2, 2]
    assert result.manifest.vms[1].name == "db"


def test_recursive_alias_is_rejected() -> None:
    error = only_error("a: &a [*a]\nvms: []\n")
    assert "refers to a value that contains it" in error.message


def test_deep_nesting_is_rejected_without_recursion_error() -> None:
    error = only_error("vms: " + "[" * 2000 + "]" * 2000 + "\n")
    assert "nested more than 50 levels deep" in error.message
    assert error.line == 1


def test_duplicate_key_names_both_lines() -> None:
    text = y("""
      vms:
        - name: web
          source: $SRC
          name: db
      """)
    error = only_error(text)
    assert error.path == "vms[0].name"
    assert (error.line, error.column) == (4, 5)
    assert "duplicate key 'name' (first on line 2, again on line 4)" in error.message


def test_every_duplicate_key_is_reported() -> None:
    text = "timeout: 1m\ntimeout: 2m\nvms:\n  - {name: a, name: b}\n"
    errors = validate(text).errors
    assert [(e.path, e.line) for e in errors] == [("timeout", 2), ("vms[0].name", 4)]


def test_merge_key_override_is_not_a_duplicate() -> None:
    text = y("""
      vms:
        - <<: {name: web, source: $SRC}
          name: app
      """)
    result = validate(text)
    assert result.valid, result.errors
    assert result.manifest.vms[0].name == "app"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("- name: web\n", "got a list"),
        ("just a string\n", "got a single value"),
    ],
)
def test_root_must_be_a_mapping(text: str, kind: str) -> None:
    error = only_error(text)
    assert "the manifest must be a mapping" in error.message
    assert kind in error.message
    assert error.line == 1


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "~\n", "---\n"])
def test_empty_document_is_rejected(text: str) -> None:
    assert "the manifest is empty" in only_error(text).message


@pytest.mark.parametrize(
    ("text", "path", "line", "message"),
    [
        (
            "on: push\nvms: []\n",
            "on",
            1,
            "key 'on' is read as a boolean, not a string; quote it ('on')",
        ),
        ("vms:\n  - name: web\n    yes: 1\n", "vms[0].yes", 3, "key 'yes' is read as a boolean"),
        ("vms: []\n1: x\n", '["1"]', 2, "key '1' is read as an integer"),
        ("vms: []\n~: x\n", '["~"]', 2, "is read as null"),
        ("vms: []\n? [a, b]\n: x\n", "", 2, "keys must be plain strings, not lists or mappings"),
    ],
)
def test_non_string_keys_are_rejected(text: str, path: str, line: int, message: str) -> None:
    error = only_error(text)
    assert (error.path, error.line) == (path, line)
    assert message in error.message


def test_quoted_yaml11_boolean_key_is_a_string() -> None:
    text = VALID + '"on": push\n'
    errors = validate(text).errors
    assert [(e.path, e.line) for e in errors] == [("on", 4)]
    assert "unknown key 'on'" in errors[0].message


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ("vms:\n  - name: web\n    source: {url: x\n", 4, 1, "YAML syntax error"),
        ("vms:\n  - name: web\n\tsource: {}\n", 3, 1, "found character '\\t'"),
        ("vms: [a\nb: c\n", 2, 2, "YAML syntax error"),
        ("vms: []\n---\nvms: []\n", 2, 1, "expected a single YAML document"),
        ("vms: *nowhere\n", 1, 6, "undefined alias"),
        ("vms: !!python/object:os.system {}\n", 1, 6, "could not determine a constructor"),
        ("vms: []\ncreated: 2024-02-30\n", 1, 1, "YAML value cannot be read"),
        ("vms: [\x07]\n", 1, 7, "special characters are not allowed"),
    ],
)
def test_yaml_errors_have_line_and_column(text: str, line: int, column: int, message: str) -> None:
    error = only_error(text)
    assert (error.line, error.column) == (line, column), error
    assert message in error.message


def test_bytes_must_be_utf8_and_the_bad_byte_is_located() -> None:
    error = only_error(b"vms:\n  - name: w\xffb\n")
    assert "not UTF-8" in error.message
    assert (error.line, error.column) == (2, 12)


def test_bytes_with_bom_are_accepted() -> None:
    assert validate("\ufeff".encode() + VALID.encode()).valid
    assert validate("\ufeff" + VALID).valid


def test_non_text_input_is_an_error_not_an_exception() -> None:
    assert not validate(None).valid  # type: ignore[arg-type]


def test_position_index_has_keys_and_values_one_based() -> None:
    loaded = load('a:\n  b: [x, {c: 1}]\n  "d.e": 2\n')
    index = loaded.index
    assert index.keys["a"] == (1, 1)
    assert index.keys["a.b"] == (2, 3)
    assert index.values["a.b"] == (2, 6)
    assert index.values["a.b[0]"] == (2, 7)
    assert index.keys["a.b[1].c"] == (2, 11)
    assert index.values["a.b[1].c"] == (2, 14)
    assert index.keys['a["d.e"]'] == (3, 3)
    # A scalar is located at its value, a collection at its key, a missing path at its parent.
    assert index.locate("a.b[1].c") == (2, 14)
    assert index.locate("a.b") == (2, 3)
    assert index.locate("a.b[1].missing") == (2, 10)


def test_load_error_carries_problems() -> None:
    with pytest.raises(LoadError) as caught:
        load("- x\n")
    assert caught.value.problems[0].line == 1


def test_document_with_too_many_values_is_refused_while_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loader, "MAX_NODES", 1000)  # the real limit, 100000, takes ~2 s to hit
    error = only_error("vms: [" + ",".join(["1"] * 1000) + "]\n")
    assert "the document has more than 1000 values" in error.message
    # The root mapping, the key `vms` and the list are values too: item 998 is the 1001st.
    assert (error.line, error.column) == (1, 1 + len("vms: [") + 2 * 997)


def test_error_list_is_capped_with_a_note() -> None:
    # No caps here: the cap on VMs would add its own error before these.
    result = validate("vms: [" + ",".join(["1"] * 500) + "]\n", limits=NO_LIMITS)
    assert len(result.errors) == 201
    assert all(e.path == f"vms[{i}]" for i, e in enumerate(result.errors[:200]))
    assert result.errors[-1].message == "too many errors: only the first 200 are listed"
