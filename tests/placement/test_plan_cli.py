"""`atoll plan` on the committed example files, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atoll.cli import main

DATA = Path(__file__).parent / "data"
NODES, RUN = str(DATA / "nodes.yaml"), str(DATA / "run.yaml")
SIZES = "220000,180000,150000,120000,100000,90000,60000,40000,20000,10000,6000,4000"


def plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object] | None, str]:
    code = main(["plan", *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def test_plan_of_the_example_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    code, document, notes = plan(capsys, "--nodes", NODES, "--run", RUN, "--cluster-sizes", SIZES)
    assert code == 0
    assert document is not None
    assignments = document["assignments"]
    assert isinstance(assignments, list)
    assert [a["expert"] for a in assignments] == list(range(12))
    # cordoned, unhealthy, NotReady, stale, too small (T4 < minMemoryGiB 16) and GPU-less nodes are not used
    used = {a["node"] for a in assignments}
    assert used <= {"gpu-h100-0", "gpu-a100-0", "gpu-l4-0", "gpu-rtx4090-0"}
    assert "gpu-h100-0" in used
    for a in assignments:
        assert a["microBatch"] * a["gradAccum"] * a["gpus"] == 256
    # proportional steps: samples follow the cluster sizes (50 000 steps × 12 × share × 256)
    assert assignments[0]["samples"] == round(50_000 * 12 * 220_000 / 1_000_000) * 256
    assert document["makespanSeconds"] == max(a["predictedSeconds"] for a in assignments)
    assert document["lowerBoundSeconds"] <= document["makespanSeconds"]
    assert set(document["speeds"]) == {a["gpuProduct"] for a in assignments} | {"NVIDIA-L4"}
    for line in (
        "not used: gpu-h100-1: cordoned (spec.unschedulable)",
        "not used: gpu-a100-1: GPU unhealthy: gpu 2: xid 79",
        "not used: gpu-l4-1: NotReady (NodeStatusUnknown)",
        "not used: gpu-t4-0: agent heartbeat 10800s old (limit 180s)",
        "not used: gpu-t4-1: 15.0 GiB GPUs < placement.gpu.minMemoryGiB 16",
        "not used: cpu-0: no allocatable nvidia.com/gpu",
        "speed of NVIDIA-H100-80GB-HBM3: ",
    ):
        assert line in notes


def test_without_cluster_sizes_experts_are_equal(capsys: pytest.CaptureFixture[str]) -> None:
    code, document, _ = plan(capsys, "--nodes", NODES, "--run", RUN)
    assert code == 0
    assert document is not None
    assert {a["samples"] for a in document["assignments"]} == {50_000 * 256}  # type: ignore[attr-defined]


def test_heartbeats_are_judged_against_now(capsys: pytest.CaptureFixture[str]) -> None:
    code, document, notes = plan(capsys, "--nodes", NODES, "--run", RUN, "--now", "2026-03-01T09:01:00Z")
    assert code == 0
    assert document is not None
    assert "not used: gpu-t4-0: 15.0 GiB GPUs < placement.gpu.minMemoryGiB 16" in notes  # fresh at 09:01
    code, _, notes = plan(capsys, "--nodes", NODES, "--run", RUN, "--now", "tomorrow")
    assert code == 1
    assert "--now: Invalid isoformat string: 'tomorrow'" in notes


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ("1,2,3", "--cluster-sizes has 3 values but the run has partition.clusters = 12"),
        ("a,b", "--cluster-sizes must be comma-separated integers, got 'a,b'"),
        (",".join(["0"] * 12), "--cluster-sizes must be ≥ 0 and not all 0"),
    ],
)
def test_bad_cluster_sizes(capsys: pytest.CaptureFixture[str], sizes: str, message: str) -> None:
    code, document, notes = plan(capsys, "--nodes", NODES, "--run", RUN, "--cluster-sizes", sizes)
    assert (code, document) == (1, None)
    assert message in notes


def test_bad_node_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    assert plan(capsys, "--nodes", missing, "--run", RUN)[2].startswith(f"error: --nodes {missing}: cannot read")
    pods = tmp_path / "pods.yaml"
    pods.write_text("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: p}}\n")
    assert "items[0] is a Pod, not a Node" in plan(capsys, "--nodes", str(pods), "--run", RUN)[2]
    empty = tmp_path / "empty.yaml"
    empty.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    assert "no Node found" in plan(capsys, "--nodes", str(empty), "--run", RUN)[2]
    broken = tmp_path / "broken.yaml"
    broken.write_text("items: [\n")
    assert "not YAML" in plan(capsys, "--nodes", str(broken), "--run", RUN)[2]


def test_single_node_documents_and_an_invalid_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    one.write_text(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: solo\n  labels:\n"
        "    nvidia.com/gpu.product: NVIDIA-L4\n    nvidia.com/gpu.memory: '23034'\n"
        "status:\n  allocatable: {nvidia.com/gpu: '4'}\n"
    )
    code, document, _ = plan(capsys, "--nodes", str(one), "--run", RUN)
    assert code == 0
    assert document is not None
    assert {a["node"] for a in document["assignments"]} == {"solo"}  # type: ignore[attr-defined]
    bad = tmp_path / "run.yaml"
    bad.write_text(Path(RUN).read_text().replace("stepsPolicy: proportional", "stepsPolicy: sometimes"))
    code, _, notes = plan(capsys, "--nodes", str(one), "--run", str(bad))
    assert code == 1
    assert "spec.expert.stepsPolicy: must be one of 'equal' or 'proportional'" in notes


def test_a_deadline_no_plan_meets_is_a_note_and_the_plan_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import yaml

    manifest = yaml.safe_load(Path(RUN).read_text())
    manifest["spec"].setdefault("placement", {})["deadlineHours"] = 0.01
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump(manifest))
    code, document, notes = plan(capsys, "--nodes", NODES, "--run", str(run))
    assert code == 0
    assert document is not None
    assert (document["deadlineSeconds"], document["meetsDeadline"]) == (36.0, False)
    assignments = document["assignments"]
    assert isinstance(assignments, list)
    held = sum(a["gpus"] * (a["predictedSeconds"] - a["startSeconds"]) for a in assignments) / 3600
    assert document["gpuHours"] == pytest.approx(held, abs=0.01)
    assert document["cost"] is None  # no node of the example fleet has a price
    assert "note: no plan meets placement.deadlineHours 0.01 h: the fastest finishes in" in notes
