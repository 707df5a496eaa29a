"""Warm images in the portal, against the fake hypervisor: who may make and drop them (POST
with CSRF, the module's owner only), the job, launching warm by default, the dashboard's
start column, capacity, what a crash leaves, and the CLI."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from clones import capacity, services, warm
from clones.models import Clone, CloneStatus, WarmImage, WarmStatus
from clones.runner import run_inline
from jobs.models import Operation
from ruddervirt.engine.identity import NO_AGENT
from tests.helpers import client_for, csrf_post

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_workers(monkeypatch):
    """Whatever runs on this machine's Redis, warm images are made in this process."""
    monkeypatch.setattr("builds.jobs.workers_listening", lambda q: 0)
    monkeypatch.setattr("clones.management.commands.launch_class.workers_listening", lambda q: 0)


@pytest.fixture
def agents_up(fake_hv, monkeypatch):
    """Every guest's agent answers (the warm image's instance is ready at once; no SSH
    server answers on the fake's ports, and the image does not wait for one)."""
    monkeypatch.setattr(fake_hv, "agent_ping", lambda name, timeout_s: True)
    monkeypatch.setattr("ruddervirt.engine.warm.SSH_GRACE_S", 0.0)
    return fake_hv


def page_of(version) -> str:
    return f"/modules/{version.module.name}/versions/{version.number}/"


def ready_image(version, by) -> WarmImage:
    image = warm.run_here(warm.request(version, by=by, queue=False))
    assert image.status == WarmStatus.READY, image.error
    return image


def test_only_the_modules_owner_can_make_a_warm_image_and_only_by_post(
    version, instructor, other_instructor, student
):
    url = f"/clones/versions/{version.pk}/warm/"
    assert client_for(instructor).get(url).status_code == 405
    for user in (other_instructor, student):
        assert csrf_post(client_for(user), url, {}).status_code == 403
    assert not WarmImage.objects.exists()
    response = csrf_post(client_for(instructor), url, {}, page=page_of(version))
    assert response.status_code == 302 and response.url == page_of(version)
    image = WarmImage.objects.get(version=version)
    assert image.status == WarmStatus.MAKING and image.created_by == instructor
    assert Operation.objects.for_target(image).get().kind == warm.KIND_MAKE
    # A second request while it is being made is refused, with the reason.
    with pytest.raises(warm.WarmNotAllowed, match=r"has a warm image already \(Making\)"):
        warm.request(version, by=instructor, queue=False)


def test_the_job_saves_every_vm_and_the_version_page_shows_the_image(
    version, instructor, other_instructor, agents_up
):
    image = ready_image(version, instructor)
    folder = warm.folder_of(image)
    assert sorted(p.name for p in folder.iterdir()) == ["dc", "web"]
    assert (folder / "web" / "state.sav").is_file() and image.size_bytes > 0
    assert set(image.ready_s) == {"web", "dc"}
    assert agents_up.list_domains("") == []  # the instance is gone, its networks too
    assert agents_up.list_networks("") == []
    html = client_for(instructor).get(page_of(version)).content.decode()
    assert 'id="warm-image"' in html and ">Ready<" in html and 'id="warm-drop"' in html
    other = client_for(other_instructor).get(page_of(version))
    assert other.status_code == 403  # the version page is the owner's


def test_launch_is_warm_by_default_once_an_image_is_ready_and_the_clone_stands_on_it(
    version, instructor, klass, agents_up
):
    image = ready_image(version, instructor)
    made = services.launch(klass, version, by=instructor, queue=False)
    assert {c.start_mode for c in made} == {"warm"}
    run_inline([c.pk for c in made], "provision", hv=agents_up)
    for clone in Clone.objects.filter(pk__in=[c.pk for c in made]):
        assert clone.status == CloneStatus.RUNNING, clone.error
        assert clone.warm_image_id == image.pk
        assert {vm.started_via for vm in clone.vms.all()} == {"warm"}
        summary = services.clone_summary(clone)
        assert summary["start"] == "warm"
        assert {vm["started_via"] for vm in summary["vms"]} == {"warm"}
    assert len(agents_up.restored) == 4  # two clones of two VMs
    assert agents_up.clock_set  # the agents answered: clocks set after the resume
    html = client_for(instructor).get(klass.get_absolute_url()).content.decode()
    assert "warm start" in html
    # The image cannot go while clones stand on it.
    url = f"/clones/versions/{version.pk}/warm/drop/"
    csrf_post(client_for(instructor), url, {}, page=page_of(version))
    assert WarmImage.objects.filter(pk=image.pk).exists()
    with pytest.raises(warm.WarmNotAllowed, match="2 clone"):
        warm.drop(image, by=instructor)


def test_cold_is_the_default_without_an_image_and_warm_without_one_says_so(
    version, instructor, klass, fake_hv
):
    made = services.launch(klass, version, by=instructor, queue=False)
    assert {c.start_mode for c in made} == {"cold"}
    Clone.objects.all().delete()
    made = services.launch(klass, version, by=instructor, queue=False, start="warm")
    run_inline([c.pk for c in made], "provision", hv=fake_hv)
    vm = Clone.objects.get(pk=made[0].pk).vms.get(name="web")
    assert (vm.started_via, vm.start_note) == ("cold", "booted cold: the version has no warm image")
    with pytest.raises(services.CloneNotAllowed, match="start must be warm or cold"):
        services.launch(klass, version, by=instructor, queue=False, start="tepid")


def test_a_guest_without_agent_is_restored_as_it_was_and_the_clone_says_so(
    version, instructor, klass, agents_up, monkeypatch
):
    ready_image(version, instructor)
    monkeypatch.setattr(agents_up, "agent_ping", lambda name, timeout_s: False)
    made = services.launch(klass, version, by=instructor, queue=False)
    run_inline([made[0].pk], "provision", hv=agents_up)
    vm = Clone.objects.get(pk=made[0].pk).vms.get(name="web")
    assert (vm.started_via, vm.start_note) == ("warm", NO_AGENT)


def test_dropping_an_image_removes_its_files_and_only_its_owner_may(
    version, instructor, other_instructor, agents_up
):
    image = ready_image(version, instructor)
    url = f"/clones/versions/{version.pk}/warm/drop/"
    assert csrf_post(client_for(other_instructor), url, {}).status_code == 403
    response = csrf_post(client_for(instructor), url, {}, page=page_of(version))
    assert response.status_code == 302
    assert not WarmImage.objects.exists() and not warm.folder_of(image).exists()


def test_an_image_being_made_counts_in_capacity_like_one_more_clone(version, instructor):
    before = capacity.promised_by_clones().memory
    warm.request(version, by=instructor, queue=False)
    assert capacity.promised_by_clones().memory - before == sum(
        vm.memory for vm in version.version_spec.vms
    ) + 2 * capacity.setting("RUDDERVIRT_CLONE_MEMORY_OVERHEAD")


def test_a_crash_while_making_fails_the_image_and_the_reconcile_removes_what_is_left(
    version, instructor, fake_hv
):
    image = warm.request(version, by=instructor, queue=False)
    folder = warm.folder_of(image)
    (folder / "web").mkdir(parents=True)
    assert warm.live_keys() == {image.key}
    line = warm.interrupted(image, "interrupted: the worker running it (h:1) is gone")
    assert (
        line == f"warm image {image.pk}: marked failed (interrupted: the worker running "
        "it (h:1) is gone)"
    )
    image.refresh_from_db()
    assert image.status == WarmStatus.FAILED and not folder.exists()
    assert warm.live_keys() == set()
    stray = warm.warm_root() / "999"
    stray.mkdir(parents=True)
    assert warm.sweep(fake_hv) == [f"removed leftover warm image folder {stray}"]
    # A failed image is replaced by a new request.
    again = warm.request(version, by=instructor, queue=False)
    assert again.status == WarmStatus.MAKING and WarmImage.objects.count() == 1


def test_the_cli_makes_shows_and_drops_an_image(version, admin_user, agents_up):
    out = io.StringIO()
    call_command("warm_image", "make", "lab@1", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["status"] == "Ready" and data["size_bytes"] > 0 and set(data["ready_s"]) == {
        "web", "dc"
    }  # fmt: skip
    out = io.StringIO()
    call_command("warm_image", "show", "lab", stdout=out)
    assert out.getvalue().startswith(f"warm image {data['id']} of lab@1: Ready, ")
    call_command("warm_image", "drop", "lab@1", stdout=io.StringIO())
    assert not WarmImage.objects.exists()


def test_launch_class_start_warm_makes_the_image_first_and_reports_it_apart(
    version, admin_user, agents_up
):
    out = io.StringIO()
    call_command(
        "launch_class", "--module", "lab@1", "--students", "ann,ben", "--start", "warm",
        "--wait-ready", "--json", stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    data = json.loads(out.getvalue().strip().splitlines()[-1])
    assert data["warm_image"]["status"] == "Ready" and data["warm_image"]["made_now_s"] >= 0
    assert "launch_s" in data
    for clone in data["clones"]:
        assert clone["status"] == "Running"
        assert {vm["started_via"] for vm in clone["vms"]} == {"warm"}
        assert all(vm["ready"] for vm in clone["vms"])
