"""Provisioner steps: each type with its block and that block's rules."""

from __future__ import annotations

import re

from ruddervirt.manifest import paths
from ruddervirt.manifest.checks.base import Raw, Reporter, entries, mapping, string, vms
from ruddervirt.manifest.checks.vm import duration

# Step type -> (its block key, whether the block is required).
BLOCKS: dict[str, tuple[str, bool]] = {
    "shell": ("shell", True),
    "file": ("file", True),
    "reboot": ("reboot", False),
    "windows-update": ("windowsUpdate", False),
    "handbuild": ("handbuild", True),
}
_ALL_BLOCKS = {block for block, _ in BLOCKS.values()}
_COMMAND_TEMPLATE = re.compile(r"\{\{\s*\.Command\s*\}\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WINDOWS_ABSOLUTE = re.compile(r"[A-Za-z]:[\\/]")


def check_steps(report: Reporter, data: Raw) -> None:
    for vm_path, vm in vms(data):
        shell = string(mapping(vm.get("communicator")).get("shell")) or "bash"
        for path, step in entries(f"{vm_path}.provisioners", vm.get("provisioners")):
            _check_step(report, path, step, shell)


def _check_step(report: Reporter, path: str, step: Raw, shell: str) -> None:
    seconds = duration(report, f"{path}.stepTimeout", step.get("stepTimeout"))
    if seconds == 0:
        report.error(f"{path}.stepTimeout", "expected a step timeout longer than 0 (e.g. 10m)")
    kind = string(step.get("type"))
    if kind not in BLOCKS:
        return  # missing or unknown: reported by the schema
    block, required = BLOCKS[kind]
    for other in sorted(_ALL_BLOCKS - {block}):
        if other in step:
            report.error(
                f"{path}.{other}",
                f"a {kind!r} step takes a `{block}` block, not `{other}`",
                at_key=True,
            )
    if required and block not in step:
        report.error(f"{path}.{block}", f"a {kind!r} step needs a `{block}` block")
    body = mapping(step.get(block))
    if kind == "shell":
        _check_shell(report, f"{path}.shell", body)
    elif kind == "file":
        _check_file(report, f"{path}.file", body, shell)
    elif kind == "handbuild":
        _check_handbuild(report, path, body)
    elif kind == "windows-update":
        # The manifest format has it; this engine cannot honour it yet, so say so rather
        # than accept a build that would fail at that step.
        report.error(
            f"{path}.type",
            "RudderVirt's libvirt engine cannot run 'windows-update' steps yet; install "
            "updates from a `shell` step with `communicator.shell: powershell` instead",
        )


def _check_shell(report: Reporter, path: str, shell: Raw) -> None:
    has_inline, has_script = "inline" in shell, "scriptFrom" in shell
    if has_inline == has_script:
        which = "both" if has_inline else "neither"
        report.error(
            path, f"a shell step needs exactly one of `inline` or `scriptFrom`, got {which}"
        )
    command = string(shell.get("executeCommand"))
    if command is not None and not _COMMAND_TEMPLATE.search(command):
        report.error(
            f"{path}.executeCommand",
            "expected `{{ .Command }}` in executeCommand (it is replaced by the uploaded "
            "script's path), e.g. sudo sh -c '{{ .Command }}'",
        )
    env = shell.get("env")
    if isinstance(env, dict):
        for name in env:
            if not _ENV_NAME.fullmatch(name):
                report.error(
                    paths.child(f"{path}.env", name),
                    f"environment variable name {name!r} is not a valid shell identifier "
                    "(letters, digits and '_', not starting with a digit)",
                    at_key=True,
                )


def _check_file(report: Reporter, path: str, file: Raw, shell: str) -> None:
    destination = string(file.get("destination"))
    if destination is None:
        return
    if shell == "powershell":
        if not _WINDOWS_ABSOLUTE.match(destination):
            report.error(
                f"{path}.destination",
                "expected an absolute Windows path like C:\\Windows\\Temp\\setup.ps1, "
                f"got {destination!r}",
            )
    elif not destination.startswith("/"):
        report.error(
            f"{path}.destination", f"expected an absolute path like /tmp/motd, got {destination!r}"
        )


def _check_handbuild(report: Reporter, path: str, handbuild: Raw) -> None:
    instructions = handbuild.get("instructions")
    if isinstance(instructions, str) and not instructions.strip():
        report.error(
            f"{path}.handbuild.instructions",
            "expected instructions: list every click and value the person has to enter",
        )
    report.warning(
        f"{path}.type",
        "handbuild is a last resort: the build is no longer fully scripted and waits for a "
        "person to press Continue",
    )
