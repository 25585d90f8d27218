"""The stage contract (atoll.stages) and its implementation by `python -m atoll.trainer`:
jobs and their order, the command line, one done marker per stage, the fencing rule for
heartbeats, the exit codes — and every stage claims its attempt and writes its marker
only under the claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atoll import layout
from atoll.api import DDMRunSpec
from atoll.api.load import dump_spec_json
from atoll.progress import StageProgress
from atoll.stages import (
    STAGES,
    ExitCode,
    StageJob,
    current_progress,
    dependencies,
    is_done,
    run_jobs,
    stage_args,
)
from atoll.store import LocalStore
from atoll.store.fencing import claim, read_claim


def test_jobs_slugs_and_labels() -> None:
    assert STAGES == ("partition", "expert", "router", "assemble", "evaluate")
    assert [job.slug for job in run_jobs(2)] == ["partition", "router", "expert-0", "expert-1", "assemble", "evaluate"]
    assert [job.label for job in run_jobs(1)] == ["partition", "expert 0", "assemble", "evaluate"]
    for job in run_jobs(3):
        assert StageJob.from_slug(job.slug) == job
    assert dependencies(StageJob("expert", 1), 2) == [StageJob("partition")]
    assert dependencies(StageJob("evaluate"), 2) == [StageJob("assemble")]
    with pytest.raises(ValueError, match="expert index"):
        StageJob("expert")
    with pytest.raises(ValueError, match="expert index"):
        StageJob("router", 1)
    with pytest.raises(ValueError, match="unknown stage"):
        StageJob.from_slug("training")


def test_the_command_line() -> None:
    assert stage_args(StageJob("expert", 2), "s/spec.json", "s", attempt=3, micro_batch=8, grad_accum=2, gpus=2) == [
        "expert", "--run", "s/spec.json", "--store", "s", "--expert", "2", "--attempt", "3",
        "--micro-batch", "8", "--grad-accum", "2", "--gpus", "2",
    ]  # fmt: skip
    assert stage_args(StageJob("assemble"), "a", "b", gpus=0) == ["assemble", "--run", "a", "--store", "b"]


def test_exit_codes() -> None:
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4]
    assert ExitCode.BAD_INPUT.name == "BAD_INPUT"


def test_a_heartbeat_counts_only_while_its_attempt_holds_the_claim() -> None:
    beat = StageProgress(stage="expert", expert=0, attempt=2, state="done")
    assert current_progress(beat, 0) is beat
    assert current_progress(beat, 2) is beat
    assert current_progress(beat, 3) is None
    assert current_progress(None, 0) is None


def test_one_done_marker_per_stage(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    job = StageJob("expert", 1)
    assert job.done_marker == "experts/1/done.json"
    assert not is_done(store, job)
    store.put_json(job.done_marker, {"attempt": 1})
    assert is_done(store, job)
    assert {StageJob(s).done_marker for s in ("partition", "router", "assemble", "evaluate")} == {
        layout.PARTITION_DONE, layout.ROUTER_METRICS, layout.MODEL_MARKER, layout.EVAL_METRICS,
    }  # fmt: skip


# --- python -m atoll.trainer ------------------------------------------------------------------


def _run(tmp_path: Path, **dataset: object) -> tuple[Path, LocalStore]:
    spec = DDMRunSpec.model_validate(
        {
            "dataset": {"uri": "builtin://digits", "resolution": 8, "maxExamples": 64, **dataset},
            "partition": {"clusters": 2, "features": "pixels", "fineClusters": 8, "sampleSize": 64},
        }
    )
    root = tmp_path / "run"
    root.mkdir()
    (root / "spec.json").write_text(dump_spec_json(spec))
    return root, LocalStore(root)


def _main(root: Path, *extra: str) -> int:
    from atoll.trainer.__main__ import main

    return main([extra[0], "--run", str(root / "spec.json"), "--store", str(root), *extra[1:]])


def test_bad_input_exits_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, store = _run(tmp_path, uri=str(tmp_path / "no-such-images"))
    assert _main(root, "partition") == ExitCode.BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
    assert read_claim(store, "partition").attempt == 1, "the partition claimed its attempt before it failed"
    progress = StageProgress.from_json(store.get_bytes("partition/progress.json"))
    assert (progress.state, progress.attempt) == ("failed", 1)


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    root, _ = _run(tmp_path)
    with pytest.raises(SystemExit) as raised:
        _main(root, "expert")
    assert raised.value.code == ExitCode.USAGE
    with pytest.raises(SystemExit) as raised:
        _main(root, "router", "--expert", "1")
    assert raised.value.code == ExitCode.USAGE


def test_a_stale_attempt_exits_3_and_writes_no_marker(tmp_path: Path) -> None:
    root, store = _run(tmp_path)
    claim(store, "partition", 5, ())
    assert _main(root, "partition", "--attempt", "4") == ExitCode.FENCED
    assert not store.exists(layout.PARTITION_DONE)
    assert not store.exists("partition/progress.json")


def test_partition_claims_and_writes_its_marker_under_the_claim(tmp_path: Path) -> None:
    root, store = _run(tmp_path)
    assert _main(root, "partition", "--attempt", "2") == ExitCode.DONE
    marker = json.loads((root / layout.PARTITION_DONE).read_text())
    assert marker["attempt"] == 2
    assert read_claim(store, "partition").attempt == 2
    assert StageProgress.from_json(store.get_bytes("partition/progress.json")).attempt == 2
    # Done: a newer attempt returns at once (and claims, so an older one still running is fenced).
    assert _main(root, "partition") == ExitCode.DONE
    assert read_claim(store, "partition").attempt == 3


def test_a_marker_is_not_written_once_a_newer_attempt_claimed(tmp_path: Path) -> None:
    from atoll.store import FencedError
    from atoll.trainer.fence import write_done

    _, store = _run(tmp_path)
    job = StageJob("evaluate")
    claim(store, job.prefix, 1, ())
    claim(store, job.prefix, 2, ())
    with pytest.raises(FencedError, match=r"attempt 1 .* is fenced"):
        write_done(store, job, 1, {"strategies": {}})
    assert not is_done(store, job)
    write_done(store, job, 2, {"strategies": {}})
    assert json.loads((tmp_path / "run" / job.done_marker).read_text())["attempt"] == 2
