"""A real `python -m atoll.trainer expert` given SIGTERM commits a checkpoint at its next step
boundary and exits 6 (stopped, not failed); run again, it resumes from that checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from atoll import layout
from atoll.stages import ExitCode
from atoll.store import LocalStore
from atoll.store.checkpoint import CheckpointStore
from atoll.trainer.heartbeat import read_progress
from tests.trainer.training.synthetic import synthetic_spec, write_synthetic_run

STEPS, EVERY = 5000, 2500


def _stop_once(argv: list[str], env: dict[str, str], log_path: Path, ready: str | None, store: LocalStore) -> int:
    """Start the stage, SIGTERM it once it trains (and, with `ready`, once its log says so); its exit status."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while True:
            progress = read_progress(store, "expert", 0)
            training = progress is not None and progress.state == "running" and progress.step >= 1
            if training and (ready is None or ready in log_path.read_text()):
                break
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no training step within 300 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=120)


def test_sigterm_commits_a_checkpoint_at_the_next_step_and_exits_stopped(tmp_path: Path) -> None:
    root = tmp_path / "run"
    store = LocalStore(root)
    write_synthetic_run(store, spec=synthetic_spec(steps=STEPS, checkpoint_every=EVERY, global_batch=8))
    argv = [sys.executable, "-m", "atoll.trainer", "expert", "--run", str(root / "spec.json")]
    argv += ["--store", str(root), "--expert", "0"]
    env = {**os.environ, "ATOLL_TORCH_THREADS": "1"}
    checkpoints = CheckpointStore(store, layout.expert(0), read_only=True)

    code = _stop_once(argv, env, tmp_path / "first.log", None, store)
    output = (tmp_path / "first.log").read_text()
    assert code == ExitCode.STOPPED, output[-3000:]
    newest = checkpoints.latest()
    assert newest is not None, "SIGTERM committed a checkpoint"
    assert 1 <= newest.step < EVERY, "at the next step boundary, not at the next checkpoint interval"
    assert not newest.metadata["final"]
    assert "stopped by SIGTERM" in output

    # Run again: it resumes from that checkpoint (and a second SIGTERM stops it the same way).
    second = _stop_once(argv, env, tmp_path / "second.log", f"step={newest.step}", store)
    resumed = next(line for line in (tmp_path / "second.log").read_text().splitlines() if "resumed" in line)
    assert f"step={newest.step}" in resumed
    assert second == ExitCode.STOPPED
    latest = checkpoints.latest()
    assert latest is not None
    assert latest.step > newest.step
    assert latest.attempt == 2
