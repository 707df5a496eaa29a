"""A static scan of the Python sources for the external programs they run.

A *launch* is a call to one of :data:`LAUNCHERS` (``proc.run``, ``subprocess.run``,
``subprocess.Popen``, the test-image's ``run``, ...) whose first argument is an argument list.
The program is that list's first element, resolved through what the source says about it:
a string literal, a module constant (``QEMU_IMG = "qemu-img"``, ``Path("/bin/busybox")``,
``shutil.which("dnsmasq", ...) or "dnsmasq"``), a list constant spread into the list
(``[*VIRSH, *args]``), a local list built earlier in the same function (``args = [...]``), or
a lookup helper called with the name (``_tool("mkfs.fat")``). ``ip netns exec NS PROGRAM`` and
``in_netns(NS, PROGRAM, ...)`` also name PROGRAM.

What cannot be resolved is reported as such: the caller decides (the test keeps an explicit
list of the few launches that take their program from a parameter).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LAUNCHERS = frozenset(
    {"run", "Popen", "check_output", "check_call", "call", "_spawn", "_first_line", "_run"}
)
NETNS_RUNNERS = frozenset({"_in_netns", "in_netns"})  # (netns, program, *args)
LOOKUP_HELPERS = frozenset({"_tool", "which", "str", "Path"})  # f("name") -> name
PYTHON = "<python>"  # sys.executable: the virtualenv's interpreter


@dataclass(frozen=True)
class Launch:
    """One place in the sources that starts a program."""

    path: Path
    line: int
    program: str | None  # None: not resolvable from the source text

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _literal(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


class _Module:
    """Module-level constants of one file and the per-function local lists."""

    def __init__(self, tree: ast.Module) -> None:
        self.constants: dict[str, ast.AST] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name):
                    self.constants[target.id] = node.value
            elif (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.value is not None
            ):
                self.constants[node.target.id] = node.value

    def program(self, node: ast.AST, local: dict[str, ast.AST], depth: int = 0) -> str | None:
        """The program named by ``node`` (an argv[0] expression), or None."""
        if depth > 8:
            return None
        text = _literal(node)
        if text is not None:
            return text
        if isinstance(node, ast.Attribute) and node.attr == "executable":
            return PYTHON
        if isinstance(node, ast.Name):
            value = local.get(node.id, self.constants.get(node.id))
            return self.program(value, local, depth + 1) if value is not None else None
        if isinstance(node, ast.BoolOp):  # shutil.which("x") or "x"
            for value in node.values:
                found = self.program(value, local, depth + 1)
                if found is not None:
                    return found
            return None
        if isinstance(node, ast.Call) and node.args:
            name = node.func.attr if isinstance(node.func, ast.Attribute) else None
            name = node.func.id if isinstance(node.func, ast.Name) else name
            if name in LOOKUP_HELPERS:
                return self.program(node.args[0], local, depth + 1)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # parent / "tool"
            return self.program(node.right, local, depth + 1)
        if isinstance(node, ast.Starred):
            return self.first_of(node.value, local, depth + 1)
        return None

    def first_of(self, node: ast.AST, local: dict[str, ast.AST], depth: int = 0) -> str | None:
        """The program of an argument-list expression (its first element)."""
        if depth > 8:
            return None
        if isinstance(node, ast.Name):
            value = local.get(node.id, self.constants.get(node.id))
            return self.first_of(value, local, depth + 1) if value is not None else None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # [a] + rest
            return self.first_of(node.left, local, depth + 1)
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            elements = node.elts
            head = self.program(elements[0], local, depth + 1)
            words = [_literal(e) for e in elements[:5]]
            if head == "ip" and words[1:3] == ["netns", "exec"] and len(elements) > 4:
                return self.program(elements[4], local, depth + 1) or head
            return head
        return None


def _locals_of(function: ast.AST) -> dict[str, ast.AST]:
    """``name = [...]`` assignments inside one function (the last one wins)."""
    found: dict[str, ast.AST] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and isinstance(value, (ast.List, ast.Tuple)):
            found[target.id] = value
    return found


def _launcher(call: ast.Call, wrappers: dict[str, int | None]) -> str | None:
    """The launcher or wrapper ``call`` calls, if any: ``run(...)``, ``subprocess.run(...)``,
    ``proc.run(...)``, a function or method of this file that wraps one; never another
    method such as ``session.run``."""
    if isinstance(call.func, ast.Name):
        name = call.func.id
        return name if name in LAUNCHERS or name in NETNS_RUNNERS or name in wrappers else None
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in wrappers:
        return func.attr  # a method of this file that wraps a launch (``host.run("ip", ...)``)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        launcher = func.value.id in {"subprocess", "proc"} and func.attr in LAUNCHERS
        return func.attr if launcher else None
    return None


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[list[str], str | None]:
    args = function.args
    return [a.arg for a in (*args.posonlyargs, *args.args)], args.vararg and args.vararg.arg


def _wrapper_kind(
    function: ast.FunctionDef | ast.AsyncFunctionDef, argv: ast.AST
) -> int | bool | None:
    """How ``function`` passes its own parameters on as the launched argv: the index of the
    parameter that is the argv, None when its ``*args`` are (``f("prog", ...)``), False when
    the argv is not built from its parameters."""
    names, vararg = _parameters(function)
    if isinstance(argv, ast.Name) and argv.id == vararg:
        return None
    if isinstance(argv, ast.Name) and argv.id in names:
        return names.index(argv.id)
    if isinstance(argv, (ast.List, ast.Tuple)) and argv.elts:
        head = argv.elts[0]
        if isinstance(head, ast.Starred) and isinstance(head.value, ast.Name):
            if head.value.id == vararg:
                return None
            if head.value.id in names:
                return names.index(head.value.id)
    return False


def launches_in(path: Path) -> Iterator[Launch]:
    """Every launch in one Python file (calls of the file's own wrappers included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _Module(tree)
    functions = [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    wrappers: dict[str, int | None] = {}
    inner: set[int] = set()  # the launch inside a wrapper is not a launch of its own
    for function in functions:
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and node.args and _launcher(node, {}) in LAUNCHERS:
                kind = _wrapper_kind(function, node.args[0])
                if kind is not False:
                    wrappers[function.name] = kind  # type: ignore[assignment]
                    inner.add(id(node))
    seen: set[int] = set(inner)
    scopes = [(f, _locals_of(f)) for f in functions] + [(tree, {})]
    for scope, local in scopes:
        for node in ast.walk(scope):
            if not isinstance(node, ast.Call) or id(node) in seen or not node.args:
                continue
            launch = _launch_of(node, _launcher(node, wrappers), wrappers, module, local)
            if launch is not None:
                seen.add(id(node))
                yield Launch(path, node.lineno, launch[0])


def _launch_of(
    call: ast.Call,
    name: str | None,
    wrappers: dict[str, int | None],
    module: _Module,
    local: dict[str, ast.AST],
) -> tuple[str | None] | None:
    """``(program,)`` when ``call`` launches a program, else None."""
    if name is None:
        return None
    if name in NETNS_RUNNERS:
        return (module.program(call.args[1], local),) if len(call.args) > 1 else None
    if name in wrappers:
        index = wrappers[name]
        if index is None:
            return (module.program(call.args[0], local),)
        if index < len(call.args) and _looks_like_argv(call.args[index], module, local):
            return (module.first_of(call.args[index], local),)
        return None
    if _looks_like_argv(call.args[0], module, local):
        return (module.first_of(call.args[0], local),)
    return None


def _looks_like_argv(node: ast.AST, module: _Module, local: dict[str, ast.AST]) -> bool:
    """A list/tuple literal, a name bound to one, or ``[...] + ...``: an argument vector.
    (Other first arguments of a ``run``, e.g. a command string for SSH, are not launches.)"""
    if isinstance(node, (ast.List, ast.Tuple, ast.BinOp)):
        return True
    if isinstance(node, ast.Name):
        value = local.get(node.id, module.constants.get(node.id))
        return isinstance(value, (ast.List, ast.Tuple))
    return False


def scan(root: Path, folders: tuple[str, ...]) -> list[Launch]:
    """Every launch in the ``.py`` files under ``root/<folder>`` for each folder."""
    found: list[Launch] = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            found.extend(launches_in(path))
    return found
