"""The nginx site of deploy/nginx/ruddervirt.conf, filled in, and a self-signed certificate.

Django-free: ``manage.py nginx_config`` and the proxy tests both call it, so what the tests
run is the shipped template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ruddervirt import proc

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "ruddervirt.conf"
PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
# A server name nginx and a certificate can both take: DNS labels, or an IPv4 address.
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
SERVER_NAME = re.compile(rf"^(?=.{{1,253}}$){LABEL}(\.{LABEL})*$")
UPSTREAM = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$|^unix:/[^\s;{}]+$")
LISTEN = re.compile(r"^((\[[0-9a-fA-F:]+\]|[0-9.]+):)?\d{1,5}$")
OPENSSL_TIMEOUT_S = 60


class ProxyConfigError(ValueError):
    """A value that cannot go into the nginx site (said with the option it came from)."""


@dataclass(frozen=True)
class Site:
    server_name: str
    certificate: Path
    certificate_key: Path
    upstream: str = "127.0.0.1:8000"
    https_listen: str = "443"
    http_listen: str = "80"

    def check(self) -> None:
        """Raise ProxyConfigError for a value nginx would misread (no ; { } or spaces)."""
        if not SERVER_NAME.match(self.server_name):
            raise ProxyConfigError(f"--server-name {self.server_name!r}: not a host name")
        if not UPSTREAM.match(self.upstream):
            raise ProxyConfigError(f"--upstream {self.upstream!r}: expected HOST:PORT")
        for option, value in (("--https", self.https_listen), ("--http", self.http_listen)):
            if not LISTEN.match(value):
                raise ProxyConfigError(f"{option} {value!r}: expected PORT or ADDRESS:PORT")
        for option, path in (("--cert", self.certificate), ("--key", self.certificate_key)):
            if not path.is_absolute() or re.search(r"[\s;{}'\"]", str(path)):
                raise ProxyConfigError(f"{option} {path}: expected an absolute path, no spaces")

    @property
    def https_port(self) -> int:
        return int(self.https_listen.rsplit(":", 1)[-1])

    def values(self) -> dict[str, str]:
        port = self.https_port
        return {
            "SERVER_NAME": self.server_name,
            "HTTPS_LISTEN": self.https_listen,
            "HTTP_LISTEN": self.http_listen,
            "HTTPS_ORIGIN": "https://$host" if port == 443 else f"https://$host:{port}",
            "UPSTREAM": self.upstream,
            "CERTIFICATE": str(self.certificate),
            "CERTIFICATE_KEY": str(self.certificate_key),
        }


def render(site: Site, template: str | None = None) -> str:
    """The template with every @NAME@ filled in; ProxyConfigError for a bad value or a
    placeholder the site has no value for."""
    site.check()
    text = TEMPLATE.read_text() if template is None else template
    values = site.values()
    unknown = sorted(set(PLACEHOLDER.findall(text)) - values.keys())
    if unknown:
        raise ProxyConfigError(f"{TEMPLATE.name}: no value for {', '.join(unknown)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def self_signed(server_name: str, certificate: Path, key: Path, *, days: int = 825) -> None:
    """A self-signed certificate for ``server_name`` (as its DNS name, or IP address) and its
    key (0600), with openssl. For a test or a first start; browsers warn about it."""
    if not SERVER_NAME.match(server_name):
        raise ProxyConfigError(f"{server_name!r}: not a host name")
    is_ip = re.fullmatch(r"[0-9.]+", server_name) is not None
    san = f"IP:{server_name}" if is_ip else f"DNS:{server_name}"
    certificate.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    key.touch(mode=0o600, exist_ok=True)
    key.chmod(0o600)
    proc.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
         "-days", str(days), "-subj", f"/CN={server_name}", "-addext", f"subjectAltName={san}",
         "-keyout", str(key), "-out", str(certificate)],
        timeout=OPENSSL_TIMEOUT_S,
    )  # fmt: skip
