"""Where RudderVirt's Redis is and how to log in to it (read by settings.py; Django-free).

Setup (scripts/redis.sh) runs RudderVirt's own Redis on ``var/redis.sock`` (only root may
connect) with a password kept in ``var/redis-password`` (0600). ``REDIS_URL`` names the server
without the password; the password comes from ``REDIS_PASSWORD`` or that file, so the URL can
be shown, logged and passed to child processes without giving the password away. A URL that
carries a password of its own keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

PASSWORD_FILE = "redis-password"  # noqa: S105 (a file name, not a password)
SOCKET = "redis.sock"


def default_url(var_dir: Path, db: int = 0) -> str:
    return f"unix://{var_dir / SOCKET}?db={db}"


def password(var_dir: Path, environ: Mapping[str, str]) -> str | None:
    """``REDIS_PASSWORD`` when set, else the content of ``var/redis-password``, else None."""
    if environ.get("REDIS_PASSWORD"):
        return environ["REDIS_PASSWORD"]
    try:
        return (var_dir / PASSWORD_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def with_password(url: str, secret: str | None) -> str:
    """``url`` with ``secret`` as its password, unless it has a password already."""
    parts = urlsplit(url)
    if secret is None or parts.password is not None:
        return url
    user = quote(parts.username, safe="") if parts.username else ""
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:{quote(secret, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def with_db(url: str, db: int) -> str:
    """``url`` on Redis database ``db`` (``redis://host/N`` or ``unix://path?db=N``)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
        query = f"{query}&db={db}" if query else f"db={db}"
        return f"unix://{parts.netloc}{parts.path}?{query}"  # urlunsplit drops an empty "//"
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))
