"""Fixtures for the Debian image tests: the hypervisor tests' real libvirt driver (limited to
this run's name prefix and cleaned up after each test), a folder QEMU can reach, a free
loopback port, and the Debian image itself (built once, or taken from the cache)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.hypervisor.conftest import free_port, hv, qemu_dir, run_prefix
from tools.debianimage.build import build_image

__all__ = ["debian_image", "free_port", "hv", "qemu_dir", "run_prefix"]


@pytest.fixture(scope="session")
def debian_image() -> Path:
    """The cached image of the current recipe (``$RUDDERVIRT_IMAGE_CACHE``), built first when
    missing: that takes minutes and needs root and the Debian archive."""
    started = time.monotonic()
    image = build_image()
    print(f"\nDebian image {image} ready in {time.monotonic() - started:.1f} s")
    return image
