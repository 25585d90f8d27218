"""A real `python -m atoll.trainer expert` killed with SIGKILL resumes from its last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from atoll import layout
from atoll.store import LocalStore
from atoll.store.checkpoint import CheckpointStore
from atoll.trainer.heartbeat import read_progress
from tests.trainer.training.synthetic import synthetic_spec, write_synthetic_run

STEPS, EVERY = 40, 4


def test_sigkill_loses_at_most_one_checkpoint_interval(tmp_path: Path) -> None:
    root = tmp_path / "run"
    store = LocalStore(root)
    write_synthetic_run(store, spec=synthetic_spec(steps=STEPS, checkpoint_every=EVERY, global_batch=8))
    argv = [sys.executable, "-m", "atoll.trainer", "expert", "--run", str(root / "spec.json")]
    argv += ["--store", str(root), "--expert", "0"]
    env = {**os.environ, "ATOLL_TORCH_THREADS": "1"}
    checkpoints = CheckpointStore(store, layout.expert(0), read_only=True)

    with (tmp_path / "first.log").open("wb") as log:
        first = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while not any(c.step >= 2 * EVERY for c in checkpoints.list()):
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait()
    newest = checkpoints.latest()
    assert newest is not None
    assert 2 * EVERY <= newest.step < STEPS, "killed too late to test a resume"

    second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert second.returncode == 0, second.stderr
    # Resumed from the newest valid checkpoint: only steps after it are trained again.
    assert f"step={newest.step}" in next(line for line in second.stderr.splitlines() if "resumed" in line)
    final = checkpoints.latest()
    assert final is not None
    assert final.step == STEPS
    assert final.metadata["final"]
    assert final.attempt == 2
    progress = read_progress(store, "expert", 0)
    assert progress is not None
    assert (progress.state, progress.step, progress.attempt) == ("done", STEPS, 2)
