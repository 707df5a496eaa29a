"""Why a build stops. Every message is written for the instructor reading the build page."""

from __future__ import annotations


class BuildError(Exception):
    """The build failed; str(error) is the reason shown to the instructor."""


class BuildCancelled(BuildError):
    """Someone pressed Cancel, or the build's timeout fired."""


class SourceError(BuildError):
    """A source disk, ISO or file could not be fetched or did not match its checksum."""


class StepFailed(BuildError):
    def __init__(
        self, *, vm: str, index: int, name: str, message: str, exit_code: int | None = None
    ) -> None:
        self.vm = vm
        self.index = index
        self.name = name
        self.exit_code = exit_code
        self.detail = message
        super().__init__(f"VM {vm}: step {index + 1} ({name}) failed: {message}")
