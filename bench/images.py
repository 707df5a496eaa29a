"""The benchmarks' two test images, built and cached on first use."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("tiny", "debian")


def image_path(name: str) -> Path:
    """The image of that name: the tiny test image (tools/testimage, under var/cache) or the
    Debian 12 test image (tools/debianimage, under the image cache of the storage root)."""
    if name == "debian":
        from tools.debianimage.build import build_image as build_debian

        return build_debian()
    if name == "tiny":
        from tools.testimage.build import build_image

        return build_image(ROOT / "var" / "cache" / "testimage")
    raise ValueError(f"no test image {name!r} (one of {', '.join(IMAGES)})")
