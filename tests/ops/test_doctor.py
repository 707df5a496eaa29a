"""`manage.py doctor` (ruddervirt/health.py): each dependency's check, and the command's verdict."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from ruddervirt import health
from ruddervirt.hypervisor.kvm_probe import ADVICE, KvmVerdict

pytestmark = pytest.mark.django_db


def test_the_database_with_every_migration_applied_passes():
    assert health.database().ok


def test_redis_that_answers_passes_and_one_that_does_not_fails(settings, tmp_path):
    assert health.redis_server().ok
    settings.REDIS_URL = f"unix://{tmp_path}/no-redis.sock?db=15"
    check = health.redis_server()
    assert not check.ok and "no-redis.sock" in check.message


def test_a_libvirt_uri_nobody_answers_fails(settings):
    settings.RUDDERVIRT_LIBVIRT_URI = "test:///nonexistent/file.xml"
    check = health.libvirtd()
    assert not check.ok and "test:///nonexistent/file.xml" in check.message


def test_a_declared_program_that_is_not_installed_is_named_with_its_package(monkeypatch):
    monkeypatch.setattr(health, "SYSTEM_BIN", ())
    missing = health.missing_programs(path="/nonexistent")
    assert "qemu-img (qemu-utils)" in missing
    assert not any(m.startswith("packer ") for m in missing)  # optional
    assert not any(m.startswith("daphne ") for m in missing)  # pip's


def test_a_storage_root_that_cannot_take_a_file_fails(settings, tmp_path):
    settings.RUDDERVIRT_STORAGE_ROOT = tmp_path / "storage"
    assert health.storage_root().ok
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings.RUDDERVIRT_STORAGE_ROOT = blocker / "storage"
    assert not health.storage_root().ok


BROKEN = KvmVerdict(False, f"{ADVICE} (QEMU: KVM internal error. Suberror: 1 / emulation failure)")


def test_kvm_that_does_not_run_guests_fails_when_the_portal_uses_kvm(settings):
    settings.RUDDERVIRT_DOMAIN_TYPE = "kvm"
    check = health.kvm(lambda: BROKEN)
    assert not check.ok and not check.warning
    assert "use RUDDERVIRT_DOMAIN_TYPE=qemu" in check.message


def test_kvm_that_does_not_run_guests_is_only_a_warning_under_tcg(settings):
    settings.RUDDERVIRT_DOMAIN_TYPE = "qemu"
    check = health.kvm(lambda: BROKEN)
    assert not check.ok and check.warning and "TCG is in use" in check.message


def test_doctor_prints_every_check_and_exits_1_when_one_fails(settings, tmp_path, capsys):
    call_command("doctor", "--no-kvm-probe")
    out = capsys.readouterr().out
    for name in ("database", "redis", "libvirtd", "programs", "storage"):
        assert f" {name} " in out
    assert "doctor: everything answers" in out
    settings.REDIS_URL = f"unix://{tmp_path}/no-redis.sock?db=15"
    with pytest.raises(SystemExit) as exited:
        call_command("doctor", "--no-kvm-probe")
    assert exited.value.code == 1
    assert "FAIL  redis" in capsys.readouterr().out
