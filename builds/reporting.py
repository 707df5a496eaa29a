"""DBReporter: the engine's Reporter, written to the database.

Called from several engine threads at once. Log lines are buffered and written in
batches (a chatty `apt-get` must not mean one INSERT per line), at most a fraction of a
second late, so the build page still shows them as they happen.

A build's log keeps at most RUDDERVIRT_BUILD_LOG_MAX_LINES lines (every attempt together)
of at most RUDDERVIRT_BUILD_LOG_MAX_LINE_CHARS characters each: `yes` in a shell step must
not fill the database. Lines past the cap are counted, and the count is the last line of
the attempt. The engine's own phase and error lines are kept past the cap (there are a
few per VM and step, bounded by the manifest), so the log still says how the build ended.
"""

from __future__ import annotations

import threading
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import Max
from django.utils import timezone

from builds.models import (
    Build,
    BuildLogLine,
    BuildStatus,
    BuildStep,
    BuildVM,
    StepStatus,
    VMPhase,
)
from builds.transitions import InvalidTransition, transition
from ruddervirt.engine.errors import BuildCancelled
from ruddervirt.engine.phases import BuildPhase


def append_log(build: Build, text: str, *, vm: str = "") -> None:
    """Append one line to a build's log from outside the worker."""
    with transaction.atomic():
        seq = (BuildLogLine.objects.filter(build=build).aggregate(m=Max("seq"))["m"] or 0) + 1
        BuildLogLine.objects.create(
            build=build, seq=seq, created_at=timezone.now(), vm=vm, stream="info", text=text
        )


# The status a build takes when the engine reports its phase.
STATUS_FOR_PHASE = {
    BuildPhase.NETWORKING: BuildStatus.NETWORKING,
    BuildPhase.BUILDING: BuildStatus.BUILDING,
    BuildPhase.CAPTURING: BuildStatus.CAPTURING,
}

FLUSH_INTERVAL_S = 0.25
ALWAYS_KEPT = frozenset({"phase", "error"})  # streams kept past the line cap


class DBReporter:
    def __init__(self, build: Build, *, echo=None) -> None:
        self.build_id = build.pk
        self.attempt = build.attempt
        self._lock = threading.RLock()
        self._pending: list[BuildLogLine] = []
        lines = BuildLogLine.objects.filter(build_id=build.pk)
        self._seq = lines.aggregate(m=Max("seq"))["m"] or 0
        self._kept = lines.count()  # earlier attempts' lines count against the cap
        self._dropped = 0
        self._max_lines = settings.RUDDERVIRT_BUILD_LOG_MAX_LINES
        self._max_chars = settings.RUDDERVIRT_BUILD_LOG_MAX_LINE_CHARS
        self._vm_ids = dict(BuildVM.objects.filter(build_id=build.pk).values_list("name", "id"))
        self._echo = echo  # optional callable(line) for `build --wait` in-process runs
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="log-flusher", daemon=True)
        self._flusher.start()

    # --- database helpers -------------------------------------------------------------
    def _db(self, fn, *args, **kwargs):
        """Run a small ORM call from any engine thread (each thread has its own connection)."""
        try:
            return fn(*args, **kwargs)
        finally:
            if threading.current_thread() is not threading.main_thread():
                connection.close()

    def _step(self, vm: str, index: int):
        return BuildStep.objects.filter(vm_id=self._vm_ids[vm], index=index)

    # --- Reporter -------------------------------------------------------------------
    def build_phase(self, phase: BuildPhase) -> None:
        """The engine moved on; the build's status follows (through its transition). When
        someone else moved the status first (a cancel, recovery), the build stops: the
        engine gets BuildCancelled, the reason it understands, not an internal error."""
        status = STATUS_FOR_PHASE[phase]

        def move():
            build = Build.objects.get(pk=self.build_id)
            if build.status != status:
                try:
                    transition(build, status)
                except InvalidTransition as exc:
                    raise BuildCancelled(f"the build is {exc.current} now") from None

        self._db(move)
        self.log(f"build phase: {phase}")

    def vm_phase(self, vm: str, phase: VMPhase, message: str = "") -> None:
        fields: dict = {"phase": phase, "message": message}
        now = timezone.now()
        if phase == VMPhase.SOURCE_IMPORTING:
            fields["started_at"] = now
        if phase in (VMPhase.SUCCEEDED, VMPhase.FAILED):
            fields["finished_at"] = now
        self._db(lambda: BuildVM.objects.filter(pk=self._vm_ids[vm]).update(**fields))
        self.log(f"{phase}{': ' + message if message else ''}", vm=vm, stream="phase")

    def vm_domain(self, vm: str, domain_name: str) -> None:
        self._db(
            lambda: BuildVM.objects.filter(pk=self._vm_ids[vm]).update(domain_name=domain_name)
        )

    def step_started(self, vm: str, index: int) -> None:
        self._db(
            lambda: self._step(vm, index).update(
                status=StepStatus.RUNNING, started_at=timezone.now(), message=""
            )
        )

    def step_waiting(self, vm: str, index: int) -> None:
        self._db(lambda: self._step(vm, index).update(status=StepStatus.WAITING_FOR_USER))

    def step_finished(self, vm, index, *, ok, exit_code=None, message="") -> None:
        def finish():
            step = self._step(vm, index).first()
            if step is None:
                return
            duration = None
            if step.started_at:
                duration = round((timezone.now() - step.started_at).total_seconds(), 3)
            self._step(vm, index).update(
                status=StepStatus.SUCCEEDED if ok else StepStatus.FAILED,
                duration_s=duration,
                exit_code=exit_code,
                message=message[:4000],
            )

        self._db(finish)

    def step_reused(
        self, vm: str, index: int, *, key: str, from_build: int | None, saved_s: float
    ) -> None:
        self._db(
            lambda: self._step(vm, index).update(
                status=StepStatus.REUSED,
                cache_key=key,
                reused_from=from_build,
                saved_s=saved_s,
                message=reused_message(from_build, saved_s),
            )
        )

    def log(self, text: str, *, vm: str = "", stream: str = "info") -> None:
        now = timezone.now()
        with self._lock:
            for line in text.splitlines() or [""]:
                if self._kept >= self._max_lines and stream not in ALWAYS_KEPT:
                    self._dropped += 1
                    continue
                self._append(now, vm, stream, self._clipped(line))

    def _append(self, now: datetime, vm: str, stream: str, line: str) -> None:
        """Queue one line for the database (the caller holds the lock)."""
        self._seq += 1
        self._kept += 1
        self._pending.append(
            BuildLogLine(
                build_id=self.build_id,
                seq=self._seq,
                created_at=now,
                vm=vm,
                stream=stream,
                text=line,
            )
        )
        if self._echo:
            self._echo(format_line(now, vm, stream, line))

    def _clipped(self, line: str) -> str:
        extra = len(line) - self._max_chars
        if extra <= 0:
            return line
        return f"{line[: self._max_chars]} ... [{extra} more characters not kept]"

    def _note_dropped(self) -> None:
        """The count of the lines past the cap, as the attempt's last line."""
        with self._lock:
            if not self._dropped:
                return
            self._append(
                timezone.now(),
                "",
                "stderr",
                f"... {self._dropped} more lines not kept (a build log keeps at most "
                f"{self._max_lines} lines: RUDDERVIRT_BUILD_LOG_MAX_LINES)",
            )
            self._dropped = 0

    def poll(self) -> str | None:
        def check():
            return (
                Build.objects.filter(pk=self.build_id).values("cancel_requested", "status").first()
            )

        row = self._db(check)
        if row is None:
            return "the build was deleted"
        if row["cancel_requested"]:
            return "cancelled"
        return None

    def user_decision(self, vm: str, index: int) -> tuple[str, str] | None:
        row = self._db(lambda: self._step(vm, index).values("user_decision", "user_reason").first())
        if row and row["user_decision"]:
            return row["user_decision"], row["user_reason"]
        return None

    # --- flushing ---------------------------------------------------------------------
    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        for attempt in range(3):
            if not batch:
                return
            try:
                self._db(lambda: BuildLogLine.objects.bulk_create(batch, batch_size=500))
                return
            except IntegrityError:
                # A line appended from outside the worker (Continue, Fail, Cancel:
                # runner.append_log) took a seq this reporter had already handed out.
                if attempt == 2:
                    raise
                self._renumber(batch)

    def _renumber(self, batch: list[BuildLogLine]) -> None:
        """Give `batch`, and the lines logged since, seqs after every seq in use."""
        top = self._db(
            lambda: BuildLogLine.objects.filter(build_id=self.build_id).aggregate(m=Max("seq"))["m"]
        )
        with self._lock:
            start = max(top or 0, self._seq) + 1
            lines = [*batch, *self._pending]
            for seq, line in enumerate(lines, start=start):
                line.seq = seq
            self._seq = start + len(lines) - 1

    def _flush_loop(self) -> None:
        close_old_connections()
        while not self._stop.wait(FLUSH_INTERVAL_S):
            try:
                self.flush()
            except Exception:
                import logging

                logging.getLogger(__name__).exception("could not write build log lines")

    def close(self) -> None:
        self._stop.set()
        self._flusher.join(timeout=5)
        self._note_dropped()
        self.flush()


def reused_message(from_build: int | None, saved_s: float) -> str:
    """What a Reused step says on the build page: where from, and the time saved."""
    origin = f"build #{from_build}" if from_build is not None else "the step cache"
    return f"reused from {origin} · saved {saved_s:.1f}s"


def format_line(when: datetime, vm: str, stream: str, text: str) -> str:
    stamp = timezone.localtime(when).strftime("%H:%M:%S")
    who = vm or "build"
    marker = {"stderr": " !", "error": " ✗", "phase": " ▶"}.get(stream, "")
    return f"{stamp} [{who}]{marker} {text}"
