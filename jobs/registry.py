"""The kinds of job the apps run, and the owners of what jobs leave on the host.

jobs knows no app: builds and clones register their kinds (and their owner tags) in their
AppConfig.ready, and the runner and the reconcile find them here by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import models


@dataclass(frozen=True)
class Result:
    """How a run ended: `outcome` is the target's status afterwards (for the runs table);
    an `error` makes the run Failed, `skipped` Skipped (the target had moved on)."""

    outcome: str = ""
    error: str = ""
    skipped: bool = False


# handler(operation, target, hv=None, echo=None) -> Result; raising is an internal error.
Handler = Callable[..., Result]
# batch(pairs of (operation, target), hv) -> one Result per pair, in order.
BatchHandler = Callable[..., list[Result]]


@dataclass(frozen=True)
class Kind:
    """A kind of job: what it runs on, on which RQ queue, and how its target is settled.

    * `timeout_s(target)`: RQ's limit for the job;
    * `interrupted(target, reason)`: the target's side of a run whose worker died (mark it
      failed, say why); returns the line for the reconcile's report, or None;
    * `unqueued(target, reason)`: the job could not be queued (Redis down); None leaves the
      run Queued, for the reconcile to queue again;
    * `batch`: runs many claimed operations of this kind together (a class's clones).
    Registered at start-up (AppConfig.ready), before any run.
    """

    name: str
    model: type[models.Model]
    queue: str
    run: Handler
    timeout_s: Callable[[Any], int]
    interrupted: Callable[[Any, str], str | None]
    unqueued: Callable[[Any, str], None] | None = None
    batch: BatchHandler | None = None
    label: str = ""  # how messages name it ("provision"); the name when empty

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Owner:
    """What tags the host objects (domains, networks) a kind of target leaves behind: their
    metadata says ``kind: tag`` and ``key_field: <key>``; `live()` gives the keys whose
    objects must stay. Everything else with the tag is a leftover."""

    tag: str
    key_field: str
    live: Callable[[], set[str]]


# sweep(hv) -> one line per action: an app's own part of the reconcile (jobs.reconcile).
Sweep = Callable[[Any], list[str]]

_kinds: dict[str, Kind] = {}
_owners: dict[str, Owner] = {}
_sweeps: dict[str, Sweep] = {}


class UnknownKind(LookupError):
    pass


def register(kind: Kind) -> None:
    """Run `kind` from now on (registering a name again replaces it)."""
    _kinds[kind.name] = kind


def register_owner(owner: Owner) -> None:
    _owners[owner.tag] = owner


def register_sweep(name: str, sweep: Sweep) -> None:
    """Run `sweep` in every reconcile, in the order of registration (apps' order)."""
    _sweeps[name] = sweep


def kind(name: str) -> Kind:
    try:
        return _kinds[name]
    except KeyError:
        raise UnknownKind(f"no job kind {name!r} is registered (is its app installed?)") from None


def owners() -> list[Owner]:
    return list(_owners.values())


def sweeps() -> list[Sweep]:
    return list(_sweeps.values())
