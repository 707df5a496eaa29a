"""The external programs RudderVirt may run, declared once in ``scripts/packages.txt``.

That file maps every program to the Debian package it comes from; ``scripts/setup.sh``
installs exactly its packages. This module reads it, and lets the tests hold the code to it:
with ``RUDDERVIRT_CHECK_PROGRAMS=1`` in the environment (the test suite sets it, so its child
processes inherit it), :func:`ruddervirt.proc.run` refuses a program that is not declared,
and :func:`install_audit_hook` does the same for every process the interpreter starts
(``subprocess``, ``os.exec*``, ``os.posix_spawn``), whoever starts it.

Django-free and cheap: the list is parsed once, on first use.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"
PACKAGES_FILE = SCRIPTS_DIR / "packages.txt"
CHECK_ENV = "RUDDERVIRT_CHECK_PROGRAMS"
VENV = "@venv"
OPTIONAL = "optional:"
# `ip netns exec NS PROGRAM ...` runs PROGRAM: it must be declared too.
NETNS_EXEC = ("netns", "exec")


class UndeclaredProgram(RuntimeError):
    """Code ran a program that scripts/packages.txt does not declare (raised in tests only).

    Not an ExternalCommandError on purpose: callers that tolerate a failing command must not
    swallow this one."""

    def __init__(self, program: str, argv: Sequence[str]) -> None:
        super().__init__(
            f"{program} is not declared in scripts/packages.txt (argv: {list(argv)[:6]}): "
            "add it with the Debian package it comes from, so setup installs it"
        )
        self.program = program


@dataclass(frozen=True)
class Package:
    """One line of scripts/packages.txt."""

    names: tuple[str, ...]  # the package, then its alternatives ("npm|nodejs")
    programs: tuple[str, ...]
    optional: bool = False

    @property
    def venv(self) -> bool:
        return self.names == (VENV,)


def parse(text: str) -> list[Package]:
    """The packages of a packages.txt text (comments and blank lines skipped)."""
    found = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        name, optional = words[0], words[0].startswith(OPTIONAL)
        names = tuple(name.removeprefix(OPTIONAL).split("|"))
        programs = tuple(p for p in words[1:] if p != "-")
        found.append(Package(names, programs, optional))
    return found


@functools.cache
def packages() -> tuple[Package, ...]:
    return tuple(parse(PACKAGES_FILE.read_text()))


@functools.cache
def declared() -> dict[str, Package]:
    """Every declared program, by name."""
    return {program: pkg for pkg in packages() for program in pkg.programs}


def _venv_program(path: str) -> bool:
    """A program of this interpreter's virtualenv (``sys.executable``, ``.venv/bin/*``)."""
    if os.sep not in path:
        return False
    folder = Path(os.path.abspath(path)).parent
    return folder == Path(os.path.abspath(sys.executable)).parent or folder == Path(
        sys.prefix, "bin"
    )


def _own_script(path: str) -> bool:
    """One of RudderVirt's own scripts (``scripts/redis.sh``): its programs are declared."""
    return os.sep in path and Path(os.path.abspath(path)).parent == SCRIPTS_DIR


_allowed: set[str] = set()


@contextmanager
def allow_undeclared(*names: str) -> Iterator[None]:
    """Let these program names pass while the block runs (a test that runs a program which
    does not exist, on purpose)."""
    _allowed.update(names)
    try:
        yield
    finally:
        _allowed.difference_update(names)


def undeclared(argv: Sequence[str]) -> str | None:
    """The first program ``argv`` runs that is not declared (None when all are)."""
    if not argv:
        return None
    head = os.fspath(argv[0])
    name = os.path.basename(head)
    if not (name in declared() or name in _allowed or _venv_program(head) or _own_script(head)):
        return name
    words = [os.fspath(a) for a in argv]
    if name == "ip" and tuple(words[1:3]) == NETNS_EXEC and len(words) > 4:
        return undeclared(words[4:])
    return None


def check(argv: Sequence[str]) -> None:
    """Raise :class:`UndeclaredProgram` when the check is on and ``argv`` is undeclared."""
    if os.environ.get(CHECK_ENV) != "1":
        return
    program = undeclared(argv)
    if program is not None:
        raise UndeclaredProgram(program, argv)


def _argv_of(event: str, args: tuple) -> Sequence[str] | None:
    if event == "subprocess.Popen":
        executable, argv = args[0], args[1]
        if isinstance(argv, (str, bytes, os.PathLike)):
            argv = [argv]
        argv = [os.fsdecode(a) for a in argv]
        return [os.fsdecode(executable), *argv[1:]] if executable else argv
    if event in {"os.exec", "os.posix_spawn"}:
        return [os.fsdecode(args[0]), *(os.fsdecode(a) for a in list(args[1])[1:])]
    return None


def _audit(event: str, args: tuple) -> None:
    if event in {"subprocess.Popen", "os.exec", "os.posix_spawn"}:
        argv = _argv_of(event, args)
        if argv:
            check(argv)


_installed = False


def install_audit_hook() -> None:
    """Check every process this interpreter starts from now on (audit hooks stay for the
    interpreter's life; the check itself follows ``RUDDERVIRT_CHECK_PROGRAMS``)."""
    global _installed
    if not _installed:
        sys.addaudithook(_audit)
        _installed = True
