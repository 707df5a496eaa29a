"""The composition root (ruddervirt.runtime): the engine's settings come from Django's (the
environment, in ruddervirt/settings.py), the hypervisor from a dotted path, worker liveness
from /proc."""

from __future__ import annotations

import os
import socket

import pytest
from django.test import override_settings

from ruddervirt import runtime
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.runtime import engine_config


@override_settings(RUDDERVIRT_BOOT_KEY_INTERVAL_MS=250, RUDDERVIRT_BOOT_KEY_HOLD_MS=40)
def test_the_boot_command_pace_is_a_setting():
    config = engine_config()
    assert config.boot_key_interval_s == 0.25
    assert config.boot_key_hold_ms == 40


def test_the_default_pace_is_a_tenth_of_a_second_per_key():
    assert engine_config().boot_key_interval_s == 0.1


class RecordingHypervisor(FakeHypervisor):
    """A driver named by dotted path in the tests below: it keeps what it was made with."""

    def __init__(self, uri: str, *, name_prefix: str) -> None:
        super().__init__(name_prefix=name_prefix)
        self.uri = uri


@pytest.fixture
def fresh_hypervisor(monkeypatch):
    monkeypatch.setattr(runtime, "_hypervisor", None)


def test_the_hypervisor_is_the_class_the_setting_names(fresh_hypervisor, settings):
    settings.RUDDERVIRT_HYPERVISOR = f"{__name__}.RecordingHypervisor"
    settings.RUDDERVIRT_LIBVIRT_URI = "test:///default"
    hv = runtime.get_hypervisor()
    assert isinstance(hv, RecordingHypervisor)
    assert (hv.uri, hv.name_prefix) == ("test:///default", settings.RUDDERVIRT_NAME_PREFIX)
    assert runtime.get_hypervisor() is hv  # one per process


def test_the_default_hypervisor_is_the_libvirt_driver(settings):
    assert settings.RUDDERVIRT_HYPERVISOR == (
        "ruddervirt.hypervisor.libvirt_driver.LibvirtHypervisor"
    )


def test_this_process_is_an_alive_worker_and_a_dead_pid_is_not():
    me = runtime.worker_identity()
    assert me == f"{socket.gethostname()}:{os.getpid()}"
    assert runtime.worker_alive(me) is True
    assert runtime.worker_alive(f"{socket.gethostname()}:{2**22 + 1}") is False  # > pid_max


def test_a_worker_of_another_host_or_no_pid_cannot_be_told():
    assert runtime.worker_alive("elsewhere.example:1") is None
    assert runtime.worker_alive(f"{socket.gethostname()}:") is None


def test_the_host_figures_refuse_to_count_without_an_apps_promises(monkeypatch) -> None:
    """Without the builds' (or clones') promises every figure would over-commit the host."""
    from ruddervirt import capacity

    assert set(capacity.REQUIRED_SOURCES) <= set(capacity._sources)  # the apps registered
    monkeypatch.delitem(capacity._sources, "clones")
    with pytest.raises(capacity.SourceMissing, match="no promises registered by clones"):
        capacity.promised()


def test_saving_a_manifest_refuses_to_skip_the_buildref_check(monkeypatch) -> None:
    from modules import services

    monkeypatch.delitem(services._checks, "buildRef")
    with pytest.raises(RuntimeError, match="buildRef not registered"):
        services.validate_for("vms: []", user=None)
