"""The step cache's store: checkpoints of build VMs' disks after each successful step.

Layout under ``STORAGE_ROOT/cache/steps/``::

    <key>/record.json      one checkpoint (CheckpointRecord): the VM's disks after a step
    layers/<name>.qcow2    the disk layers; each is a qcow2 overlay on the one before it
    leases/<build>.json    the layers and keys a running build uses (never evicted)

A checkpoint is a list of layer chains, one per disk: the last layer of each chain holds
what the step wrote, its backing file the state before the step, down to the VM's imported
source (or its parent template's disk). Layers are written by exactly one build, while its
step runs, and are read-only once a checkpoint names them (engine.vm_cache takes them with
an external disk-only snapshot). Two builds that make the same key race harmlessly: the
first record written wins; the other build's layers are only referenced by its own later
checkpoints and its lease, and are removed once nothing references them.

A record is written after its layers are complete (write to a temporary name, then a hard
link to ``record.json`` that fails if one is there: the first record stays), so a crash
leaves no half checkpoint: at worst unreferenced layers, which ``collect`` removes.
Eviction removes whole records (least recently used first, never a leased key), then every
layer no record and no lease references.

Modes: the store and ``layers/`` are 0711 (QEMU, user libvirt-qemu, must reach the layers;
nobody else may list them), the layers themselves are made like a build's own disks (by
qemu-img, owned by libvirt while a VM uses them); ``<key>/`` and ``leases/`` are 0700 and
every record, lease and the lock 0600 (QEMU never reads them).

One exclusive ``flock`` on ``.lock`` in the store (``StepCache.locked``) is held around
finding a checkpoint and leasing it (``BuildCache.claim``), around ``put`` and around
eviction and ``collect``: a checkpoint found is leased before any eviction can remove it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORD = "record.json"
LOCK = ".lock"
REACHABLE = 0o711  # the store and layers/: QEMU passes through
PRIVATE = 0o700  # a record's folder, leases/
FILE_MODE = 0o600  # records, leases, the lock
# A layer nobody references is removed only once it has not changed for this long.
GRACE_S = 300.0


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint. ``chains``: per disk, its layer file names, bottom first; ``requires``:
    files outside the store the chains rest on (a parent template's disks)."""

    key: str
    build: str  # the build that made it, e.g. "b42"
    vm: str
    step_index: int  # 0-based; -1 would be the base (not kept as a checkpoint)
    step_name: str
    chains: tuple[tuple[str, ...], ...]
    created: float  # time.time()
    last_used: float
    size: int  # bytes on disk of every layer of its chains
    duration_s: float = 0.0  # how long the step took when it ran
    requires: tuple[str, ...] = ()
    build_id: int | None = None  # the portal's build number, when known

    @staticmethod
    def load(path: Path) -> CheckpointRecord:
        data = json.loads(path.read_text())
        data["chains"] = tuple(tuple(c) for c in data["chains"])
        data["requires"] = tuple(data.get("requires", ()))
        return CheckpointRecord(**data)


@dataclass
class Lease:
    """What one running build holds: keys it started from, layers it reads or writes."""

    build: str
    keys: set[str] = field(default_factory=set)
    layers: set[str] = field(default_factory=set)


class StepCache:
    """The store at ``root`` (see the module docstring). Safe for several builds at once in
    one or several processes: every write is a rename, every reader tolerates a record that
    vanished meanwhile."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layers = root / "layers"
        self.leases = root / "leases"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's exclusive lock (blocks until no other holder, in any process)."""
        _folder(self.root, REACHABLE)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the file releases the lock

    # --- reading ----------------------------------------------------------------------
    def get(self, key: str) -> CheckpointRecord | None:
        """The usable checkpoint of ``key``: its record, every layer and required file
        present; else None."""
        try:
            record = CheckpointRecord.load(self.root / key / RECORD)
        except (OSError, ValueError, TypeError, KeyError):
            return None
        layers = [self.layers / name for chain in record.chains for name in chain]
        if not all(p.is_file() for p in layers) or not all(
            Path(p).is_file() for p in record.requires
        ):
            return None
        return record

    def records(self) -> list[CheckpointRecord]:
        """Every readable record, least recently used first."""
        found = []
        for path in self.root.glob(f"*/{RECORD}"):
            try:
                found.append(CheckpointRecord.load(path))
            except (OSError, ValueError, TypeError, KeyError):
                continue
        return sorted(found, key=lambda r: r.last_used)

    def layer_path(self, name: str) -> Path:
        return self.layers / name

    def make_layers_dir(self) -> Path:
        """``layers/``, created 0711 (with the store) when missing."""
        _folder(self.root, REACHABLE)
        return _folder(self.layers, REACHABLE)

    def top_layers(self, record: CheckpointRecord) -> list[Path]:
        """The last layer of each disk's chain: what a new overlay backs onto."""
        return [self.layers / chain[-1] for chain in record.chains]

    # --- writing ----------------------------------------------------------------------
    def put(self, record: CheckpointRecord) -> bool:
        """Keep ``record`` unless ``record.key`` already has one (first writer wins)."""
        with self.locked():
            folder = _folder(self.root / record.key, PRIVATE)
            tmp = _tmp_name(folder / RECORD)
            _write_private(tmp, json.dumps(asdict(record), indent=1, sort_keys=True))
            try:
                os.link(tmp, folder / RECORD)  # never replaces: the first record stays
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
            return True

    def touch(self, record: CheckpointRecord, now: float | None = None) -> bool:
        """Mark ``record`` used now (LRU order). A record that vanished (evicted) is left
        gone: returns whether it was still there."""
        path = self.root / record.key / RECORD
        try:
            current = CheckpointRecord.load(path)
        except (OSError, ValueError, TypeError, KeyError):
            return False
        if not path.is_file():
            return False
        data = asdict(current)
        data["last_used"] = time.time() if now is None else now
        try:
            _write_json(path, data)
        except OSError:  # its folder went meanwhile
            return False
        return True

    def size_of(self, chains: Sequence[Sequence[str]]) -> int:
        return sum(_size(self.layers / n) for chain in chains for n in chain)

    # --- leases -----------------------------------------------------------------------
    def hold(self, lease: Lease) -> None:
        """Write (or rewrite) ``lease``: its keys and layers are not evicted until released."""
        _folder(self.root, REACHABLE)
        _folder(self.leases, PRIVATE)
        data = {"build": lease.build, "keys": sorted(lease.keys), "layers": sorted(lease.layers)}
        _write_json(self.leases / f"{lease.build}.json", data)

    def release(self, build: str) -> None:
        (self.leases / f"{build}.json").unlink(missing_ok=True)

    def _held(self) -> tuple[set[str], set[str]]:
        keys: set[str] = set()
        layers: set[str] = set()
        for path in self.leases.glob("*.json"):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            keys.update(data.get("keys", ()))
            layers.update(data.get("layers", ()))
        return keys, layers

    # --- housekeeping -----------------------------------------------------------------
    def remove(self, key: str) -> None:
        (self.root / key / RECORD).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: someone is writing it again
            (self.root / key).rmdir()

    def evict(
        self,
        *,
        max_bytes: int | None = None,
        max_age_s: float | None = None,
        now: float | None = None,
        everything: bool = False,
    ) -> list[CheckpointRecord]:
        """Remove records unused for longer than ``max_age_s`` (``everything``: all of them),
        then the least recently used until the store's layers take at most ``max_bytes``;
        never a leased key nor a layer a lease or a remaining record uses. Returns the
        records removed. Holds the store's lock."""
        with self.locked():
            return self._evict(max_bytes, max_age_s, now, everything)

    def _evict(
        self, max_bytes: int | None, max_age_s: float | None, now: float | None, everything: bool
    ) -> list[CheckpointRecord]:
        now = time.time() if now is None else now
        held_keys, held_layers = self._held()
        records = self.records()
        removed = []
        for record in records:
            old = max_age_s is not None and now - record.last_used > max_age_s
            if record.key not in held_keys and (everything or old):
                removed.append(record)
        keep = [r for r in records if r not in removed]
        if max_bytes is not None:
            for record in list(keep):
                if self._size_needed(keep, held_layers) <= max_bytes:
                    break
                if record.key in held_keys:
                    continue
                keep.remove(record)
                removed.append(record)
        for record in removed:
            self.remove(record.key)
        self._collect(_layers_of(keep) | held_layers, now)
        return removed

    def collect(self, keep: set[str] | None = None, *, now: float | None = None) -> list[str]:
        """Remove every layer file no record and no lease names, unless it changed in the
        last GRACE_S (a build may have leased and made it since the leases were read);
        the names removed. Holds the store's lock."""
        with self.locked():
            if keep is None:
                _keys, held = self._held()
                keep = _layers_of(self.records()) | held
            return self._collect(keep, now)

    def _collect(self, keep: set[str], now: float | None) -> list[str]:
        now = time.time() if now is None else now
        gone = []
        for path in sorted(self.layers.glob("*")):
            if path.name not in keep and now - _mtime(path) > GRACE_S:
                path.unlink(missing_ok=True)
                gone.append(path.name)
        return gone

    def total_size(self) -> int:
        return sum(_size(p) for p in self.layers.glob("*"))

    def _size_needed(self, records: Iterable[CheckpointRecord], held: set[str]) -> int:
        return sum(_size(self.layers / n) for n in _layers_of(records) | held)


def _layers_of(records: Iterable[CheckpointRecord]) -> set[str]:
    return {name for r in records for chain in r.chains for name in chain}


def _size(path: Path) -> int:
    """Bytes ``path`` takes on disk (its allocated blocks: layers are sparse)."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _folder(path: Path, mode: int) -> Path:
    """``path`` (parents made as plain folders), created with ``mode`` and never wider."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    if path.stat().st_mode & 0o777 != mode:
        path.chmod(mode)  # made before the store's folders had their modes
    return path


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to the new file ``path``, mode 0600 from its creation on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    with os.fdopen(fd, "w") as stream:
        stream.write(text)


def _write_json(path: Path, data: object) -> None:
    tmp = _tmp_name(path)
    _write_private(tmp, json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


@dataclass
class BuildCache:
    """The step cache of one build, shared by its VM threads: the store and the build's
    lease on it (what it reads and writes is never evicted while it runs)."""

    store: StepCache
    build_id: int | None = None  # the portal's build number, shown as "reused from build #N"
    lease: Lease | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self, build: str, *, keys: tuple[str, ...] = (), layers: tuple[str, ...] = ()) -> None:
        with self.lock:
            if self.lease is None:
                self.lease = Lease(build)
            self.lease.keys.update(keys)
            self.lease.layers.update(layers)
            self.store.hold(self.lease)

    def claim(self, build: str, key: str, *, disks: int) -> CheckpointRecord | None:
        """The usable checkpoint of ``key`` with ``disks`` chains, leased by ``build`` and
        marked used, all under the store's lock (no eviction can come between); else None."""
        with self.lock, self.store.locked():
            record = self.store.get(key)
            if record is None or len(record.chains) != disks:
                return None
            if self.lease is None:
                self.lease = Lease(build)
            self.lease.keys.add(key)
            self.lease.layers.update(n for chain in record.chains for n in chain)
            self.store.hold(self.lease)
            self.store.touch(record)
            return record

    def release(self) -> None:
        with self.lock:
            if self.lease is not None:
                self.store.release(self.lease.build)
                self.lease = None
