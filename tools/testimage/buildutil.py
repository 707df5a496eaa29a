"""Helpers shared by the modules of tools/testimage: errors, logging, commands, files."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
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


def command_line(
    description: str, build: Callable[..., Path], argv: list[str] | None = None
) -> int:
    """The scripts' shared command line: build into --out-dir with --kernel, print the path
    of the result; exit status 1 (and the reason on stderr) when the build fails."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out-dir", type=Path, required=True, help="the cache folder")
    parser.add_argument("--kernel", choices=("auto", "generic", "cloud"), default="auto")
    args = parser.parse_args(argv)
    try:
        path = build(args.out_dir, kernel=args.kernel)
    except BuildError as exc:
        log(f"error: {exc}")
        return 1
    print(path)
    return 0
