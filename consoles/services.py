"""Console tokens: issuing them to the page, redeeming them in the WebSocket consumer.

Contract: a token is random (`secrets.token_urlsafe`), bound to one user and one target,
redeemable once, and only within TOKEN_TTL_S of being issued. The user's permission is
checked when the token is issued, again when it is redeemed, and then every
RUDDERVIRT_CONSOLE_RECHECK_S while the console is open (`recheck`, called by the consumer,
which also closes a console after RUDDERVIRT_CONSOLE_MAX_SESSION_S).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, load_backend
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from consoles import registry
from consoles.models import ConsoleToken
from ruddervirt.hypervisor.driver import ConsoleAddress

log = logging.getLogger(__name__)

TOKEN_TTL_S = 60
# Browsers send the token as a WebSocket subprotocol, so it never appears in a URL (access
# logs, proxies). Scripts may put it in the path instead: /ws/console/<token>.
WS_PATH = "/ws/console/"
SUBPROTOCOL_PREFIX = "rudder.token."
# Spent and expired tokens are kept this long (who opened which console, and when).
KEEP_SPENT = timedelta(days=1)


@dataclass(frozen=True)
class IssuedToken:
    token: str
    ws_path: str
    expires_in: int

    @property
    def subprotocols(self) -> list[str]:
        """What the browser offers: RFB's 'binary', and the token."""
        return ["binary", SUBPROTOCOL_PREFIX + self.token]

    def as_json(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "ws_path": self.ws_path,
            "subprotocols": self.subprotocols,
            "expires_in": self.expires_in,
        }


@dataclass(frozen=True)
class Target:
    kind: str
    object_id: int
    vm: str
    domain: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.object_id}/{self.vm}"


class TokenRefused(Exception):
    """The token cannot open a console (unknown, spent, expired, someone else's, or the
    user lost the right to the VM meanwhile). The message is safe to log."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def redacted(token: str) -> str:
    """What logs may show of a token."""
    return token[:6] + "…"


def check_access(user: Any, kind: str, object_id: int, vm: str) -> Target:
    """The target when `user` may open its console; PermissionDenied (403) or Http404."""
    if not getattr(user, "is_authenticated", False):
        raise PermissionDenied("log in to open a console")
    domain = registry.resolve(user, kind, object_id, vm)
    return Target(kind=kind, object_id=object_id, vm=vm, domain=domain)


def issue_token(user: Any, kind: str, object_id: int, vm: str) -> IssuedToken:
    """A fresh token for `user` to open the console of (kind, object_id, vm)."""
    check_access(user, kind, object_id, vm)
    token = secrets.token_urlsafe(32)
    now = timezone.now()
    ConsoleToken.objects.create(
        digest=digest(token),
        user=user,
        kind=kind,
        object_id=object_id,
        vm=vm,
        created_at=now,
        expires_at=now + timedelta(seconds=TOKEN_TTL_S),
    )
    ConsoleToken.objects.filter(expires_at__lt=now - KEEP_SPENT).delete()
    return IssuedToken(token=token, ws_path=WS_PATH, expires_in=TOKEN_TTL_S)


def token_from_subprotocols(offered: list[str]) -> str | None:
    """The token a browser offered as a subprotocol, if any."""
    for protocol in offered:
        if protocol.startswith(SUBPROTOCOL_PREFIX):
            return protocol.removeprefix(SUBPROTOCOL_PREFIX)
    return None


def redeem_token(token: str, user: Any) -> Target:
    """Spend `token` for `user` and return its target, permission re-checked.

    A token presented by anyone but its owner is refused and stays unspent, so a leaked
    token in a stranger's hands cannot lock its owner out either."""
    if not getattr(user, "is_authenticated", False):
        raise TokenRefused("not logged in")
    now = timezone.now()
    rows = ConsoleToken.objects.filter(
        digest=digest(token), user_id=user.pk, used_at__isnull=True, expires_at__gt=now
    )
    row = rows.first()
    # The conditional UPDATE is what makes a token single-use when two connects race.
    if row is None or not rows.filter(pk=row.pk).update(used_at=now):
        raise TokenRefused(_why_refused(token, user))
    try:
        return check_access(user, row.kind, row.object_id, row.vm)
    except (PermissionDenied, Http404) as exc:
        raise TokenRefused(f"no longer allowed: {exc}") from exc


def _why_refused(token: str, user: Any) -> str:
    row = ConsoleToken.objects.filter(digest=digest(token)).first()
    if row is None:
        return "unknown token"
    if row.user_id != user.pk:
        return "the token belongs to another user"
    if row.used_at is not None:
        return "the token was already used"
    return "the token expired"


def locate(target: Target) -> ConsoleAddress:
    """Where the target's VNC server listens (blocking; the hypervisor's InvalidState when
    the VM is not running)."""
    return registry.locate(target.kind, target.domain)


# --- while a console is open --------------------------------------------------------------
def session_user(session_key: str | None) -> Any | None:
    """The active user session `session_key` is logged in as now; None when the session
    ended (logout, expiry), the account was deactivated or its password changed.

    django.contrib.auth.get_user's checks, read-only: this runs beside the browser's own
    requests, so it must never flush or cycle the session."""
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user_id, backend, stored_hash = (
        store.get(SESSION_KEY),
        store.get(BACKEND_SESSION_KEY),
        store.get(HASH_SESSION_KEY),
    )
    if user_id is None or backend not in settings.AUTHENTICATION_BACKENDS or not stored_hash:
        return None
    user = load_backend(backend).get_user(user_id)  # None for a deactivated account
    if user is None:
        return None
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    if not any(constant_time_compare(stored_hash, h) for h in hashes):
        return None
    return user


def recheck(session_key: str | None, user_id: int, target: Target) -> str | None:
    """Why the console of `target`, opened by user `user_id` in session `session_key`, must
    close now; None while it may stay open. A few small queries (blocking: the consumer
    calls it through database_sync_to_async)."""
    user = session_user(session_key)
    if user is None or user.pk != user_id:
        return "you were logged out, your password changed or your account was deactivated"
    try:
        now = check_access(user, target.kind, target.object_id, target.vm)
    except (PermissionDenied, Http404) as exc:
        return f"you no longer have access to this console: {exc}"
    if now.domain != target.domain:
        return "this VM was replaced: open its console again"
    return None


def max_session_s() -> float:
    """How long one console may stay open (RUDDERVIRT_CONSOLE_MAX_SESSION_S)."""
    return float(settings.RUDDERVIRT_CONSOLE_MAX_SESSION_S)


def recheck_every_s() -> float:
    """How often an open console's access is checked again (RUDDERVIRT_CONSOLE_RECHECK_S)."""
    return float(settings.RUDDERVIRT_CONSOLE_RECHECK_S)


def duration(seconds: float) -> str:
    """8 h, 90 min, 45 s: how the console says a time limit."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600:.0f} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds // 60:.0f} min"
    return f"{seconds:g} s"
