"""On a host where KVM is present but does not run guests (broken nested KVM, as on our test
machines), a build of a kvm-type domain fails as soon as QEMU stops the guest, with QEMU's
reason, instead of waiting out its SSH timeout. Skipped where KVM works (nothing to see)."""

from __future__ import annotations

import time

import pytest

from builds.models import BuildStatus
from ruddervirt.hypervisor.kvm_probe import probe_kvm
from tests.e2e.test_build import build, manifest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]
SSH_TIMEOUT = "    communicator: {sshTimeout: 5m}\n"


@pytest.fixture(scope="module")
def broken_kvm() -> str:
    verdict = probe_kvm(timeout=60)
    if verdict.works:
        pytest.skip("KVM runs guests on this host: no emulation failure to report")
    if "KVM internal error" not in verdict.message:
        pytest.skip(
            f"KVM does not run guests here, but not by an internal error: {verdict.message}"
        )
    return verdict.message


def test_a_kvm_guest_that_qemu_stops_with_an_emulation_failure_fails_the_build_at_once(
    image_server, settings, broken_kvm
):
    settings.RUDDERVIRT_DOMAIN_TYPE = "kvm"
    text = manifest(image_server, '      - type: shell\n        shell: {inline: "true"}\n')
    text = text.replace("    cloudInit: {}\n", "    cloudInit: {}\n" + SSH_TIMEOUT)
    started = time.monotonic()
    done = build(text)
    took = time.monotonic() - started
    assert done.status == BuildStatus.FAILED
    assert "the domain stopped while waiting for SSH" in done.error, done.error
    assert "KVM internal error" in done.error or "emulation failure" in done.error, done.error
    assert took < 240, f"took {took:.0f}s: the build waited for SSH instead"
