"""Adding students to a class in bulk, and the accounts that makes.

An instructor pastes usernames or e-mail addresses. Someone who has an account is added as
is; for anyone else an account is made in the Students group, reachable in one of two ways:

* ``link``: no password yet; an invitation link (valid INVITATION_DAYS) lets the student
  choose one and logs them in. The link's token is shown once and stored only as a digest.
* ``password``: a random one-time password, shown once; the first login asks for a new one.

Only student accounts can be added: an existing administrator, staff or instructor account
is refused and left exactly as it is (no group, no password, no invitation), so that an
instructor cannot take over a more powerful account through a class.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts.roles import STUDENTS, add_to_role, is_privileged, is_student
from clones.models import AccountSetup, Class, ClassMembership

INVITATION_DAYS = 14
MAX_ENTRIES = 500
MODES = ("link", "password")
_SPLIT = re.compile(r"[\s,;]+")


@dataclass(frozen=True)
class AddedStudent:
    user: object
    created: bool
    already_member: bool = False
    password: str | None = None  # the one-time password, shown once
    invitation: str | None = None  # the invitation link's path, shown once


@dataclass(frozen=True)
class AddResult:
    added: list[AddedStudent] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_entries(text: str) -> list[str]:
    """Usernames and addresses separated by new lines, commas, semicolons or spaces;
    duplicates dropped, order kept."""
    seen: dict[str, None] = {}
    for entry in _SPLIT.split(text or ""):
        entry = entry.strip().strip("<>")
        if entry:
            seen.setdefault(entry.lower() if "@" in entry else entry, None)
    return list(seen)


def _find(entry: str):
    User = get_user_model()
    user = User.objects.filter(username=entry).first()
    if user is None and "@" in entry:
        user = User.objects.filter(email__iexact=entry).order_by("pk").first()
    return user


def _check(entry: str) -> str | None:
    """Why `entry` cannot name a new account, or None."""
    User = get_user_model()
    if "@" in entry:
        try:
            validate_email(entry)
        except ValidationError:
            return f"{entry!r} is not an e-mail address"
    try:
        User.username_validator(entry)
    except ValidationError:
        return f"{entry!r} is not a valid username (letters, digits and @.+-_ only)"
    if len(entry) > 150:
        return f"{entry[:20]}...: usernames are at most 150 characters"
    return None


def _create(entry: str, *, mode: str, by) -> AddedStudent:
    User = get_user_model()
    user = User(username=entry, email=entry if "@" in entry else "")
    setup = AccountSetup(user=user, created_by=by)
    password = token = None
    if mode == "password":
        password = secrets.token_urlsafe(9)
        user.set_password(password)
        setup.must_set_password = True
    else:
        token = secrets.token_urlsafe(32)
        user.set_unusable_password()
        setup.token_digest = digest(token)
        setup.expires_at = timezone.now() + timedelta(days=INVITATION_DAYS)
    user.save()
    setup.user = user
    setup.save()
    add_to_role(user, STUDENTS)
    link = reverse("clones:join", args=[token]) if token else None
    return AddedStudent(user=user, created=True, password=password, invitation=link)


def _use_existing(entry: str, user) -> AddedStudent | str:
    """The existing account `user` (found for `entry`) as a student, or why it cannot be:
    a privileged account is refused before anything about it is changed."""
    if is_privileged(user):
        return (
            f"{entry!r} is an administrator, staff or instructor account: only student "
            "accounts can be added to a class"
        )
    if not is_student(user):
        add_to_role(user, STUDENTS)
    return AddedStudent(user=user, created=False)


def add_students(klass: Class, text: str, *, by, mode: str = "link") -> AddResult:
    """Add every entry of `text` to `klass`, making accounts as needed (see the module
    docstring). Entries that cannot be used are reported in `problems`; the others are
    added all the same."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    entries = parse_entries(text)
    result = AddResult()
    if len(entries) > MAX_ENTRIES:
        result.problems.append(f"at most {MAX_ENTRIES} students at once ({len(entries)} given)")
        return result
    for entry in entries:
        with transaction.atomic():
            user = _find(entry)
            if user is None:
                problem = _check(entry)
                if problem:
                    result.problems.append(problem)
                    continue
                added = _create(entry, mode=mode, by=by)
            else:
                added = _use_existing(entry, user)
                if isinstance(added, str):
                    result.problems.append(added)
                    continue
            _, made = ClassMembership.objects.get_or_create(klass=klass, student=added.user)
            if not made:
                added = AddedStudent(user=added.user, created=False, already_member=True)
            result.added.append(added)
    return result


def find_invitation(token: str) -> AccountSetup | None:
    """The unused, unexpired invitation for `token`, or None."""
    if not token:
        return None
    setup = (
        AccountSetup.objects.select_related("user")
        .filter(token_digest=digest(token), used_at__isnull=True)
        .first()
    )
    if setup is None or (setup.expires_at and setup.expires_at <= timezone.now()):
        return None
    if is_privileged(setup.user):  # promoted since: its maker must not choose its password
        return None
    return setup


def set_own_password(user, password: str) -> None:
    """The student chose a password (from an invitation or after a one-time password):
    the setup is spent."""
    user.set_password(password)
    user.save(update_fields=["password"])
    AccountSetup.objects.filter(user=user).update(
        used_at=timezone.now(), must_set_password=False, token_digest=""
    )


def must_set_password(user) -> bool:
    return AccountSetup.objects.filter(user=user, must_set_password=True).exists()
