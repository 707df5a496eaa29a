"""The portal holds manifests to the caps in its settings, everywhere it accepts one: the
Validate button, Save, and the command line."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from django.core.management import call_command
from django.urls import reverse

from modules.limits import manifest_limits
from modules.models import Module
from modules.services import ManifestRejected, create_module
from ruddervirt.manifest import DEFAULT_LIMITS
from ruddervirt.manifest.limits import SETTINGS
from tests.helpers import csrf_post
from tests.manifest.cases import y

GREEDY = y(
    """\
    vms:
      - name: web
        source: $SRC
        resources: {cpu: 100000, memory: 1Ei}
    """
)


def test_the_validate_button_refuses_100000_vcpus_with_path_line_and_limit(
    instructor_client,
) -> None:
    response = csrf_post(instructor_client, reverse("modules:validate"), {"manifest": GREEDY})
    body = response.json()
    assert body["valid"] is False
    cpu = next(e for e in body["errors"] if e["path"] == "vms[0].resources.cpu")
    assert cpu["line"] == 4
    assert "at most 16 vCPUs per VM" in cpu["message"]
    assert "RUDDERVIRT_MAX_VM_CPUS" in cpu["message"]


@pytest.mark.django_db
def test_saving_a_greedy_manifest_is_refused_and_saves_nothing(instructor) -> None:
    with pytest.raises(ManifestRejected) as refused:
        create_module(name="greedy", description="", text=GREEDY, user=instructor)
    paths = {e.path for e in refused.value.result.errors}
    assert paths == {"vms[0].resources.cpu", "vms[0].resources.memory"}
    assert not Module.objects.exists()


@pytest.mark.django_db
def test_an_administrator_raises_a_cap_through_its_setting(instructor, settings) -> None:
    settings.RUDDERVIRT_MAX_VM_CPUS = 128
    text = GREEDY.replace("cpu: 100000, memory: 1Ei", "cpu: 100")
    assert create_module(name="wide", description="", text=text, user=instructor).revision


def test_the_command_line_validator_uses_the_same_caps(tmp_path, capsys, settings) -> None:
    settings.RUDDERVIRT_MAX_VM_MEMORY = 512 * 1024**2
    path = tmp_path / "lab.yaml"
    path.write_text(GREEDY.replace("cpu: 100000, memory: 1Ei", "memory: 1Gi"))
    with pytest.raises(SystemExit) as exited:
        call_command("validate_manifest", str(path), "--json")
    assert exited.value.code == 1
    (error,) = json.loads(capsys.readouterr().out)["errors"]
    assert (error["path"], error["line"]) == ("vms[0].resources.memory", 4)
    assert "at most 512Mi of memory per VM" in error["message"]


def test_the_settings_defaults_are_the_manifest_packages_defaults() -> None:
    if any(name in os.environ for name in SETTINGS.values()):
        pytest.skip("a cap is set in this environment")
    assert manifest_limits() == DEFAULT_LIMITS
    assert dataclasses.asdict(manifest_limits()) == dataclasses.asdict(DEFAULT_LIMITS)
