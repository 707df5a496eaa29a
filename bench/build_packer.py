"""Running Packer's QEMU builder on the benchmark recipe, every output line timestamped.

Packer prints its log (PACKER_LOG=1) with one-second timestamps, too coarse for a phase
split, so each line of its stdout and stderr is stamped with ``time.monotonic()`` as it
reaches us. Packer runs in its own session (process group): on Ctrl-C or timeout the
whole group gets SIGINT (Packer then stops QEMU and removes its output), then SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench.build_recipe import VM_NAME, Recipe, packer_template
from bench.build_watch import GuestWatch
from ruddervirt.hypervisor.seed import cloud_config_with_keys, make_nocloud_seed, nocloud_meta_data

PACKER = "packer"
STOP_GRACE_S = 60.0


@dataclass(frozen=True)
class PackerRun:
    start: float
    end: float
    lines: list[tuple[float, str]]  # (arrival time, "out| text" or "err| text")
    returncode: int
    output: Path  # the built disk
    seen: dict[str, float]  # what bench.build_watch saw happen to the VM
    console: str  # the VM's serial console output


class PackerFailed(RuntimeError):
    pass


def _reader(
    stream: IO[bytes], tag: str, sink: list[tuple[float, str]], echo: Callable[[str], None] | None
) -> None:
    for raw in iter(stream.readline, b""):
        text = raw.decode("utf-8", "replace").rstrip("\n")
        sink.append((time.monotonic(), f"{tag}| {text}"))
        if echo is not None:
            echo(f"[packer {tag}] {text}")


def _environment(workdir: Path) -> dict[str, str]:
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    return {
        **os.environ,
        "PACKER_LOG": "1",
        "CHECKPOINT_DISABLE": "1",  # no version check against checkpoint.hashicorp.com
        "PACKER_CACHE_DIR": str(workdir / "cache"),
        "TMPDIR": str(tmp),  # its inline scripts and plugin sockets stay in our folder
    }


def stop_group(proc: subprocess.Popen) -> None:
    """SIGINT to Packer's process group, SIGKILL if it has not exited after a grace period."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def run_packer(
    recipe: Recipe,
    workdir: Path,
    *,
    timeout: float,
    echo: Callable[[str], None] | None = None,
    lean: bool = False,
) -> PackerRun:
    """Build the recipe in ``workdir`` (created; must not exist); ``lean``: with the lean
    template (bench.build_recipe.packer_template). Raises PackerFailed."""
    workdir.mkdir(parents=True)
    output = workdir / "out"
    template = workdir / "template.json"
    serial, seed = workdir / "serial.log", workdir / "seed.iso"
    make_nocloud_seed(
        seed,
        user_data=cloud_config_with_keys(None, [recipe.public_key], VM_NAME),
        meta_data=nocloud_meta_data(instance_id=f"packer-{workdir.name}", hostname=VM_NAME),
    )
    template.write_text(packer_template(recipe, output, serial, seed, lean=lean))
    lines: list[tuple[float, str]] = []
    watch = GuestWatch(lambda: [serial] if serial.exists() else [], str(serial).encode())
    watch.start()
    start = time.monotonic()
    proc = subprocess.Popen(
        [PACKER, "build", "-color=false", str(template)],
        cwd=workdir,
        env=_environment(workdir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    readers = [
        threading.Thread(target=_reader, args=(proc.stdout, "out", lines, echo), daemon=True),
        threading.Thread(target=_reader, args=(proc.stderr, "err", lines, echo), daemon=True),
    ]
    for thread in readers:
        thread.start()
    try:
        proc.wait(timeout=timeout)
    except BaseException:  # timeout or Ctrl-C: never leave Packer or its QEMU behind
        stop_group(proc)
        raise
    finally:
        watch.stop()
    end = time.monotonic()
    for thread in readers:
        thread.join(timeout=10)
    lines.sort(key=lambda item: item[0])
    disk = output / f"{VM_NAME}.qcow2"
    if proc.returncode != 0 or not disk.is_file():
        tail = "\n".join(text for _t, text in lines[-25:])
        raise PackerFailed(f"packer exited with {proc.returncode}:\n{tail}")
    return PackerRun(start, end, lines, proc.returncode, disk, watch.seen, watch.text)


def packer_version() -> str:
    if shutil.which(PACKER) is None:
        return "not installed"
    result = subprocess.run(
        [PACKER, "version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "CHECKPOINT_DISABLE": "1"},
    )
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else "unknown"
