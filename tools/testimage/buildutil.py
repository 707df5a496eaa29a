"""Helpers shared by the modules of tools/testimage: errors, logging, commands, files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class BuildError(RuntimeError):
    """The image could not be built; the message says which step failed and why."""


def log(message: str) -> None:
    print(f"testimage: {message}", file=sys.stderr, flush=True)


def run(args: list[str], *, timeout: float = 60, env: dict[str, str] | None = None) -> str:
    """Run a command (never through a shell) and return its stdout; BuildError on failure.
    `env` replaces the environment when given."""
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, check=True, env=env
        )
    except subprocess.CalledProcessError as exc:
        raise BuildError(
            f"{' '.join(args)} failed ({exc.returncode}): {exc.stderr.strip()}"
        ) from exc
    except (subprocess.TimeoutExpired, OSError) as exc:
        raise BuildError(f"{' '.join(args)}: {exc}") from exc
    return done.stdout


def write_file(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
