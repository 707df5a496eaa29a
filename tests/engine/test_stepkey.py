"""The step cache's keys (engine.stepkey): what changes a step's key and what does not."""

from __future__ import annotations

from pathlib import Path

from ruddervirt.engine.stepkey import VMKeys, file_hasher, vm_keys
from ruddervirt.manifest import parse

BASE = """\
timeout: 30m
files:
  - {name: motd, inline: "Welcome"}
  - {name: remote, url: "http://127.0.0.1:1/x", checksum: "sha256:%(sum)s"}
vms:
  - name: web
    source: {url: "http://127.0.0.1:1/disk.qcow2", checksum: "sha256:%(source)s"}
    resources: {cpu: 1, memory: %(memory)s}
    cloudInit: {userData: "%(user_data)s"}
    provisioners:
      - name: %(name)s
        type: shell
        shell: {inline: "%(first)s"}
        stepTimeout: %(step_timeout)s
      - name: motd
        type: file
        file: {fileRef: motd, destination: /etc/motd}
      - name: third
        type: shell
        shell: {inline: "echo three"}
"""
VALUES = {
    "sum": "a" * 64,
    "source": "b" * 64,
    "memory": "256Mi",
    "user_data": "#cloud-config",
    "name": "first",
    "first": "echo one",
    "step_timeout": "5m",
}


def keys(text: str | None = None, *, internet: bool = False, **changes: str) -> VMKeys:
    manifest = parse(text or BASE % {**VALUES, **changes}).for_build()
    vm = manifest.vms[0]
    hashed = file_hasher(manifest, lambda name: b"fetched " + name.encode())
    return vm_keys(vm, manifest, hashed, allow_internet=internet)


def step_keys(result: VMKeys) -> list[str | None]:
    return [s.key for s in result.steps]


def test_every_step_of_a_plain_manifest_has_a_key_and_the_keys_are_a_chain() -> None:
    result = keys()
    assert result.base is not None and None not in step_keys(result)
    assert len(set(step_keys(result))) == 3
    assert keys() == result  # the same manifest gives the same keys


def test_changing_a_step_text_changes_its_key_and_every_later_one_but_not_earlier() -> None:
    before, after = (
        step_keys(keys()),
        step_keys(keys(text=BASE.replace("echo three", "echo 3") % VALUES)),
    )
    assert before[:2] == after[:2] and before[2] != after[2]
    first = step_keys(keys(first="echo uno"))
    assert all(a != b for a, b in zip(first, before, strict=True))


def test_a_file_s_content_is_part_of_the_key_of_the_step_that_uploads_it() -> None:
    before = step_keys(keys())
    after = step_keys(keys(text=(BASE % VALUES).replace('inline: "Welcome"', 'inline: "Hello"')))
    assert before[0] == after[0] and before[1] != after[1] and before[2] != after[2]


def test_the_source_checksum_memory_and_user_data_change_the_base_key() -> None:
    base = keys().base
    assert keys(source="c" * 64).base != base
    assert keys(memory="512Mi").base != base
    assert keys(user_data="#cloud-config\\npackages: [vim]").base != base


def test_a_step_name_its_timeout_the_build_timeout_and_yaml_comments_do_not_change_keys() -> None:
    same = step_keys(keys())
    assert step_keys(keys(name="renamed")) == same
    assert step_keys(keys(step_timeout="1h")) == same
    text = "# a comment\n" + (BASE % VALUES).replace("timeout: 30m", "timeout: 2h  # longer")
    assert step_keys(keys(text=text)) == same


def test_a_url_file_without_checksum_makes_its_step_and_the_later_ones_uncacheable() -> None:
    text = (
        (BASE % VALUES)
        .replace(
            "destination: /etc/motd}",
            "destination: /etc/motd}\n      - type: file\n"
            "        file: {fileRef: loose, destination: /tmp/x}",
        )
        .replace("files:\n", 'files:\n  - {name: loose, url: "http://127.0.0.1:1/y"}\n')
    )
    result = keys(text=text)
    assert [k is not None for k in step_keys(result)] == [True, True, False, False]
    assert "without a checksum" in result.steps[2].why_not
    assert result.cacheable_prefix() == 2


def test_a_handbuild_step_is_not_cacheable_unless_the_manifest_reuses_outside_work() -> None:
    text = (BASE % VALUES).replace(
        "      - name: third",
        "      - type: handbuild\n        handbuild: {instructions: do it}\n      - name: third",
    )
    assert keys(text=text).cacheable_prefix() == 2
    opted = parse("stepCache: {reuseOutside: true}\n" + text).for_build()
    hashed = file_hasher(opted, lambda name: b"")
    assert vm_keys(opted.vms[0], opted, hashed, allow_internet=True).cacheable_prefix() == 4


def test_a_vm_with_internet_while_building_has_no_cacheable_step() -> None:
    result = keys(internet=True)
    assert result.base is None and result.cacheable_prefix() == 0
    assert "internet" in result.why_not


def test_a_build_ref_s_parent_disk_files_are_its_source_identity(tmp_path: Path) -> None:
    text = "vms:\n  - name: web\n    source: {buildRef: {name: base}}\n" \
        "    resources: {cpu: 1, memory: 256Mi}\n"  # fmt: skip
    manifest = parse(text).for_build()
    parent = tmp_path / "root.qcow2"
    parent.write_bytes(b"v1")
    one = vm_keys(
        manifest.vms[0], manifest, lambda n: "", parents=[parent], allow_internet=False
    ).base
    assert one is not None
    other = tmp_path / "other.qcow2"
    other.write_bytes(b"v1")
    assert (
        vm_keys(manifest.vms[0], manifest, lambda n: "", parents=[other], allow_internet=False).base
        != one
    )


def test_a_uefi_vm_has_no_cacheable_step_since_its_nvram_is_not_checkpointed() -> None:
    uefi = BASE.replace("    resources:", "    efiFirmware: {}\n    resources:")
    result = keys(uefi % VALUES)
    assert result.base is None and result.cacheable_prefix() == 0
    assert "NVRAM" in result.why_not
