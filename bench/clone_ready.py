"""The clone benchmark's module, built for real, and its readiness clock.

The module (one VM on a managed subnet with a static address) is built once per benchmark
run by the engine itself (``ruddervirt.engine.build.run_build``: boot, generalize, shut
down, capture), on the tiny or the Debian 12 test image, so the clones start from a template
exactly as a class's do: a captured standalone disk, a generalized guest, a NoCloud seed of
their own at first boot.

"Ready" is what the portal shows a class (clones.readiness): the guest agent answers, or,
for a guest without one (the tiny image), the SSH server sends its banner on the VM's
management port. ``wait_ready`` asks every VM not yet ready once a second with the same probe
(ruddervirt.engine.readiness.probe_all) and keeps when each answered first.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bench.build_recipe import GUESTS, sha256_file
from ruddervirt.engine.build import BuildPlan, run_build
from ruddervirt.engine.clone import CloneResult
from ruddervirt.engine.config import EngineConfig
from ruddervirt.engine.context import BuildContext
from ruddervirt.engine.readiness import ProbeTarget, probe_all
from ruddervirt.engine.reporter import NullReporter
from ruddervirt.manifest import parse
from ruddervirt.spec import VersionSpec

POLL_S = 1.0


def manifest_text(image: str, url: str, sha256: str, memory_mib: int) -> str:
    """The module on `image` (bench.build_recipe.GUESTS: its user and disk size)."""
    guest = GUESTS[image]
    login = f"    communicator: {{sshUsername: {guest.user}, sshTimeout: 15m}}\n"
    return (
        "timeout: 30m\n"
        "network:\n"
        "  vpcs: [{name: lab}]\n"
        "  subnets: [{name: lan, vpc: lab, cidr: 10.10.0.0/24}]\n"
        "vms:\n"
        "  - name: web\n"
        f"    source: {{url: {url}, checksum: sha256:{sha256}}}\n"
        f"    resources: {{cpu: 1, memory: {memory_mib}Mi}}\n"
        f"    disks: [{{name: root, size: {guest.disk_mib}Mi}}]\n"
        "    nics: [{name: eth0, subnet: lan, slot: 1, ip: 10.10.0.10}]\n"
        + login
        + "    cloudInit: {}\n"
        "    provisioners:\n"
        "      - name: mark\n"
        "        type: shell\n"
        '        shell: {inline: "echo built > /tmp/rvbench-built"}\n'
    )


def build_template(
    hv, config: EngineConfig, folder: Path, image_name: str, image: Path, memory_mib: int,
    key: str = "tpl",
) -> VersionSpec:  # fmt: skip
    """Build the module on `image` under `folder` (the storage root) as build `key`; its
    record, with the captured disks' paths relative to `folder`. Raises what run_build
    raises."""
    copy = folder / "source" / key / image.name  # file:// sources must lie in an allowed folder
    copy.parent.mkdir(parents=True)
    shutil.copyfile(image, copy)
    text = manifest_text(image_name, copy.as_uri(), sha256_file(copy), memory_mib)
    plan = BuildPlan(key=key, manifest=parse(text), workdir=folder / "builds" / key)
    reporter = NullReporter()
    try:
        result = run_build(plan, BuildContext(config=config, hv=hv, reporter=reporter))
    except Exception as exc:
        tail = "\n".join(text for _vm, _stream, text in reporter.lines[-25:])
        raise RuntimeError(f"the template build failed: {exc}\n{tail}") from exc
    copy.unlink()
    return result.spec.rebased(PurePosixPath(result.capture_dir.relative_to(folder).as_posix()))


@dataclass(frozen=True)
class Readiness:
    """When each VM was first ready, in seconds since the launch began; who never was."""

    ready_s: dict[str, float]
    via: dict[str, str]
    not_ready: tuple[str, ...]


def wait_ready(hv, made: list[CloneResult], launched: float, timeout: float) -> Readiness:
    """Probe every VM of `made` until all are ready or `timeout` seconds after `launched`
    (a time.monotonic() value) have passed."""
    pending = {vm.domain: ProbeTarget(vm.domain, vm.mgmt_port) for c in made for vm in c.vms}
    ready: dict[str, float] = {}
    via: dict[str, str] = {}
    while pending and time.monotonic() < launched + timeout:
        asked = time.monotonic()
        for domain, answer in probe_all(hv, list(pending.values()), clock=time.monotonic).items():
            ready[domain], via[domain] = answer.at - launched, answer.via
            pending.pop(domain)
        time.sleep(max(0.0, POLL_S - (time.monotonic() - asked)))
    return Readiness(ready, via, tuple(sorted(pending)))
