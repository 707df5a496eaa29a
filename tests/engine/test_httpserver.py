"""The per-build HTTP server: only the listed files, GET/HEAD only, guests only, every request
logged. Served on loopback here (the e2e tests serve real guests on a build network)."""

from __future__ import annotations

import http.client
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

from ruddervirt.engine import listen
from ruddervirt.engine.httpserver import BuildHTTPServer, Listener, listener_for
from ruddervirt.hypervisor.specs import NetworkSpec

LOOPBACK = Listener(subnet="lan", ip="127.0.0.1", network=ipaddress.IPv4Network("127.0.0.0/8"))
ANSWERS = b"hostname=web\nssh_authorized_key=ssh-ed25519 AAAA test\n"


@pytest.fixture
def served(tmp_path):
    big = tmp_path / "big.iso"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    lines: list[tuple[str, str]] = []
    server = BuildHTTPServer(
        {"answers": ANSWERS, "Autounattend.xml": b"<unattend/>", "big.iso": big},
        [LOOPBACK],
        log=lambda text, vm: lines.append((text, vm)),
        clients={"127.0.0.1": "web"},
    )
    server.start()
    yield server, lines, big
    server.stop()


def request(port: int, method: str, path: str) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def test_a_listed_file_is_served_by_name(served):
    server, _lines, _big = served
    status, body, headers = request(server.port, "GET", "/answers")
    assert (status, body) == (200, ANSWERS)
    assert headers["Content-Length"] == str(len(ANSWERS))


def test_names_are_url_decoded_and_query_strings_ignored(served):
    server, _lines, _big = served
    assert request(server.port, "GET", "/Autounattend%2Exml?x=1")[:2] == (200, b"<unattend/>")


def test_large_files_are_streamed_whole(served):
    server, _lines, big = served
    status, body, _ = request(server.port, "GET", "/big.iso")
    assert status == 200 and body == big.read_bytes()


def test_head_gives_the_size_without_the_body(served):
    server, _lines, _big = served
    status, body, headers = request(server.port, "HEAD", "/answers")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(ANSWERS)))


@pytest.mark.parametrize("path", ["/", "/nothing", "/../answers", "/answers/", "//etc/passwd"])
def test_anything_else_is_not_found(served, path):
    server, _lines, _big = served
    assert request(server.port, "GET", path)[0] == 404


def test_only_get_and_head_are_allowed(served):
    server, _lines, _big = served
    assert request(server.port, "POST", "/answers")[0] == 501
    assert request(server.port, "PUT", "/answers")[0] == 501


def logged(lines: list, count: int) -> list:
    """The log lines once `count` are there: the server logs right after it has answered."""
    deadline = time.monotonic() + 5
    while len(lines) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return lines


def test_every_request_is_logged_with_client_vm_path_status_and_bytes(served):
    server, lines, _big = served
    request(server.port, "GET", "/answers")
    request(server.port, "GET", "/missing")
    logged(lines, 2)
    assert lines[0] == (f"http: 127.0.0.1 (web) GET /answers -> 200, {len(ANSWERS)} bytes", "web")
    assert lines[1][0].startswith("http: 127.0.0.1 (web) GET /missing -> 404")
    assert [(r.vm, r.path, r.status) for r in server.requests_from("web")] == [
        ("web", "/answers", 200),
        ("web", "/missing", 404),
    ]


def test_clients_outside_the_build_subnets_are_refused_and_logged():
    outside = Listener(subnet="lan", ip="127.0.0.1", network=ipaddress.IPv4Network("10.77.0.0/24"))
    lines: list[tuple[str, str]] = []
    with BuildHTTPServer(
        {"answers": ANSWERS}, [outside], log=lambda t, v: lines.append((t, v))
    ) as s:
        status, body, _ = request(s.port, "GET", "/answers")
        logged(lines, 1)
    assert status == 403 and ANSWERS not in body
    assert lines == [("http: 127.0.0.1 GET /answers -> 403, 0 bytes", "")]


def test_several_subnets_share_one_port():
    second = Listener(subnet="dmz", ip="127.0.0.2", network=ipaddress.IPv4Network("127.0.0.0/8"))
    with BuildHTTPServer({"answers": ANSWERS}, [LOOPBACK, second], log=lambda t, v: None) as s:
        assert s.address("lan") == ("127.0.0.1", s.port)
        assert s.address("dmz") == ("127.0.0.2", s.port)
        assert s.address("other") is None
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        conn.request("GET", "/answers")
        assert conn.getresponse().status == 200
        conn.close()


def test_stopping_closes_the_port(served):
    server, _lines, _big = served
    port = server.port
    server.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_an_unmanaged_subnet_has_no_gateway_to_listen_on():
    spec = NetworkSpec(name="rvt-b1-wire", bridge="rvbrtest0")
    with pytest.raises(ValueError, match="unmanaged"):
        listener_for("wire", spec)


def test_a_gateway_on_the_host_bridge_is_listened_on_there():
    spec = NetworkSpec(name="rvt-b1-lan", bridge="rvbrtest1", ipv4="10.77.0.1/24")
    listener = listener_for("lan", spec)
    assert (listener.ip, listener.network) == ("10.77.0.1", ipaddress.IPv4Network("10.77.0.0/24"))
    assert listener.netns is None or listener.netns.startswith("rvr-")


needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip"), reason="network namespaces need root and ip"
)


@pytest.fixture
def netns():
    name = f"rvt-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=20)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=20)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True, timeout=20)


@needs_netns
def test_a_socket_made_in_a_namespace_listens_there_and_not_on_the_host(netns):
    sock = listen.listening_socket("127.0.0.1", 0, netns=netns)
    port = sock.getsockname()[1]
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2).close()"
        probe = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", connect], timeout=30
        )
        assert probe.returncode == 0
    finally:
        sock.close()


@needs_netns
def test_a_missing_namespace_is_an_error_not_a_socket_on_the_host():
    with pytest.raises(OSError):
        listen.listening_socket("127.0.0.1", 0, netns="rvt-test-does-not-exist")
