"""Guarded status changes with a history row per change, for every model that has a status.

A model with a lifecycle (a Build, a Clone) gets its `transition` from `transition_for`:
a table of allowed moves, a conditional UPDATE (so a worker finishing and a person
cancelling at the same moment cannot both win) and a history row (when, from, to, by,
why) written in the same database transaction as the UPDATE. Nothing else assigns
`.status`; `phase`-like progress fields are the reporter's, not this module's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol, TypeVar

from django.conf import settings
from django.db import models, transaction
from django.db.models.expressions import Combinable
from django.utils import timezone


class InvalidTransition(Exception):
    """A move the table refuses, or one that lost a race. `current` is the status the row
    has (as far as the refusal knows), `new` the status asked for."""

    def __init__(self, obj: models.Model, current: str, new: str) -> None:
        name = obj._meta.verbose_name
        super().__init__(f"{name} {obj.pk} cannot go from {current} to {new}")
        self.current = current
        self.new = new


class StatusChange(models.Model):
    """One status change of one object. Concrete subclasses add the FK to their object
    (named `subject`, related_name `history`)."""

    when = models.DateTimeField(default=timezone.now, db_index=True)
    from_status = models.CharField(max_length=20, blank=True)  # "": the object was made
    to_status = models.CharField(max_length=20)
    # Who caused it; None for a worker or the reconciler.
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    why = models.TextField(blank=True)

    class Meta:
        abstract = True
        ordering = ["when", "pk"]

    def __str__(self) -> str:
        return f"{self.from_status or '-'} -> {self.to_status} at {self.when:%Y-%m-%d %H:%M:%S}"


M = TypeVar("M", bound=models.Model)
# (obj, current, new, fields the caller passed) -> the fields to write with the status.
Changes = Callable[[Any, str, str, dict[str, Any]], dict[str, Any]]


class Transition(Protocol[M]):
    def __call__(
        self,
        obj: M,
        new: str,
        *,
        by: Any = None,
        why: str = "",
        only_from: Collection[str] | None = None,
        **fields: Any,
    ) -> M: ...


def record_created(history: type[StatusChange], obj: models.Model, *, by: Any, why: str) -> None:
    """The first row of an object's history: it was made, in the status it has."""
    history.objects.create(subject=obj, from_status="", to_status=obj.status, by=by, why=why[:4000])


def transition_for(
    model: type[M],
    allowed: Mapping[str, Collection[str]],
    history: type[StatusChange],
    *,
    changes: Changes | None = None,
    callers_copy_is_claim: bool = False,
) -> Transition[M]:
    """Make `transition(obj, new, *, by=None, why="", only_from=None, **fields)` for `model`.

    The returned function moves `obj` from the status its row has to `new` and writes one
    `history` row, both in one transaction, or raises InvalidTransition and writes nothing:
    when `allowed` has no such move, when the row's status is not in `only_from`, or when
    another writer moved the row first. With `callers_copy_is_claim`, `obj.status` (the
    caller's copy) is the status it claims to move from: a copy that is out of date is a
    lost race (builds: a worker moves its own build); without it, the row's status counts
    (clones: a job acts on whatever the row says now). `changes` turns the caller's fields
    into the fields to write (per-model rules: timestamps, errors). `why` defaults to the
    `error` being recorded, then the `note`. On success `obj` holds the written values.
    """

    def transition(
        obj: M,
        new: str,
        *,
        by: Any = None,
        why: str = "",
        only_from: Collection[str] | None = None,
        **fields: Any,
    ) -> M:
        why = why or fields.get("error") or fields.get("note") or ""
        rows = model._default_manager.filter(pk=obj.pk)
        with transaction.atomic():
            stored = rows.values_list("status", flat=True).first()
            if stored is None:
                raise InvalidTransition(obj, "gone", new)
            claimed = getattr(obj, "status") if callers_copy_is_claim else stored  # noqa: B009
            if claimed != stored:  # someone else moved it since the caller looked
                obj.status = stored  # type: ignore[attr-defined]
                raise InvalidTransition(obj, stored, new)
            if new not in allowed.get(stored, ()) or (
                only_from is not None and stored not in only_from
            ):
                raise InvalidTransition(obj, stored, new)
            updates = {"status": new, **(changes(obj, stored, new, fields) if changes else fields)}
            if not rows.filter(status=stored).update(**updates):  # lost a race just now
                now = _status_now(rows)
                if callers_copy_is_claim:
                    obj.status = now  # type: ignore[attr-defined]
                raise InvalidTransition(obj, now, new)
            history.objects.create(
                subject=obj, from_status=stored, to_status=new, by=by, why=str(why)[:4000]
            )
        _apply(obj, updates)
        return obj

    return transition


def _status_now(rows: models.QuerySet) -> str:
    return rows.values_list("status", flat=True).first() or "gone"


def _apply(obj: models.Model, updates: dict[str, Any]) -> None:
    """Put the written values on `obj`; expressions (F("attempt") + 1) are read back."""
    computed = [key for key, value in updates.items() if isinstance(value, Combinable)]
    for key, value in updates.items():
        if key not in computed:
            setattr(obj, key, value)
    if computed:
        obj.refresh_from_db(fields=computed)
