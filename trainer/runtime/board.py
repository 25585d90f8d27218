"""What a person watching `atoll run --local` sees: live bars on a terminal, plain lines otherwise.

Driven only by the local runtime's events and the stages' progress.json; it never decides
anything about the run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from atoll.progress import StageProgress
from atoll.stages import StageJob

PLAIN_STATUS_EVERY_SECONDS = 30.0


class Board(Protocol):
    """Receives the runtime's events."""

    def begin(self, jobs: list[StageJob]) -> None: ...
    def started(self, job: StageJob, log_path: Path, threads: int) -> None: ...
    def update(self, job: StageJob, progress: StageProgress | None) -> None: ...
    def finished(self, job: StageJob, seconds: float, *, skipped: bool, cpu_seconds: float = 0.0) -> None: ...
    def failed(self, job: StageJob) -> None: ...
    def refresh(self) -> None: ...
    def end(self) -> None: ...


def _detail(progress: StageProgress | None) -> str:
    if progress is None:
        return "starting"
    parts = []
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.4f}")
    if progress.samples_per_second:
        parts.append(f"{progress.samples_per_second:.0f} samples/s")
    if progress.message and not parts:
        parts.append(progress.message)
    return " · ".join(parts) or progress.state


class LiveBoard:
    """One rich progress bar per stage invocation, fed from progress.json."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[StageJob, TaskID] = {}

    def begin(self, jobs: list[StageJob]) -> None:
        for job in jobs:
            self.tasks[job] = self.progress.add_task(job.label, total=None, start=False, detail="waiting")
        self.progress.start()

    def started(self, job: StageJob, log_path: Path, threads: int) -> None:
        self.progress.start_task(self.tasks[job])
        self.progress.update(self.tasks[job], detail=f"starting ({threads} threads)")

    def update(self, job: StageJob, progress: StageProgress | None) -> None:
        if progress is None:
            return
        total = progress.total_steps or None
        self.progress.update(self.tasks[job], completed=progress.step, total=total, detail=_detail(progress))

    def finished(self, job: StageJob, seconds: float, *, skipped: bool, cpu_seconds: float = 0.0) -> None:
        task = self.tasks[job]
        total = self.progress.tasks[task].total or 1
        if skipped:
            self.progress.start_task(task)
        detail = "already done" if skipped else f"done in {seconds:.0f}s, {cpu_seconds:.0f} CPU s"
        self.progress.update(task, total=total, completed=total, detail=detail)
        self.progress.stop_task(task)

    def failed(self, job: StageJob) -> None:
        self.progress.update(self.tasks[job], detail="[red]failed[/red]")
        self.progress.stop_task(self.tasks[job])

    def refresh(self) -> None:
        self.progress.refresh()

    def end(self) -> None:
        self.progress.stop()


class PlainBoard:
    """Line-per-event output for logs and pipes (no cursor movement)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.start = time.monotonic()
        self.last_status = self.start
        self.latest: dict[StageJob, StageProgress | None] = {}

    def _say(self, text: str) -> None:
        self.console.print(f"[{time.monotonic() - self.start:5.0f}s] {text}", highlight=False, soft_wrap=True)

    def begin(self, jobs: list[StageJob]) -> None:
        self._say("stages: " + ", ".join(job.label for job in jobs))

    def started(self, job: StageJob, log_path: Path, threads: int) -> None:
        self.latest[job] = None
        self._say(f"{job.label} started ({threads} threads, log {log_path})")

    def update(self, job: StageJob, progress: StageProgress | None) -> None:
        self.latest[job] = progress

    def finished(self, job: StageJob, seconds: float, *, skipped: bool, cpu_seconds: float = 0.0) -> None:
        last = self.latest.pop(job, None)
        if skipped:
            self._say(f"{job.label} already done")
            return
        detail = f" (step {last.step}/{last.total_steps}, {_detail(last)})" if last and last.total_steps else ""
        self._say(f"{job.label} done in {seconds:.0f}s, {cpu_seconds:.0f} CPU s{detail}")

    def failed(self, job: StageJob) -> None:
        self.latest.pop(job, None)
        self._say(f"{job.label} FAILED")

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self.last_status < PLAIN_STATUS_EVERY_SECONDS or not self.latest:
            return
        self.last_status = now
        parts = []
        for job, progress in self.latest.items():
            steps = f"{progress.step}/{progress.total_steps}" if progress and progress.total_steps else "…"
            parts.append(f"{job.label} {steps}")
        self._say(" · ".join(parts))

    def end(self) -> None:
        pass


def make_board(console: Console) -> Board:
    """Live bars on a terminal, plain lines otherwise."""
    return LiveBoard(console) if console.is_terminal else PlainBoard(console)
