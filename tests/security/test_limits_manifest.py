"""Manifests that ask the host for absurd amounts are refused by the validator, each at
the offending value's path and line, with the cap and the setting that raises it."""

from __future__ import annotations

import dataclasses

import pytest

from ruddervirt.manifest import DEFAULT_LIMITS, NO_LIMITS, Limits, Problem, validate
from ruddervirt.manifest.limits import SETTINGS
from tests.manifest.cases import y

VM = """\
vms:
  - name: web
    source: $SRC
"""


def only_error(text: str, limits: Limits = DEFAULT_LIMITS) -> Problem:
    result = validate(text, limits=limits)
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


def assert_refused(problem: Problem, path: str, line: int, *, limit: str, setting: str) -> None:
    assert (problem.path, problem.line) == (path, line), problem
    assert f"at most {limit}" in problem.message, problem.message
    assert setting in problem.message, problem.message


def test_the_default_limits_accept_an_ordinary_manifest() -> None:
    assert validate(y(VM + "    resources: {cpu: 2, memory: 4Gi}\n")).valid


def test_100000_vcpus_are_refused_at_the_cpu_value() -> None:
    problem = only_error(y(VM + "    resources: {cpu: 100000}\n"))
    assert_refused(
        problem, "vms[0].resources.cpu", 4, limit="16 vCPUs", setting="RUDDERVIRT_MAX_VM_CPUS"
    )
    assert "100000" in problem.message


def test_vcpus_are_counted_after_rounding_up() -> None:
    problem = only_error(y(VM + "    resources: {cpu: '16.5'}\n"))
    assert problem.path == "vms[0].resources.cpu"
    assert validate(y(VM + "    resources: {cpu: 16}\n")).valid


def test_an_exbibyte_of_memory_is_refused() -> None:
    problem = only_error(y(VM + "    resources: {memory: 1Ei}\n"))
    assert_refused(
        problem, "vms[0].resources.memory", 4, limit="64Gi", setting="RUDDERVIRT_MAX_VM_MEMORY"
    )


def test_build_overrides_cannot_ask_for_more_than_the_cap_either() -> None:
    text = y(
        VM
        + """\
        buildOverrides:
          vms: [{name: web, resources: {cpu: 64, memory: 128Gi}}]
        """.replace("        ", "")
    )
    errors = validate(text).errors
    assert [(e.path, e.line) for e in errors] == [
        ("buildOverrides.vms[0].resources.cpu", 5),
        ("buildOverrides.vms[0].resources.memory", 5),
    ]


def test_a_4_exbibyte_disk_is_refused() -> None:
    problem = only_error(y(VM + "    disks: [{name: root, size: 4Ei}]\n"))
    assert_refused(
        problem, "vms[0].disks[0].size", 4, limit="500Gi", setting="RUDDERVIRT_MAX_DISK_SIZE"
    )


def test_a_default_disk_over_a_lowered_cap_is_refused_at_the_vm() -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS, disk_size=10 * 1024**3)
    problem = only_error(y(VM), limits)
    assert_refused(problem, "vms[0]", 2, limit="10Gi", setting="RUDDERVIRT_MAX_DISK_SIZE")
    assert "default 20Gi" in problem.message


def test_a_million_hour_timeout_is_refused() -> None:
    problem = only_error(y("timeout: 1000000h\n" + VM))
    assert_refused(problem, "timeout", 1, limit="24h", setting="RUDDERVIRT_MAX_BUILD_TIMEOUT_S")


def test_retries_cannot_stretch_a_build_past_the_timeout_cap() -> None:
    problem = only_error(y("timeout: 12h\nretries: 2\n" + VM))
    assert_refused(problem, "retries", 2, limit="24h", setting="RUDDERVIRT_MAX_BUILD_TIMEOUT_S")
    assert "3 attempts of up to 12h" in problem.message


def test_step_and_ssh_timeouts_are_capped_too() -> None:
    text = y(
        VM
        + "    communicator: {sshTimeout: 100h}\n"
        + "    provisioners:\n"
        + "      - {type: shell, stepTimeout: 1000h, shell: {inline: 'true'}}\n"
    )
    errors = validate(text).errors
    assert [(e.path, e.line) for e in errors] == [
        ("vms[0].communicator.sshTimeout", 4),
        ("vms[0].provisioners[0].stepTimeout", 6),
    ]
    assert all("RUDDERVIRT_MAX_BUILD_TIMEOUT_S" in e.message for e in errors)


def test_an_iso_cache_ttl_of_years_is_refused() -> None:
    problem = only_error(y("isoCacheTTL: 100000h\n" + VM))
    assert_refused(
        problem, "isoCacheTTL", 1, limit="720h", setting="RUDDERVIRT_MAX_ISO_CACHE_TTL_S"
    )


def test_5000_vms_are_refused_at_the_vms_key() -> None:
    vms = "".join(f"  - {{name: vm{i}, source: $SRC}}\n" for i in range(5000))
    problem = only_error(y("timeout: 1h\nvms:\n" + vms))
    assert_refused(problem, "vms", 2, limit="20 VMs", setting="RUDDERVIRT_MAX_VMS")
    assert "got 5000" in problem.message


def test_21_vms_are_refused_and_20_accepted() -> None:
    def manifest(n: int) -> str:
        return y("vms:\n" + "".join(f"  - {{name: vm{i}, source: $SRC}}\n" for i in range(n)))

    assert validate(manifest(20)).valid
    assert only_error(manifest(21)).path == "vms"


@pytest.mark.parametrize(
    ("block", "path", "limit", "setting"),
    [
        (
            "    disks: [" + ", ".join(f"{{name: d{i}, size: 1Gi}}" for i in range(9)) + "]\n",
            "vms[0].disks",
            "8 disks per VM",
            "RUDDERVIRT_MAX_DISKS_PER_VM",
        ),
        (
            "    provisioners:\n" + "      - {type: shell, shell: {inline: 'true'}}\n" * 101,
            "vms[0].provisioners",
            "100 provisioners per VM",
            "RUDDERVIRT_MAX_PROVISIONERS_PER_VM",
        ),
        (
            "    bootCommand: ['" + "a" * 20001 + "']\n",
            "vms[0].bootCommand",
            "20000 characters",
            "RUDDERVIRT_MAX_BOOT_COMMAND_CHARS",
        ),
    ],
    ids=["disks", "provisioners", "bootCommand"],
)
def test_per_vm_lists_over_their_cap_are_refused_at_their_key(block, path, limit, setting) -> None:
    result = validate(y(VM + block))
    capped = [e for e in result.errors if setting in e.message]
    assert len(capped) == 1, result.errors
    assert_refused(capped[0], path, 4, limit=limit, setting=setting)


def test_more_isos_than_the_cap_are_refused() -> None:
    isos = ", ".join(["$ISO"] * 5)
    text = y(f"vms:\n  - name: inst\n    source: {{blank: true}}\n    isos: [{isos}]\n")
    problem = only_error(text)
    assert_refused(
        problem, "vms[0].isos", 4, limit="4 ISOs per VM", setting="RUDDERVIRT_MAX_ISOS_PER_VM"
    )


def test_more_files_than_the_cap_are_refused() -> None:
    files = "".join(f"  - {{name: f{i}, inline: x}}\n" for i in range(101))
    problem = only_error(y("files:\n" + files + VM))
    assert_refused(problem, "files", 1, limit="100 files", setting="RUDDERVIRT_MAX_FILES")


def test_more_subnets_than_the_cap_are_refused() -> None:
    subnets = ", ".join(f"{{name: s{i}, vpc: lab, cidr: 10.{i}.0.0/24}}" for i in range(17))
    nics = "    nics: [{name: eth0, subnet: s0}]\n"
    text = y(f"network:\n  vpcs: [{{name: lab}}]\n  subnets: [{subnets}]\n" + VM + nics)
    problem = only_error(text)
    assert_refused(
        problem, "network.subnets", 3, limit="16 subnets", setting="RUDDERVIRT_MAX_NETWORKS"
    )


def test_a_cap_given_by_the_caller_is_the_one_applied() -> None:
    strict = dataclasses.replace(DEFAULT_LIMITS, vm_cpus=2)
    assert only_error(y(VM + "    resources: {cpu: 4}\n"), strict).path == "vms[0].resources.cpu"
    generous = dataclasses.replace(DEFAULT_LIMITS, vm_cpus=128)
    assert validate(y(VM + "    resources: {cpu: 100}\n"), limits=generous).valid


def test_no_limits_is_for_rereading_accepted_text_only() -> None:
    text = y("timeout: 1000000h\n" + VM + "    resources: {cpu: 100000, memory: 1Ei}\n")
    assert validate(text, limits=NO_LIMITS).valid
    assert len(validate(text).errors) == 3


def test_every_cap_has_a_setting() -> None:
    assert set(SETTINGS) == {f.name for f in dataclasses.fields(Limits)}
