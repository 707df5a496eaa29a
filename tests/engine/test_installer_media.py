"""A build VM installed from ISOs (FakeHypervisor): what it boots with, what gets typed, and
the failures that must come before anything boots."""

from __future__ import annotations

import hashlib
import ipaddress
import time

import pytest

from ruddervirt.engine import cleanup
from ruddervirt.engine.build import BuildPlan, run_build
from ruddervirt.engine.config import EngineConfig, FetchPolicy
from ruddervirt.engine.context import BuildContext, BuildScope, VMPlan
from ruddervirt.engine.errors import BuildError, SourceError
from ruddervirt.engine.files import FileStore
from ruddervirt.engine.httpserver import BuildHTTPServer, Listener
from ruddervirt.engine.reporter import NullReporter
from ruddervirt.engine.topology import plan
from ruddervirt.engine.vm import VMRunner
from ruddervirt.guest import fake
from ruddervirt.guest.bootcommand import LINUX_KEYCODES as K
from ruddervirt.guest.fake import ScriptedCommunicator
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.hypervisor.floppy import list_floppy
from ruddervirt.manifest import parse


class StopAtSSH(Exception):
    pass


@pytest.fixture
def media(tmp_path):
    found = {}
    for name in ("installer.iso", "drivers.iso"):
        path = tmp_path / name
        path.write_bytes(name.encode() * 100)
        found[name] = (path.as_uri(), "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def manifest_text(media, *, extra_vm: str = "", top: str = "", checksum: str | None = None):
    (iso, iso_sum), (drivers, drivers_sum) = media["installer.iso"], media["drivers.iso"]
    return f"""\
files:
  - name: answers
    inline: "hostname=web"
{top}vms:
  - name: web
    source: {{blank: true}}
    isos:
      - {{url: "{iso}", checksum: "{checksum or iso_sum}"}}
      - {{url: "{drivers}", checksum: "{drivers_sum}"}}
    resources: {{cpu: 1, memory: 256Mi}}
    disks: [{{name: root, size: 64Mi, bus: sata}}, {{name: data, size: 8Mi}}]
{extra_vm}"""


def runner_for(text: str, tmp_path, hv: FakeHypervisor, http=None):
    manifest = parse(text).for_build()
    topology = plan(manifest, owner="b1", prefix="rvt-", allow_internet=False)
    cleanup.create_networks(hv, topology.networks)
    config = EngineConfig(
        storage_root=tmp_path / "storage", domain_type="qemu", name_prefix="rvt-",
        boot_key_interval_s=0.0, fetch_policy=FetchPolicy(file_source_dirs=(tmp_path,)),
    )  # fmt: skip
    reporter = NullReporter()
    # The guest never gets as far as SSH in these tests: its wait stops the runner there.
    ctx = BuildContext(
        config=config, hv=hv, reporter=reporter,
        communicator=lambda _endpoint: ScriptedCommunicator([fake.wait(error=StopAtSSH())]),
    )  # fmt: skip
    scope = BuildScope(
        key="b1", workdir=tmp_path / "work", manifest=manifest,
        files=FileStore(manifest.files, config.files_cache_dir, policy=config.fetch_policy),
        deadline=time.monotonic() + 600, metadata={"kind": "build", "build": "b1"}, http=http,
    )  # fmt: skip
    runner = VMRunner(ctx, scope, VMPlan(vm=manifest.vms[0], nics=topology.nics["web"]))
    return runner, reporter


def logged(reporter: NullReporter) -> list[str]:
    return [text for _vm, _stream, text in reporter.lines]


def test_a_blank_disk_boots_first_then_the_isos_in_order(tmp_path, media):
    hv = FakeHypervisor(name_prefix="rvt-")
    runner, _reporter = runner_for(manifest_text(media), tmp_path, hv)
    with pytest.raises(StopAtSSH):
        runner.run()
    disks = hv.domains["rvt-b1-web"].spec.disks
    summary = [(d.device, d.target_bus, d.boot_order, d.format, d.readonly) for d in disks]
    assert summary == [
        ("disk", "sata", 1, "qcow2", False),
        ("disk", "virtio", None, "qcow2", False),
        ("cdrom", "sata", 2, "raw", True),
        ("cdrom", "sata", 3, "raw", True),
    ]
    assert disks[2].path.read_bytes() == b"installer.iso" * 100
    assert disks[3].path.read_bytes() == b"drivers.iso" * 100
    # QEMU opens a link in the VM's own folder, never the private cache.
    assert disks[2].path.parent == tmp_path / "work/web"
    cache = tmp_path / "storage/cache/isos"
    assert disks[2].path.samefile(runner.iso_entries[0])
    assert runner.iso_entries[0].parent == cache


def test_a_floppy_of_the_listed_files_is_attached(tmp_path, media):
    hv = FakeHypervisor(name_prefix="rvt-")
    extra = "    floppy: {files: [{name: answers}]}\n"
    runner, reporter = runner_for(manifest_text(media, extra_vm=extra), tmp_path, hv)
    with pytest.raises(StopAtSSH):
        runner.run()
    floppy = [d for d in hv.domains["rvt-b1-web"].spec.disks if d.device == "floppy"]
    assert [(d.target_bus, d.format) for d in floppy] == [("fdc", "raw")]
    assert list_floppy(floppy[0].path) == ["answers"]
    assert "floppy attached with answers" in logged(reporter)


def test_efi_firmware_gives_the_vm_ovmf_and_its_own_nvram(tmp_path, media):
    hv = FakeHypervisor(name_prefix="rvt-")
    extra = "    efiFirmware: {secureBoot: true}\n"
    runner, _reporter = runner_for(manifest_text(media, extra_vm=extra), tmp_path, hv)
    with pytest.raises(StopAtSSH):
        runner.run()
    spec = hv.domains["rvt-b1-web"].spec
    assert spec.machine == "q35" and spec.efi.secure_boot
    assert spec.efi.nvram == tmp_path / "work/web/nvram.fd"
    assert runner.outcome.efi == spec.efi


def answer_server() -> BuildHTTPServer:
    """The build's HTTP server with an answer file, on loopback."""
    loopback = Listener("default", "127.0.0.1", ipaddress.IPv4Network("127.0.0.0/8"))
    return BuildHTTPServer({"answers": b"x"}, [loopback], log=lambda t, v: None)


def run_until_ssh(tmp_path, media, hv, http, boot_command: str):
    """Run an ISO VM with `boot_command` and the answer server up to its wait for SSH."""
    top = "httpDirectory: {files: [{name: answers}]}\n"
    extra = f'    bootCommand: ["{boot_command}"]\n'
    runner, reporter = runner_for(
        manifest_text(media, extra_vm=extra, top=top), tmp_path, hv, http=http
    )
    with pytest.raises(StopAtSSH):
        runner.run()
    return runner, reporter


def test_the_boot_command_is_typed_with_the_build_servers_address(tmp_path, media):
    hv = FakeHypervisor(name_prefix="rvt-")
    command = "<wait1ms>install url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/answers<enter>"
    with answer_server() as http:
        _runner, reporter = run_until_ssh(tmp_path, media, hv, http, command)
    typed = [codes for codes, _hold in hv.sent_keys["rvt-b1-web"]]
    url = f"install url=http://127.0.0.1:{http.port}/answers"
    assert len(typed) == len(url) + 1 and typed[-1] == (K["KEY_ENTER"],)
    assert typed[url.index(":")] == (K["KEY_LEFTSHIFT"], K["KEY_SEMICOLON"])
    assert f"boot command: typing {url}<enter>" in logged(reporter)


def test_a_boot_command_that_needs_a_server_fails_before_booting(tmp_path, media):
    hv = FakeHypervisor(name_prefix="rvt-")
    extra = '    bootCommand: ["install url=http://{{ .HTTPIP }}/answers<enter>"]\n'
    runner, _reporter = runner_for(manifest_text(media, extra_vm=extra), tmp_path, hv)
    with pytest.raises(BuildError, match="VM web: the bootCommand uses"):
        runner.run()
    assert "rvt-b1-web" not in hv.domains


def test_ssh_giving_up_reports_that_the_guest_never_fetched_its_answers(tmp_path, media):
    hv = FakeHypervisor(name_prefix="rvt-")
    command = "install url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/a<enter>"
    with answer_server() as http:
        runner, reporter = run_until_ssh(tmp_path, media, hv, http, command)
        runner.log_ssh_hints()
    lines = logged(reporter)
    assert any("never fetched anything from the build's HTTP server" in line for line in lines)
    assert (tmp_path / "work/web/console.ppm").exists()


def test_a_wrong_iso_checksum_fails_the_build_before_anything_boots(tmp_path, media):
    hv = FakeHypervisor(name_prefix="rvt-")
    wrong = "sha256:" + "0" * 64
    config = EngineConfig(
        storage_root=tmp_path / "storage", domain_type="qemu", name_prefix="rvt-",
        fetch_policy=FetchPolicy(file_source_dirs=(tmp_path,)),
    )  # fmt: skip
    build = BuildPlan(key="b9", manifest=parse(manifest_text(media, checksum=wrong)),
                      workdir=tmp_path / "work")  # fmt: skip
    with pytest.raises(SourceError, match=f"checksum mismatch .* expected {wrong}"):
        run_build(build, BuildContext(config=config, hv=hv, reporter=NullReporter()))
    assert not [call for call in hv.calls if call[0] in ("define", "start")]
    assert hv.domains == {} and hv.networks == {}
