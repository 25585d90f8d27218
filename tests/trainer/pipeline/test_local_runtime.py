"""`atoll run FILE --local`: bad manifests, failing stages, and a whole run interrupted and resumed.

The runtime starts every stage as a real `python -m atoll.trainer` subprocess, as pods do.
The end-to-end test interrupts a tiny K=2 run with SIGINT while the experts train, checks
that no stage process survives, and re-runs the same command to completion.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from atoll.cli import main as atoll_main
from atoll.stages import StageJob, dependencies, run_jobs, stage_command

from .conftest import TINY_RUN


def _manifest(path: Path, name: str, **overrides: object) -> Path:
    spec = {**json.loads(json.dumps(TINY_RUN)), **overrides}
    document = {"apiVersion": "atoll.dev/v1alpha1", "kind": "DDMRun", "metadata": {"name": name}, "spec": spec}
    path.write_text(yaml.safe_dump(document))
    return path


def _stage_processes(marker: str) -> list[int]:
    """PIDs of live processes whose command line mentions `marker` (the run's store path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(
                (line for line in (entry / "status").read_text().splitlines() if line.startswith("State:")), ""
            )
        except OSError:
            continue
        if marker in cmdline and "atoll.trainer" in cmdline and "zombie" not in state:
            found.append(int(entry.name))
    return found


def test_job_graph() -> None:
    jobs = run_jobs(3)
    assert [job.label for job in jobs] == [
        "partition",
        "router",
        "expert 0",
        "expert 1",
        "expert 2",
        "assemble",
        "evaluate",
    ]
    assert dependencies(StageJob("router"), 3) == [StageJob("partition")]
    assert StageJob("router") in dependencies(StageJob("assemble"), 3)
    assert [job.label for job in run_jobs(1)] == ["partition", "expert 0", "assemble", "evaluate"]
    command = stage_command(StageJob("expert", 2), "s/spec.json", "s", python="py")
    assert command == ["py", "-m", "atoll.trainer", "expert", "--run", "s/spec.json", "--store", "s", "--expert", "2"]


def test_done_markers_are_what_the_stages_write_last() -> None:
    from atoll import layout
    from atoll.store import join_key
    from atoll.trainer import pipeline
    from atoll.trainer.stages import assemble, evaluate, router

    assert StageJob("partition").done_marker == layout.PARTITION_DONE
    assert StageJob("expert", 3).done_marker == "experts/3/done.json"
    assert StageJob("assemble").done_marker == assemble.MARKER_KEY == join_key(layout.MODEL, pipeline.MARKER)
    assert StageJob("evaluate").done_marker == evaluate.METRICS
    assert StageJob("router").done_marker == router.METRICS


def test_the_runtime_follows_the_contracts_done_rule_and_fenced_heartbeats(tmp_path: Path) -> None:
    """Done is the done marker (a `done` heartbeat alone is not), and a heartbeat counts only
    while its attempt holds the stage's claim — the same rules as the operator's."""
    from rich.console import Console

    from atoll.api import load_manifest
    from atoll.progress import StageProgress
    from atoll.store.fencing import claim
    from atoll.trainer.runtime.board import make_board
    from atoll.trainer.runtime.local import LocalOptions, LocalRuntime

    manifest = load_manifest(_manifest(tmp_path / "run.yaml", "rules"))
    runtime = LocalRuntime(manifest, LocalOptions(workdir=tmp_path / "work"), make_board(Console(quiet=True)))
    job = StageJob("expert", 0)
    beat = StageProgress(stage="expert", expert=0, attempt=1, state="done", step=50, total_steps=50)
    runtime.store.put_bytes(f"{job.prefix}/progress.json", beat.to_json())
    claim(runtime.store, job.prefix, 1, ())
    assert runtime.current_heartbeat(job) == beat
    assert not runtime.already_done(job), "a done heartbeat without the done marker is not done"
    runtime.store.put_json(job.done_marker, {"attempt": 1})
    assert runtime.already_done(job)
    claim(runtime.store, job.prefix, 2, ())
    assert runtime.current_heartbeat(job) is None, "attempt 1's heartbeat says nothing once attempt 2 claimed"


def test_bad_manifest_lists_every_field_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _manifest(
        tmp_path / "bad.yaml",
        "bad",
        expert={"preset": "tiny", "steps": -1, "learningRate": 0},
        partition={"clusters": 0, "features": "pixels"},
    )
    assert atoll_main(["run", str(bad), "--local", "--workdir", str(tmp_path / "work")]) == 1
    err = capsys.readouterr().err
    for field in ("spec.expert.steps", "spec.expert.learningRate", "spec.partition.clusters"):
        assert field in err
    assert not (tmp_path / "work").exists()


@pytest.mark.e2e
def test_failed_stage_stops_the_run_with_its_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-images"
    manifest = _manifest(tmp_path / "run.yaml", "broken", dataset={"uri": str(missing), "resolution": 8})
    code = atoll_main(["run", str(manifest), "--local", "--workdir", str(tmp_path / "work")])
    out = capsys.readouterr().out
    assert code == 1
    assert f"partition failed: dataset.uri '{missing}' does not exist" in out
    assert "Traceback" not in out
    log = tmp_path / "work" / "logs" / "broken" / "partition.log"
    assert f"log: {log}" in out
    assert "does not exist" in log.read_text()
    # nothing after the partition was started
    assert sorted(p.name for p in log.parent.glob("*.log")) == ["partition.log"]


RESTORE_SIGINT_AND_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


@pytest.mark.e2e
def test_interrupted_run_resumes_to_the_end(tmp_path: Path) -> None:
    manifest = _manifest(
        tmp_path / "run.yaml",
        "e2e",
        expert={"preset": "tiny", "steps": 200, "globalBatchSize": 16, "checkpointEvery": 20},
        router={"preset": "tiny", "steps": 40, "globalBatchSize": 16, "checkpointEvery": 20},
        evaluation={"samples": 16, "strategies": ["top-1", "full"]},
    )
    work = tmp_path / "work"
    store = work / "runs" / "e2e"
    command = [sys.executable, "-m", "atoll", "run", str(manifest), "--local", "--workdir", str(work)]
    # Ctrl-C as from a terminal: a shell that starts `make test` in the background hands its
    # children SIGINT ignored, and Python then installs no KeyboardInterrupt handler; so the
    # run starts behind an exec that restores the default first.
    interruptible = [sys.executable, "-c", RESTORE_SIGINT_AND_EXEC, *command]
    first = subprocess.Popen(interruptible, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # interrupt once expert 0 has committed a checkpoint and is still training
        deadline = time.monotonic() + 600
        while not list((store / "experts" / "0" / "checkpoints").glob("*/manifest.json")):
            assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
            assert time.monotonic() < deadline, "expert 0 never committed a checkpoint"
            time.sleep(0.5)
        first.send_signal(signal.SIGINT)
        output = first.communicate(timeout=120)[0].decode()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 130, output
    assert "run the same command again to resume" in output
    assert _stage_processes(str(store)) == []
    assert not (store / "model").exists()

    second = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already done: partition" in second.stdout
    expert_log = (work / "logs" / "e2e" / "expert-0.log").read_text()
    assert expert_log.count("==== ") == 2  # two invocations, the second resumed from a checkpoint
    assert "resumed" in expert_log.split("==== ")[-1]
    metrics = json.loads((store / "eval" / "metrics.json").read_text())
    assert set(metrics["strategies"]) == {"top-1", "full"}
    for name in ("grid-top-1.png", "grid-full.png"):
        assert (store / "eval" / name).read_bytes().startswith(b"\x89PNG")
        assert str(store / "eval" / name) in second.stdout
    assert str(store / "model") in second.stdout
    assert "real vs real" in second.stdout
    # every stage it ran reports its CPU time (its own processes only, not the other stages')
    for label in ("expert 0", "assemble", "evaluate"):
        assert re.search(rf"{label} done in \d+s, [1-9]\d* CPU s", second.stdout), second.stdout
    assert re.search(r"finished in \d+s, [1-9]\d* CPU s in stages", second.stdout), second.stdout

    # a finished run is not run again
    third = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "already done: partition, router, expert 0, expert 1, assemble, evaluate" in third.stdout
