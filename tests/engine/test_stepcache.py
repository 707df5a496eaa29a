"""The step cache's store (engine.stepcache): records, leases, LRU eviction, garbage."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ruddervirt.engine.stepcache import GRACE_S, BuildCache, CheckpointRecord, Lease, StepCache


@pytest.fixture
def store(tmp_path: Path) -> StepCache:
    return StepCache(tmp_path / "steps")


def keep(
    store: StepCache, key: str, *layers: str, used: float = 100.0, size: int = 4096
) -> CheckpointRecord:
    store.layers.mkdir(parents=True, exist_ok=True)
    for name in layers:
        path = store.layer_path(name)
        if not path.exists():
            path.write_bytes(b"x" * size)
    record = CheckpointRecord(
        key=key, build="b1", vm="web", step_index=0, step_name="one",
        chains=(tuple(layers),), created=used, last_used=used, size=size,
    )  # fmt: skip
    assert store.put(record)
    return record


def test_a_kept_checkpoint_is_found_by_its_key_and_the_first_writer_wins(store) -> None:
    first = keep(store, "k1", "base.qcow2")
    assert store.get("k1") == first
    again = CheckpointRecord(**{**first.__dict__, "build": "b2"})
    assert store.put(again) is False and store.get("k1").build == "b1"
    assert store.get("other") is None


def test_a_checkpoint_whose_layer_is_gone_is_not_usable(store) -> None:
    keep(store, "k1", "base.qcow2")
    store.layer_path("base.qcow2").unlink()
    assert store.get("k1") is None


def test_eviction_removes_the_least_recently_used_until_under_the_cap(store) -> None:
    keep(store, "old", "a.qcow2", used=1.0)
    keep(store, "new", "b.qcow2", used=2.0)
    removed = store.evict(max_bytes=store.total_size() - 1, now=time.time() + GRACE_S + 1)
    assert [r.key for r in removed] == ["old"]
    assert store.get("new") is not None and not store.layer_path("a.qcow2").exists()


def test_a_layer_shared_by_a_kept_checkpoint_survives_its_other_checkpoint(store) -> None:
    keep(store, "step1", "base.qcow2", used=1.0)
    keep(store, "step2", "base.qcow2", "top.qcow2", used=2.0)
    store.evict(max_age_s=10, now=12.0)  # step1 unused for 11 s, step2 for 10
    assert store.get("step1") is None and store.get("step2") is not None
    assert store.layer_path("base.qcow2").exists()


def test_a_leased_checkpoint_and_layer_are_never_evicted(store) -> None:
    keep(store, "used", "base.qcow2", used=1.0)
    store.layers.joinpath("writing.qcow2").write_bytes(b"y")
    store.hold(Lease("b9", keys={"used"}, layers={"base.qcow2", "writing.qcow2"}))
    assert store.evict(everything=True) == []
    assert store.get("used") is not None and store.layer_path("writing.qcow2").exists()
    store.release("b9")
    later = time.time() + GRACE_S + 1  # unused layers go once they are older than GRACE_S
    assert [r.key for r in store.evict(everything=True, now=later)] == ["used"]
    assert list(store.layers.iterdir()) == []


def test_a_fresh_unreferenced_layer_is_spared_it_may_be_a_build_s_new_one(store) -> None:
    store.layers.mkdir(parents=True)
    store.layer_path("new.qcow2").write_bytes(b"z")
    assert store.collect() == []
    assert store.collect(now=time.time() + GRACE_S + 1) == ["new.qcow2"]


def test_touch_moves_a_checkpoint_to_the_back_of_the_eviction_order(store) -> None:
    one = keep(store, "one", "a.qcow2", used=1.0)
    keep(store, "two", "b.qcow2", used=2.0)
    store.touch(one, now=3.0)
    assert [r.key for r in store.records()] == ["two", "one"]


def test_put_keeps_the_first_record_even_when_another_appears_after_its_check(
    store, monkeypatch
) -> None:
    first = keep(store, "k1", "a.qcow2")
    monkeypatch.setattr(Path, "exists", lambda self: False)  # the race window: not there yet
    again = CheckpointRecord(**{**first.__dict__, "build": "b2"})
    assert store.put(again) is False
    monkeypatch.undo()
    assert store.get("k1").build == "b1"


def test_eviction_waits_for_a_build_that_is_claiming_a_checkpoint(store) -> None:
    keep(store, "k1", "a.qcow2")
    done = threading.Event()
    with store.locked():
        worker = threading.Thread(target=lambda: (store.evict(everything=True), done.set()))
        worker.start()
        assert not done.wait(0.3)  # blocked on the store's lock
    worker.join(timeout=10)
    assert done.is_set() and store.get("k1") is None


def test_a_claimed_checkpoint_is_leased_so_eviction_keeps_it(store) -> None:
    keep(store, "k1", "a.qcow2")
    shared = BuildCache(store)
    assert shared.claim("b2", "k1", disks=1) is not None
    assert store.evict(everything=True) == [] and store.get("k1") is not None
    assert shared.claim("b2", "k1", disks=2) is None  # another number of disks: no match


def test_touching_a_record_that_vanished_is_a_miss_not_a_crash(store) -> None:
    record = keep(store, "k1", "a.qcow2")
    store.remove("k1")
    assert store.touch(record) is False
    assert not (store.root / "k1" / "record.json").exists()


def test_the_store_s_folders_and_records_are_private_and_its_layers_reachable(store) -> None:
    store.make_layers_dir()
    store.layer_path("a.qcow2").write_bytes(b"x")
    record = CheckpointRecord(
        key="k1", build="b1", vm="web", step_index=0, step_name="one",
        chains=(("a.qcow2",),), created=1.0, last_used=1.0, size=1,
    )  # fmt: skip
    assert store.put(record)
    store.touch(record)
    store.hold(Lease("b1", keys={"k1"}))
    with store.locked():
        pass

    def mode(path: Path) -> int:
        return path.stat().st_mode & 0o777

    assert mode(store.root) == 0o711 and mode(store.layers) == 0o711
    assert mode(store.root / "k1") == 0o700 and mode(store.leases) == 0o700
    assert mode(store.root / "k1" / "record.json") == 0o600
    assert mode(store.leases / "b1.json") == 0o600 and mode(store.root / ".lock") == 0o600
