"""SSRF through sources: http(s) URLs to loopback, the metadata service, private networks,
directly, through a name or through a redirect, are refused before any connection."""

from __future__ import annotations

import socket

import pytest

from ruddervirt.engine import download
from ruddervirt.engine.errors import SourceError
from ruddervirt.engine.sources import fetch
from ruddervirt.fetchpolicy import FetchPolicy, address_refusal, parse_networks
from tests.security.sourceservers import BODY, serving

OPEN = FetchPolicy()  # the default: public addresses only
LOOPBACK_ALLOWED = FetchPolicy(allow_nets=parse_networks("127.0.0.0/8"))


def cache_entries(cache) -> list[str]:
    """What a download left in the cache, lock files aside."""
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.1.2.3", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
    ],
)
def test_every_kind_of_internal_address_is_refused(address, kind):
    reason = address_refusal(address)
    assert reason is not None and kind in reason


@pytest.mark.parametrize("address", ["93.184.216.34", "151.101.2.132", "2a04:4e42::644"])
def test_public_addresses_are_allowed(address):
    assert address_refusal(address) is None


def test_the_allow_list_admits_exactly_its_networks():
    allowed = parse_networks("127.0.0.0/8, 10.20.0.0/16")
    assert address_refusal("127.0.0.1", allowed) is None
    assert address_refusal("10.20.1.1", allowed) is None
    assert address_refusal("10.21.1.1", allowed) is not None
    assert address_refusal("169.254.169.254", allowed) is not None


def test_loopback_url_is_refused_without_the_allow_list_and_never_contacted(tmp_path):
    with serving() as server:
        with pytest.raises(SourceError) as error:
            fetch(server.url("/image"), None, tmp_path / "cache", policy=OPEN)
        assert server.requests == []
    message = str(error.value)
    assert server.url("/image") in message and "loopback" in message
    assert "RUDDERVIRT_FETCH_ALLOW_NETS" in message
    assert cache_entries(tmp_path / "cache") == []


def test_loopback_url_is_fetched_when_the_allow_list_names_loopback(tmp_path):
    with serving() as server:
        path = fetch(server.url("/image"), None, tmp_path / "cache", policy=LOOPBACK_ALLOWED)
    assert path.read_bytes() == BODY


def test_the_metadata_service_is_refused(tmp_path):
    url = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    with pytest.raises(SourceError, match=r"169\.254\.169\.254 is a link-local address"):
        fetch(url, None, tmp_path / "cache", policy=LOOPBACK_ALLOWED)
    assert cache_entries(tmp_path / "cache") == []


def test_a_redirect_from_an_allowed_server_to_a_forbidden_address_is_refused(tmp_path):
    only_first = FetchPolicy(allow_nets=parse_networks("127.0.0.1/32"))
    with serving("127.0.0.1") as allowed, serving("127.0.0.2") as forbidden:
        allowed.redirect_to = forbidden.url("/image")
        with pytest.raises(SourceError) as error:
            fetch(allowed.url("/redirect"), None, tmp_path / "cache", policy=only_first)
        assert allowed.requests and forbidden.requests == []
    message = str(error.value)
    assert f"redirected to {forbidden.url('/image')}" in message and "loopback" in message
    assert cache_entries(tmp_path / "cache") == []


def test_a_redirect_to_the_metadata_service_is_refused(tmp_path):
    with serving() as server:
        server.redirect_to = "http://169.254.169.254/latest/user-data"
        with pytest.raises(SourceError, match="link-local"):
            fetch(server.url("/redirect"), None, tmp_path / "c", policy=LOOPBACK_ALLOWED)


def test_a_redirect_to_a_file_url_is_refused(tmp_path):
    with serving() as server:
        server.redirect_to = "file:///etc/shadow"
        with pytest.raises(SourceError, match=r"leads to file:///etc/shadow"):
            fetch(server.url("/redirect"), None, tmp_path / "c", policy=LOOPBACK_ALLOWED)


def test_endless_redirects_stop_at_the_bound(tmp_path):
    with serving() as server:
        with pytest.raises(SourceError, match="more than 10 redirects"):
            fetch(server.url("/loop"), None, tmp_path / "c", policy=LOOPBACK_ALLOWED)
        assert len(server.requests) == 11


def test_a_redirect_between_allowed_addresses_is_followed(tmp_path):
    with serving("127.0.0.1") as first, serving("127.0.0.3") as second:
        first.redirect_to = second.url("/image")
        path = fetch(first.url("/redirect"), None, tmp_path / "c", policy=LOOPBACK_ALLOWED)
    assert path.read_bytes() == BODY


def test_a_public_name_resolving_to_a_private_address_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "resolve_host", lambda host, port: [_ip("10.0.0.5")])
    with pytest.raises(SourceError) as error:
        fetch("https://images.example.com/disk.qcow2", None, tmp_path / "c", policy=OPEN)
    assert "10.0.0.5 is a private address" in str(error.value)
    assert "https://images.example.com/disk.qcow2" in str(error.value)


def test_a_name_with_one_internal_address_among_public_ones_is_refused(tmp_path, monkeypatch):
    answers = [_ip("93.184.216.34"), _ip("127.0.0.1")]
    monkeypatch.setattr(download, "resolve_host", lambda host, port: answers)
    with pytest.raises(SourceError, match=r"127\.0\.0\.1 is a loopback address"):
        fetch("http://images.example.com/disk.qcow2", None, tmp_path / "c", policy=OPEN)


def test_the_checked_address_is_the_one_connected_with_the_name_as_host(tmp_path, monkeypatch):
    """DNS rebinding: one lookup per request, and the connection goes to what was checked."""
    with serving() as server:
        lookups = []

        def resolve(host, port):
            lookups.append(host)
            return [_ip("127.0.0.1")]

        real = socket.getaddrinfo

        def numeric_only(host, *args, **kwargs):
            assert host == "127.0.0.1", f"a second lookup of {host}"
            return real(host, *args, **kwargs)

        monkeypatch.setattr(download, "resolve_host", resolve)
        monkeypatch.setattr(socket, "getaddrinfo", numeric_only)
        url = f"http://images.example.test:{server.port}/image"
        path = fetch(url, None, tmp_path / "c", policy=LOOPBACK_ALLOWED)
    assert path.read_bytes() == BODY
    assert lookups == ["images.example.test"]
    assert server.requests == [("/image", f"images.example.test:{server.port}")]


def _ip(text: str):
    import ipaddress

    return ipaddress.ip_address(text)
