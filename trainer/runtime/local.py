"""The local runtime: a whole run on this machine, each stage a subprocess running the stage command.

It writes spec.json to the run's store, then starts `python -m atoll.trainer <stage> …`
exactly as pods do (the contract of atoll.stages: the same jobs, order, command, done rule
and exit codes), experts and router in parallel up to the cores available, follows them
through their current heartbeats, stops everything cleanly on Ctrl-C or on the first
failure, and resumes by re-running. It never imports torch and never touches stage outputs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from atoll import layout
from atoll.api import DDMRunManifest, SpecError, load_spec_json
from atoll.api.load import dump_spec_json
from atoll.errors import AtollError
from atoll.log import get_logger
from atoll.progress import StageProgress
from atoll.stages import ExitCode, StageJob, current_progress, dependencies, is_done, run_jobs, stage_command
from atoll.store import NotFoundError, Store, StoreError, open_store
from atoll.store.fencing import read_claim
from atoll.trainer.heartbeat import read_progress
from atoll.trainer.interrupts import sigterm_raises
from atoll.trainer.runtime.board import Board

log = get_logger(__name__)

POLL_SECONDS = 0.5
TERMINATE_GRACE_SECONDS = 10.0


class StageFailedError(AtollError):
    """A stage exited non-zero; the run stopped. Carries the stage's own last error line."""

    def __init__(self, job: StageJob, reason: str, log_path: Path, code: int = ExitCode.FAILED) -> None:
        self.job = job
        self.reason = reason
        self.log_path = log_path
        self.code = code
        """The stage's exit status (ExitCode.BAD_INPUT: the spec or data must change first)."""
        super().__init__(f"{job.label} failed: {reason}\n  log: {log_path}")


class RunLockedError(AtollError):
    """Another local runtime is already running this run."""


@dataclass(frozen=True, kw_only=True)
class LocalOptions:
    """How `atoll run FILE --local` runs a manifest."""

    workdir: Path = Path(".atoll")
    """Logs (and, by default, the store) live here."""
    store: str | None = None
    """Store root overriding spec.storage.uri; the run writes under <store>/<run name>."""
    jobs: int | None = None
    """Most stage subprocesses at once; the usable CPU cores when None."""
    python: str = sys.executable
    """Interpreter that runs the stage command."""


@dataclass
class RunResult:
    """Where a finished run's outputs are and how long each stage took."""

    name: str
    store: Store
    logs: Path
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each stage run here, by job label."""
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU seconds (user + system, its own children included) of each stage run here, by job label."""
    skipped: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0


@dataclass
class _Running:
    job: StageJob
    process: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int
    started: float
    handle: IO[bytes]


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def store_root(manifest: DDMRunManifest, options: LocalOptions) -> str:
    """--store, else spec.storage.uri, else <workdir>/runs."""
    if options.store:
        return options.store
    if manifest.spec.storage.uri:
        return manifest.spec.storage.uri
    return str((options.workdir / "runs").absolute())


class LocalRuntime:
    """Runs one manifest's stages as local subprocesses."""

    def __init__(self, manifest: DDMRunManifest, options: LocalOptions, board: Board) -> None:
        self.manifest = manifest
        self.spec = manifest.spec
        self.name = manifest.metadata.name
        self.options = options
        self.board = board
        self.store = open_store(store_root(manifest, options)).child(self.name)
        self.logs = (options.workdir / "logs" / self.name).absolute()
        self.cores = usable_cores()
        self.slots = max(1, options.jobs or self.cores)

    @property
    def spec_uri(self) -> str:
        return self.store.uri_of(layout.SPEC)

    def run(self) -> RunResult:
        """Run (or resume) every stage; raises StageFailedError on the first failure."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with self._lock(), sigterm_raises(KeyboardInterrupt):
            self._write_spec()
            return self._schedule()

    # -- setup ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        path = self.logs / ".lock"
        with path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLockedError(
                    f"run {self.name} is already running on this machine (lock {path}); wait for it or stop it"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write_spec(self) -> None:
        """Write spec.json, or check that the stored one is this spec (resume)."""
        text = dump_spec_json(self.spec)
        try:
            stored = self.store.get_bytes(layout.SPEC)
        except NotFoundError:
            self.store.put_bytes(layout.SPEC, text.encode())
            return
        try:
            previous = load_spec_json(stored, source=self.spec_uri)
        except SpecError:
            previous = None
        if previous == self.spec:
            return
        changed = _changed_paths(json.loads(stored) if previous is not None else {}, json.loads(text), "spec")
        raise AtollError(
            f"{self.store.uri} already holds run {self.name} with a different spec"
            f" (changed: {', '.join(changed[:8]) or 'unreadable spec.json'}); rename metadata.name,"
            f" or delete {self.store.uri} to start over"
        )

    # -- scheduling ----------------------------------------------------------------------

    def _schedule(self) -> RunResult:
        clusters = self.spec.partition.clusters
        pending = run_jobs(clusters)
        training = sum(1 for job in pending if job.trains)
        finished: set[StageJob] = set()
        running: dict[StageJob, _Running] = {}
        result = RunResult(name=self.name, store=self.store, logs=self.logs)
        start = time.monotonic()
        self.board.begin(pending)
        try:
            while pending or running:
                for job, item in list(running.items()):
                    before = _children_cpu_seconds()
                    code = item.process.poll()
                    if code is None:
                        continue
                    # poll() reaped this one stage and nothing else: the children's CPU time
                    # grew by exactly its own (and that of the processes it waited for).
                    result.cpu_seconds[job.label] = _children_cpu_seconds() - before
                    del running[job]
                    item.handle.close()
                    if code != 0:
                        self.board.failed(job)
                        raise StageFailedError(job, self._failure_reason(item, code), item.log_path, code)
                    finished.add(job)
                    result.seconds[job.label] = time.monotonic() - item.started
                    self.board.finished(
                        job, result.seconds[job.label], skipped=False, cpu_seconds=result.cpu_seconds[job.label]
                    )
                for job in list(pending):
                    if len(running) >= self.slots:
                        break
                    if not all(dep in finished for dep in dependencies(job, clusters)):
                        continue
                    pending.remove(job)
                    if self.already_done(job):
                        finished.add(job)
                        result.skipped.append(job.label)
                        self.board.finished(job, 0.0, skipped=True)
                        continue
                    threads = self._threads_for(job, training)
                    running[job] = self._start(job, threads)
                    self.board.started(job, running[job].log_path, threads)
                for job in running:
                    self.board.update(job, self.current_heartbeat(job))
                self.board.refresh()
                if running:
                    time.sleep(POLL_SECONDS)
        finally:
            if running:
                self._stop_all(list(running.values()))
            self.board.end()
        result.wall_seconds = time.monotonic() - start
        return result

    def already_done(self, job: StageJob) -> bool:
        """A stage whose done marker exists needs no subprocess again (the stage would return at once)."""
        return is_done(self.store, job)

    def current_heartbeat(self, job: StageJob) -> StageProgress | None:
        """The stage's heartbeat, unless a newer attempt than the one that wrote it claimed the stage."""
        try:
            claimed = read_claim(self.store, job.prefix).attempt
        except StoreError:
            return None
        return current_progress(read_progress(self.store, job.stage, job.expert), claimed)

    def _threads_for(self, job: StageJob, training_jobs: int) -> int:
        """torch threads per subprocess: the cores shared by the trainers that run side by side."""
        if not job.trains:
            return self.cores
        return max(1, self.cores // max(1, min(self.slots, training_jobs)))

    def _start(self, job: StageJob, threads: int) -> _Running:
        argv = stage_command(job, self.spec_uri, self.store.uri, python=self.options.python)
        log_path = self.logs / f"{job.slug}.log"
        handle = log_path.open("ab")
        offset = handle.tell()
        handle.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        handle.flush()
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "ATOLL_TORCH_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
            # Idle OpenMP threads sleep instead of spinning: with the cores shared (by the
            # other stages, or other users) spinning made a 2-thread stage 5-12× slower here.
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        }
        log.debug("starting stage", job=job.label, argv=argv, threads=threads)
        # Own session: Ctrl-C reaches only the runtime, which then stops every stage itself.
        process = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        return _Running(job, process, log_path, offset, time.monotonic(), handle)

    def _failure_reason(self, item: _Running, code: int) -> str:
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if name == "SIGKILL" else ""
            return f"killed by {name}{hint}"
        if code == ExitCode.FENCED:
            return "fenced: a newer attempt of this stage exists (is another runtime running this run?)"
        progress = self.current_heartbeat(item.job)
        last = _last_line(item.log_path, item.log_offset).removeprefix("error: ")
        if last:
            return last
        if progress is not None and progress.error:
            return progress.error
        return f"exited with status {code}"

    def _stop_all(self, items: list[_Running]) -> None:
        """SIGTERM every stage's process group (training stages finish their checkpoint upload),
        then SIGKILL what is left after a grace period, or at once on a second Ctrl-C."""
        for item in items:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(item.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        try:
            for item in items:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    item.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for item in items:
                if item.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(item.process.pid, signal.SIGKILL)
                    item.process.wait()
                item.handle.close()


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of every child process reaped so far (and of what they reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _last_line(path: Path, offset: int) -> str:
    """The last non-empty line this invocation wrote to its log (the stage's error line)."""
    with path.open("rb") as handle:
        handle.seek(max(offset, path.stat().st_size - 8192))
        lines = [line.strip() for line in handle.read().decode(errors="replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith("==== ")]
    return lines[-1] if lines else ""


def _changed_paths(old: Any, new: Any, path: str) -> list[str]:
    """Dotted paths where two JSON documents differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        changed: list[str] = []
        for key in sorted(set(old) | set(new)):
            changed += _changed_paths(old.get(key), new.get(key), f"{path}.{key}")
        return changed
    return [] if old == new else [path]
