"""An instructor builds on another instructor's private template with `buildRef`, or probes
with it which modules, versions and VMs exist: refused when the manifest is validated or
saved, when the build is submitted and again in the worker, with one sentence for every
module the instructor may not manage. Their own modules keep precise errors."""

from __future__ import annotations

import pytest

from builds.models import Build, BuildStatus
from builds.refs import UNUSABLE
from builds.runner import execute_build
from builds.services import BuildNotAllowed, start_build, submit_manifest
from clones.services import CloneNotAllowed, resolve_version
from modules.models import Module
from modules.services import ManifestRejected, create_module, validate_for
from ruddervirt.hypervisor.fake import FakeHypervisor
from tests.clones.conftest import fake_hv, make_version, storage  # noqa: F401  (fixtures)
from tests.helpers import client_for, csrf_post

pytestmark = pytest.mark.django_db


def child(ref: str, vm_name: str | None = None) -> str:
    """A manifest whose one VM builds on `ref`; its buildRef's name is on line 4."""
    extra = f", vmName: {vm_name}" if vm_name else ""
    return f"vms:\n  - name: app\n    source:\n      buildRef: {{name: {ref}{extra}}}\n"


def uniform(ref: str) -> str:
    return f"buildRef {ref}: {UNUSABLE}"


@pytest.fixture
def secret(other_instructor, storage):  # noqa: F811  (the fixture imported above)
    """bob's private module "secret": version 1, template VMs web and dc."""
    return make_version(other_instructor, storage, name="secret")


@pytest.fixture
def base(instructor, storage):  # noqa: F811
    """alice's own module "base": version 1, template VMs web and dc."""
    return make_version(instructor, storage, name="base")


def only_error(text: str, user) -> tuple[str, int | None, str]:
    result = validate_for(text, user=user)
    assert len(result.errors) == 1, result.errors
    problem = result.errors[0]
    return problem.path, problem.line, problem.message


def test_a_build_ref_to_another_instructors_module_is_refused_at_its_line(instructor, secret):
    assert only_error(child("secret@1", "web"), instructor) == (
        "vms[0].source.buildRef.name",
        4,
        uniform("secret@1"),
    )


def test_the_refusal_says_nothing_about_what_exists(instructor, other_instructor, secret):
    """Existing module and VM, missing version, missing VM, newest version, no such
    module: one sentence, so probing learns nothing."""
    messages = {
        "secret@1": only_error(child("secret@1", "web"), instructor)[2],
        "secret@9": only_error(child("secret@9"), instructor)[2],
        "secret@1 vm nope": only_error(child("secret@1", "nope"), instructor)[2],
        "secret": only_error(child("secret"), instructor)[2],
    }
    assert messages == {
        "secret@1": uniform("secret@1"),
        "secret@9": uniform("secret@9"),
        "secret@1 vm nope": uniform("secret@1"),
        "secret": uniform("secret"),
    }
    # The same words once the module is gone: existence cannot be told apart.
    Module.objects.filter(name="secret").update(name="renamed")
    assert only_error(child("secret@1", "web"), instructor)[2] == messages["secret@1"]
    # The owner, meanwhile, is told precisely what is wrong with their own module.
    Module.objects.filter(name="renamed").update(name="secret")
    warnings = validate_for(child("secret@1", "nope"), user=other_instructor).warnings
    assert [w.message for w in warnings] == ["buildRef secret@1: no VM 'nope' (it has web, dc)"]


def test_saving_such_a_manifest_is_refused_and_nothing_is_saved(instructor, secret):
    with pytest.raises(ManifestRejected) as refused:
        create_module(name="stolen", description="", text=child("secret@1"), user=instructor)
    assert [p.message for p in refused.value.result.errors] == [uniform("secret@1")]
    assert not Module.objects.filter(name="stolen").exists()


def test_the_validate_button_shows_the_refusal_beside_its_line(instructor, secret):
    response = csrf_post(
        client_for(instructor), "/modules/validate/", {"manifest": child("secret@1")}
    )
    data = response.json()
    assert not data["valid"]
    assert data["errors"] == [
        {
            "path": "vms[0].source.buildRef.name",
            "line": 4,
            "column": 18,
            "message": uniform("secret@1"),
        }
    ]


def test_the_build_command_refuses_it_before_any_build_exists(instructor, secret):
    with pytest.raises(ManifestRejected):
        submit_manifest(text=child("secret@1"), module_name="app", user=instructor, queue=False)
    assert not Build.objects.filter(module__name="app").exists()
    assert not Module.objects.filter(name="app").exists()


def test_a_saved_manifest_is_refused_at_submit_once_its_parent_changed_hands(
    instructor, other_instructor, base
):
    module = create_module(name="app", description="", text=child("base@1", "web"), user=instructor)
    Module.objects.filter(name="base").update(owner=other_instructor)
    with pytest.raises(BuildNotAllowed) as refused:
        start_build(module=module.module, user=instructor, queue=False)
    assert str(refused.value) == (
        f"vms[0].source.buildRef.name (line 4, column 18): {uniform('base@1')}"
    )
    assert not Build.objects.filter(module=module.module).exists()


def test_the_worker_checks_again_and_boots_nothing(instructor, other_instructor, base):
    build = submit_manifest(
        text=child("base@1", "web"), module_name="app", user=instructor, queue=False
    )
    Module.objects.filter(name="base").update(owner=other_instructor)  # after submission
    hv = FakeHypervisor(name_prefix="rvt-authz-")
    done = execute_build(build.pk, hypervisor=hv)
    assert done.status == BuildStatus.FAILED
    assert done.error == f"VM app: {uniform('base@1')}"
    assert hv.domains == {} and hv.calls == []  # nothing defined, nothing booted


def test_own_modules_keep_precise_errors(instructor, base):
    """Warnings when validating (the version may be built before this manifest), errors
    that fail the build at once in the worker."""
    result = validate_for(child("base@7"), user=instructor)
    assert result.valid
    assert [w.message for w in result.warnings] == [
        "buildRef base@7: the module has no succeeded build with that version"
    ]
    several = validate_for(child("base@1"), user=instructor).warnings
    assert [w.message for w in several] == ["buildRef base@1 has several VMs (web, dc): set vmName"]
    build = submit_manifest(text=child("base@7"), module_name="app", user=instructor, queue=False)
    done = execute_build(build.pk, hypervisor=FakeHypervisor(name_prefix="rvt-authz-"))
    assert (
        done.error == "VM app: buildRef base@7: the module has no succeeded build with that version"
    )


def test_administrators_may_build_on_any_module(admin_user, secret):
    result = validate_for(child("secret@1", "web"), user=admin_user)
    assert result.valid and not result.warnings


def test_launching_another_instructors_version_by_name_gets_the_same_refusal(
    instructor, other_instructor, secret
):
    refusals = []
    for ref in ("secret@1", "secret", "nothing@1"):
        with pytest.raises(CloneNotAllowed) as refused:
            resolve_version(ref, user=instructor)
        refusals.append(str(refused.value))
    assert refusals == [
        f"secret@1: {UNUSABLE}",
        f"secret: {UNUSABLE}",
        f"nothing@1: {UNUSABLE}",
    ]
    assert resolve_version("secret@1", user=other_instructor) == secret
