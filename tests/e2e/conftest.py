"""End-to-end fixtures: the tiny guest image, a loopback HTTP server that serves it, real
libvirt, an isolated storage root, and a check that nothing is left on the host."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import shutil
import threading
from pathlib import Path

import pytest
from django.conf import settings

from tests.e2e import hostcheck
from tests.e2e.storage import qemu_reachable_folder

ROOT = Path(__file__).resolve().parents[2]
IMAGE_CACHE = ROOT / "var" / "cache" / "testimage"


@pytest.fixture(scope="session")
def tiny_image() -> Path:
    from tools.testimage.build import build_image

    return build_image(IMAGE_CACHE)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="session")
def image_server(tiny_image, tmp_path_factory):
    """Serves a folder on 127.0.0.1; `url(name)` and `put(name, bytes)` for tests."""
    root = tmp_path_factory.mktemp("www")
    shutil.copyfile(tiny_image, root / "tiny-20250101.qcow2")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    class Server:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        folder = root

        def url(self, name: str) -> str:
            return f"{self.base}/{name}"

        def sha256(self, name: str) -> str:
            return hashlib.sha256((root / name).read_bytes()).hexdigest()

        def put(self, name: str, data: bytes) -> str:
            (root / name).write_bytes(data)
            return self.url(name)

    yield Server()
    server.shutdown()
    server.server_close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_on_the_host_after_the_suite():
    """After the whole suite, no domain or network of this test run may remain."""
    yield
    from ruddervirt.runtime import get_hypervisor

    prefix = settings.RUDDERVIRT_NAME_PREFIX
    hv = get_hypervisor()
    left = [d.name for d in hv.list_domains(prefix)] + [n.name for n in hv.list_networks(prefix)]
    hostcheck.remove_everything(hv, prefix)
    assert not left, f"the test run left these on the host: {left}"


@pytest.fixture
def storage(settings, request) -> Path:
    """A storage root of its own for each test (see qemu_reachable_folder)."""
    label = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60]
    root = qemu_reachable_folder(label)
    settings.RUDDERVIRT_STORAGE_ROOT = root
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def hv():
    from ruddervirt.runtime import get_hypervisor

    return get_hypervisor()


@pytest.fixture
def clean_host(hv, storage):
    """Fails the test when a build left a domain or network behind; then removes the
    template domains the test made on purpose."""
    yield
    leftovers = hostcheck.build_leftovers(hv, settings.RUDDERVIRT_NAME_PREFIX)
    hostcheck.remove_everything(hv, settings.RUDDERVIRT_NAME_PREFIX)
    shutil.rmtree(storage, ignore_errors=True)
    assert not leftovers, f"a build left these behind: {leftovers}"
