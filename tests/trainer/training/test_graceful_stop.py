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

STEPS, EVERY = 60, 50


def test_sigterm_commits_a_checkpoint_at_the_next_step_and_exits_stopped(tmp_path: Path) -> None:
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
        while True:
            progress = read_progress(store, "expert", 0)
            if progress is not None and progress.step >= 3:
                break
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no training step within 300 s"
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)
        code = first.wait(timeout=120)
    output = (tmp_path / "first.log").read_text()
    assert code == ExitCode.STOPPED, output[-3000:]
    newest = checkpoints.latest()
    assert newest is not None, "SIGTERM committed a checkpoint"
    assert 3 <= newest.step < EVERY, "at the next step boundary, not at the next checkpoint interval"
    assert not newest.metadata["final"]
    assert "stopped by SIGTERM" in output

    second = subprocess.run(
        [*argv[:-2], "--expert", "0"], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"step={newest.step}" in next(line for line in second.stderr.splitlines() if "resumed" in line)
