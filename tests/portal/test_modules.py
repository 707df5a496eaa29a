"""Creating modules, validating and saving manifests through the pages."""

from __future__ import annotations

import pytest

from modules.models import Module, sha256_text
from tests.helpers import csrf_post

pytestmark = pytest.mark.django_db

BROKEN = """\
vms:
  - name: web
    source:
      url: http://127.0.0.1:9/x.qcow2
    provisioners:
      - name: upload
        type: file
        file: {fileRef: missing, destination: /tmp/x}
"""


def test_validate_returns_errors_with_path_and_line(instructor_client):
    response = csrf_post(
        instructor_client, "/modules/validate/", {"manifest": BROKEN}, page="/modules/new/"
    )
    assert response.status_code == 200
    data = response.json()
    assert data["valid"] is False
    paths = {e["path"]: e for e in data["errors"]}
    assert "vms[0].provisioners[0].file.fileRef" in paths
    assert paths["vms[0].provisioners[0].file.fileRef"]["line"] == 8


def test_validate_accepts_a_good_manifest(instructor_client, good_manifest):
    response = csrf_post(
        instructor_client, "/modules/validate/", {"manifest": good_manifest}, page="/modules/new/"
    )
    assert response.json()["valid"] is True


def test_new_module_saves_manifest_with_sha256(instructor_client, instructor, good_manifest):
    response = csrf_post(
        instructor_client,
        "/modules/new/",
        {"name": "lab1", "description": "Lab one", "manifest": good_manifest},
        page="/modules/new/",
    )
    assert response.status_code == 302, response.content[:2000]
    module = Module.objects.get(name="lab1")
    assert module.owner == instructor
    revision = module.latest_revision
    assert revision.number == 1
    assert revision.text == good_manifest
    assert revision.sha256 == sha256_text(good_manifest)


def test_invalid_manifest_is_not_saved_and_errors_are_shown(instructor_client):
    response = csrf_post(
        instructor_client,
        "/modules/new/",
        {"name": "lab1", "manifest": BROKEN},
        page="/modules/new/",
    )
    assert response.status_code == 400
    assert not Module.objects.filter(name="lab1").exists()
    assert b"vms[0].provisioners[0].file.fileRef" in response.content


def test_bad_module_name_is_rejected(instructor_client, good_manifest):
    response = csrf_post(
        instructor_client,
        "/modules/new/",
        {"name": "Lab_1", "manifest": good_manifest},
        page="/modules/new/",
    )
    assert response.status_code == 400
    assert not Module.objects.exists()


def test_every_saved_text_is_kept_and_unchanged_saves_add_nothing(instructor_client, good_manifest):
    csrf_post(
        instructor_client,
        "/modules/new/",
        {"name": "lab1", "manifest": good_manifest},
        page="/modules/new/",
    )
    changed = good_manifest.replace("echo hello", "echo bye")
    csrf_post(
        instructor_client, "/modules/lab1/edit/", {"manifest": changed}, page="/modules/lab1/edit/"
    )
    csrf_post(
        instructor_client, "/modules/lab1/edit/", {"manifest": changed}, page="/modules/lab1/edit/"
    )
    module = Module.objects.get(name="lab1")
    texts = list(module.revisions.order_by("number").values_list("number", "text"))
    assert texts == [(1, good_manifest), (2, changed)]
    raw = instructor_client.get("/modules/lab1/revisions/1.yaml")
    assert raw.content.decode() == good_manifest


def test_editor_page_uses_codemirror_with_line_numbers(instructor_client):
    page = instructor_client.get("/modules/new/").content.decode()
    assert "vendor/codemirror/lib/codemirror.js" in page
    assert "manifest-editor.js" in page
