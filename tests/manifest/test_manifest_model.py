"""The dataclasses: every default applied, build overrides, JSON form, the public API."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ruddervirt.manifest import ManifestInvalid, Problem, parse, validate
from ruddervirt.manifest.model import (
    BuildRef,
    CloudInit,
    Communicator,
    Disk,
    EfiFirmware,
    EnvVar,
    FileStep,
    HandbuildStep,
    Iso,
    Manifest,
    Nic,
    RebootStep,
    Resources,
    ShellStep,
    Source,
    Subnet,
    Vpc,
)
from tests.manifest.cases import CHECKSUM, PINNED_URL, y

GI, MI = 1024**3, 1024**2


def minimal() -> Manifest:
    return parse(
        y("""
      vms:
        - name: web
          source: $SRC
      """)
    )


def test_minimal_manifest_gets_every_default() -> None:
    manifest = minimal()
    assert manifest.timeout == 1800.0
    assert manifest.retries == 0
    assert manifest.iso_cache_ttl == 86400.0
    assert manifest.files == ()
    assert manifest.http_files == ()
    assert manifest.network.vpcs == (Vpc("default", internet=True),)
    assert manifest.network.subnets == (Subnet("default", "default", "10.77.0.0/24", dhcp=True),)
    (vm,) = manifest.vms
    assert vm.source == Source("url", url=PINNED_URL, checksum=CHECKSUM)
    assert vm.resources == Resources(cpu=1, memory=GI)
    assert vm.disks == (Disk("root", 20 * GI, "virtio"),)
    assert vm.communicator == Communicator("ssh", "bash", "root", 22, None, 300.0, None)
    assert vm.nics == (Nic("eth0", "default", slot=1, ip=None, mac=None, model="virtio"),)
    assert vm.cloud_init is None
    assert vm.efi_firmware is None
    assert (vm.boot_command, vm.isos, vm.floppy_files, vm.provisioners) == ((), (), (), ())
    assert vm.invisible is False
    assert vm.generalize is True  # templates are generalized unless a VM opts out


def test_a_vm_can_opt_out_of_generalization() -> None:
    manifest = parse(
        y("""
      vms:
        - name: keep
          source: $SRC
          generalize: false
        - name: clean
          source: $SRC
          generalize: true
      """)
    )
    assert [vm.generalize for vm in manifest.vms] == [False, True]


def test_how_a_vm_is_stopped_for_its_capture_defaults_by_its_shell() -> None:
    manifest = parse(
        y("""
      vms:
        - name: linux
          source: $SRC
        - name: db
          source: $SRC
          shutdown: graceful
        - name: windows
          source: $SRC
          communicator: {shell: powershell}
      """)
    )
    assert [vm.shutdown_mode for vm in manifest.vms] == ["fast", "graceful", "graceful"]


def test_default_subnet_gateway_is_its_first_host() -> None:
    assert minimal().network.subnets[0].gateway == "10.77.0.1"
    assert Subnet("s", "v", "10.0.0.0/29", unmanaged=True).gateway is None


def test_declared_network_defaults() -> None:
    manifest = parse(
        y("""
      network:
        vpcs: [{name: lab}]
        subnets: [{name: lan, cidr: 10.10.0.0/24}]
      vms:
        - name: web
          source: $SRC
        - name: db
          source: $SRC
          nics:
            - {name: eth0, slot: 1}
            - {name: eth1, mac: '52:54:00:AB:CD:EF'}
            - {name: eth2, slot: 3, model: e1000}
            - {name: eth3}
      """)
    )
    assert manifest.network.vpcs == (Vpc("lab", internet=False),)
    assert manifest.network.subnets[0].vpc == "lab"  # the only VPC
    assert manifest.vm("web").nics == (Nic("eth0", "lan", 1),)
    nics = manifest.vm("db").nics
    assert [(n.name, n.subnet, n.slot) for n in nics] == [
        ("eth0", "lan", 1),
        ("eth1", "lan", 4),
        ("eth2", "lan", 3),
        ("eth3", "lan", 5),
    ]
    assert nics[1].mac == "52:54:00:ab:cd:ef"
    assert nics[2].model == "e1000"


@pytest.mark.parametrize(
    ("nics", "slots"),
    [
        ("[{name: a}, {name: b}, {name: c}]", [1, 2, 3]),
        ("[{name: a}, {name: b, slot: 1}, {name: c}, {name: d, slot: 2}]", [3, 1, 4, 2]),
        ("[{name: a, slot: 5}, {name: b}, {name: c}]", [5, 6, 7]),
        ("[{name: a, slot: 8}, {name: b}, {name: c}, {name: d}]", [8, 9, 1, 2]),
    ],
)
def test_unwritten_slots_go_above_the_highest_written_one_then_below(
    nics: str, slots: list[int]
) -> None:
    manifest = parse(y("vms: [{name: web, source: $SRC, nics: " + nics + "}]"))
    assert [n.slot for n in manifest.vms[0].nics] == slots


def test_values_are_converted_to_seconds_bytes_and_vcpus() -> None:
    manifest = parse(
        y("""
      timeout: 1h30m
      isoCacheTTL: 0
      retries: 2
      vms:
        - name: a
          source: $SRC
          resources: {cpu: '500m', memory: 1.5Gi}
          disks:
            - {name: root, size: 1e10}
            - {name: data, size: 512Mi, bus: sata}
            - {name: c, size: 1G}
          communicator: {sshTimeout: 1.5h, sshPort: 2222, sshUsername: debian, sshPassword: pw}
        - name: b
          source: $SRC
          resources: {cpu: 2.5, memory: 1073741824}
      """)
    )
    assert (manifest.timeout, manifest.iso_cache_ttl, manifest.retries) == (5400.0, 0.0, 2)
    a, b = manifest.vms
    assert a.resources == Resources(cpu=1, memory=GI + GI // 2)
    assert b.resources == Resources(cpu=3, memory=GI)
    assert a.disks == (Disk("root", 10**10), Disk("data", 512 * MI, "sata"), Disk("c", 10**9))
    assert a.communicator == Communicator("ssh", "bash", "debian", 2222, "pw", 5400.0, None)


def test_sources_and_isos_are_normalised() -> None:
    manifest = parse(
        y(f"""
      vms:
        - name: a
          source: {{buildRef: {{name: kali-base@12, vmName: kali}}}}
        - name: b
          source: {{buildRef: {{name: web}}}}
        - name: c
          source: {{blank: true}}
          isos:
            - {{url: 'https://x.example.edu/a.iso', checksum: '{"AB" * 32}'}}
            - {{url: 'https://x.example.edu/b.iso'}}
          efiFirmware: {{}}
          cloudInit: {{userData: "#cloud-config\\n"}}
          invisible: true
      """)
    )
    a, b, c = manifest.vms
    assert a.source == Source("buildRef", build_ref=BuildRef("kali-base", 12, "kali"))
    assert b.source.build_ref == BuildRef("web", None, None)
    assert c.source == Source("blank")
    assert c.isos == (
        Iso("https://x.example.edu/a.iso", "sha256:" + "ab" * 32),
        Iso("https://x.example.edu/b.iso", None),
    )
    assert c.efi_firmware == EfiFirmware(secure_boot=False)
    assert c.cloud_init == CloudInit(user_data="#cloud-config\n", network_data=None)
    assert c.invisible is True


def test_steps_get_their_defaults() -> None:
    manifest = parse(
        y("""
      files: [{name: motd, inline: hi}, {name: s.sh, inline: 'true'}]
      vms:
        - name: lin
          source: $SRC
          provisioners:
            - {type: file, file: {fileRef: motd, destination: /etc/motd}}
            - type: shell
              name: setup
              stepTimeout: 10m
              shell: {scriptFrom: {fileRef: s.sh}, env: {B: '2', A: '1'}}
            - {type: reboot}
            - {type: handbuild, handbuild: {instructions: Click.}}
        - name: win
          source: $SRC
          communicator: {shell: powershell}
          provisioners:
            - {type: reboot}
            - {type: reboot, reboot: {command: Restart-Computer -Force}}
      """)
    )
    lin, win = manifest.vms
    assert lin.provisioners == (
        FileStep("file-1", None, "motd", "/etc/motd"),
        ShellStep("setup", 600.0, script_file="s.sh", env=(EnvVar("B", "2"), EnvVar("A", "1"))),
        RebootStep("reboot-3", None, "sudo reboot"),
        HandbuildStep("handbuild-4", None, "Click."),
    )
    assert win.provisioners[0] == RebootStep("reboot-1", None, "shutdown /r /f /t 0")
    assert win.provisioners[1].command == "Restart-Computer -Force"
    assert [type(s).type for s in lin.provisioners] == ["file", "shell", "reboot", "handbuild"]


OVERRIDES = y("""
  network:
    vpcs: [{name: lab}, {name: dmz, internet: true}]
    subnets:
      - {name: lan, vpc: lab, cidr: 10.10.0.0/24, unmanaged: true}
      - {name: pub, vpc: dmz, cidr: 10.20.0.0/24}
  buildOverrides:
    vpcs: [{name: lab, internet: true}, {name: dmz}]
    subnets: [{name: lan, unmanaged: false}]
    vms:
      - name: web
        resources: {cpu: 4, memory: 8Gi}
        nics: [{name: eth0, subnet: pub, ip: 10.20.0.5}]
      - {name: db, resources: {memory: 4Gi}}
  vms:
    - name: web
      source: $SRC
      resources: {cpu: 1, memory: 1Gi}
      nics: [{name: eth0, subnet: lan, ip: 10.10.0.5}]
    - name: db
      source: $SRC
      resources: {cpu: 2}
      nics: [{name: eth0, subnet: lan}]
    - name: client
      source: $SRC
      nics: [{name: eth0, subnet: pub}]
  """)


def test_for_build_applies_build_overrides() -> None:
    build = parse(OVERRIDES).for_build()
    assert build.network.vpcs == (Vpc("lab", True), Vpc("dmz", True))
    assert build.network.subnet("lan").unmanaged is False
    assert build.vm("web").resources == Resources(4, 8 * GI)
    assert build.vm("web").nics == (Nic("eth0", "pub", 1, ip="10.20.0.5"),)
    assert build.vm("db").resources == Resources(2, 4 * GI)  # cpu kept, memory overridden
    assert build.vm("db").nics == (Nic("eth0", "lan", 1),)  # no nics override: kept
    assert build.vm("client") == parse(OVERRIDES).vm("client")
    assert build.build_overrides.vms == ()
    assert build.for_build() == build


def test_base_manifest_keeps_the_base_values() -> None:
    base = parse(OVERRIDES)
    base.for_build()
    assert base.network.vpcs == (Vpc("lab", False), Vpc("dmz", True))
    assert base.network.subnet("lan").unmanaged is True
    assert base.vm("web").resources == Resources(1, GI)
    assert base.vm("web").nics == (Nic("eth0", "lan", 1, ip="10.10.0.5"),)
    assert [o.name for o in base.build_overrides.vms] == ["web", "db"]
    assert base.build_overrides.vms[1].cpu is None


def test_model_is_frozen_and_has_no_lists_or_dicts() -> None:
    manifest = parse(OVERRIDES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.vms[0].name = "other"  # type: ignore[misc]

    def walk(value: object) -> None:
        assert not isinstance(value, list | dict | set), value
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, tuple):
            for item in value:
                walk(item)

    walk(manifest)
    walk(
        parse(
            y("""
      files: [{name: s, inline: x}]
      vms:
        - name: web
          source: $SRC
          provisioners: [{type: shell, shell: {inline: x, env: {A: b}}}, {type: reboot}]
          communicator: {shell: powershell}
      """)
        )
    )


def test_to_dict_is_json_with_step_types() -> None:
    data = parse(
        y("""
      files: [{name: motd, inline: hi}]
      vms:
        - name: web
          source: $SRC
          provisioners: [{type: file, file: {fileRef: motd, destination: /etc/motd}}]
      """)
    ).to_dict()
    again = json.loads(json.dumps(data))
    assert again == data
    assert again["vms"][0]["provisioners"][0] == {
        "type": "file",
        "name": "file-1",
        "step_timeout": None,
        "file_ref": "motd",
        "destination": "/etc/motd",
    }
    assert again["vms"][0]["resources"] == {"cpu": 1, "memory": GI}
    assert again["network"]["subnets"][0]["cidr"] == "10.77.0.0/24"


def test_parse_raises_manifest_invalid_listing_problems() -> None:
    with pytest.raises(ManifestInvalid) as caught:
        parse("vms:\n  - name: Web\n    source: {}\n")
    problems = caught.value.problems
    assert {p.path for p in problems} == {"vms[0].name", "vms[0].source"}
    text = str(caught.value)
    assert "vms[0].name (line 2, column 11): expected a DNS label" in text
    assert "vms[0].source (line 3, column 5): a source needs exactly one of" in text


def test_problem_to_dict_has_the_four_keys() -> None:
    problem = validate("vms: []\n").errors[0]
    assert problem.to_dict() == {
        "path": "vms",
        "line": 1,
        "column": 1,
        "message": "expected a list of at least one VM, got an empty list",
    }
    assert Problem("", None, None, "x").to_dict() == {
        "path": "",
        "line": None,
        "column": None,
        "message": "x",
    }


def test_valid_result_carries_the_manifest_and_warnings() -> None:
    result = validate(
        y("""
      vms:
        - name: web
          source: {url: 'https://images.example.edu/latest.qcow2'}
      """)
    )
    assert result.valid
    assert result.errors == []
    assert len(result.warnings) == 2
    assert result.manifest is not None
    assert result.manifest.vms[0].source.checksum is None
