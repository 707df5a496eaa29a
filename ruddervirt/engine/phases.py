"""The words the engine reports progress in: a build's phase, a VM's phase, a step's state.

The engine owns them (the Django models build their choices from these), so a typo in a
report is a type error, not a row nobody's page knows how to show. A build's *status* is
not here: it is the portal's, guarded and moved only by builds.transitions; the engine's
BuildPhase is what the portal moves the status along by.
"""

from __future__ import annotations

from enum import StrEnum


class BuildPhase(StrEnum):
    """Where the whole build is (Reporter.build_phase)."""

    NETWORKING = "Networking"
    BUILDING = "Building"
    CAPTURING = "CapturingDisks"


class VMPhase(StrEnum):
    """Where one VM of a build is (Reporter.vm_phase). PENDING and SUCCEEDED are the
    portal's (before the engine starts, after the version exists); the engine reports the
    others."""

    PENDING = "Pending"
    SOURCE_IMPORTING = "SourceImporting"
    BOOTING = "Booting"
    BOOT_COMMAND = "BootCommand"
    WAITING_FOR_SSH = "WaitingForSSH"
    PROVISIONING = "Provisioning"
    SHUTTING_DOWN = "ShuttingDown"
    DISK_CAPTURED = "DiskCaptured"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class StepState(StrEnum):
    """Where one provisioner step is (Reporter.step_started / step_waiting / step_finished)."""

    PENDING = "Pending"
    RUNNING = "Running"
    WAITING_FOR_USER = "WaitingForUser"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    REUSED = "Reused"  # not run: the step cache had its result (Reporter.step_reused)


def choices(enum: type[StrEnum]) -> list[tuple[str, str]]:
    """(value, label) pairs for a model field, labelled as Django's TextChoices would."""
    return [(member.value, member.name.replace("_", " ").title()) for member in enum]
