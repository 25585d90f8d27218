"""Elastic experts in the decision function: an expert grows onto more GPUs of its own node at a
checkpoint boundary (recorded situations, tests/operator/situations.py)."""

from __future__ import annotations

from typing import Any

from atoll.api.status import CheckpointStatus
from atoll.operator.reconcile.actions import CreatePod, DeletePod, PatchExpertStatus

from .situations import (
    checkpoint_ref,
    decided,
    expert,
    gpu_node,
    heartbeat,
    later,
    observe,
    pod,
    run_body,
    status_body,
    step,
    store,
)
from .test_decide import running_experts

A100 = gpu_node("a100-0", "NVIDIA-A100-SXM4-40GB", 40960, 8)


def on_a100(k: int, **extra: Any) -> dict[str, Any]:
    """Expert k's status while it trains on 1 GPU of a100-0."""
    return {"phase": "Running", "attempt": 1, "pod": f"r-expert-{k}-a1", "node": "a100-0",
            "gpu": "NVIDIA-A100-SXM4-40GB", "gpus": 1, "microBatch": 16, "gradAccum": 1, **extra}  # fmt: skip


def test_an_expert_grows_onto_free_gpus_of_its_node_at_its_checkpoint_and_keeps_its_global_batch() -> None:
    # Expert 0 trains on 1 GPU of a100-0; expert 1 and the router hold one more each and 5 are free.
    status, _, pods = running_experts()
    experts = [expert(0, on_a100(0)), expert(1, on_a100(1))]
    beats = {"expert-0": heartbeat("expert", 1, expert_index=0, step=3, total_steps=100),
             "expert-1": heartbeat("expert", 1, expert_index=1, step=90, total_steps=100)}  # fmt: skip
    world = observe(
        run_body(status_body(status), placement={"gpu": {"maxPerExpert": 4}, "speeds": {"NVIDIA-A100-SXM4-40GB": 1.0}}),
        experts=experts,
        pods=pods,
        nodes=(A100,),
        busy={"a100-0": 3},
        snapshot=store(progress=beats, cluster_sizes=(100, 101)),
    )
    started = step(world)
    decision = step(later(world, 60), started.memory)
    moves = {p.expert: p.status.move for p in decision.of(PatchExpertStatus)}
    grow = moves[0]
    assert grow is not None
    assert (grow.node, grow.at_step) == ("a100-0", 10)
    assert grow.gpus > 1
    assert grow.micro_batch * grow.grad_accum * grow.gpus == 16  # the spec's global batch
    planned = next(e.message for e in decision.events if e.reason == "MovePlanned")
    assert f"expert 0 will grow from 1 to {grow.gpus} NVIDIA-A100-SXM4-40GB GPU(s) on a100-0" in planned

    # At the checkpoint of step 10 the pod is stopped ...
    moving = (expert(0, on_a100(0, move=grow.model_dump(by_alias=True, mode="json"))), experts[1])
    checkpoints = {"expert-0": _cp(10)}
    at_boundary = later(
        world, 120, experts=moving, store=store(progress=beats, cluster_sizes=(100, 101), checkpoints=checkpoints)
    )
    stopping = step(at_boundary, decision.memory)
    assert [d.name for d in stopping.of(DeletePod)] == ["r-expert-0-a1"]
    assert any("to grow from 1 to" in e.message for e in stopping.events if e.reason == "Moving")
    # ... and once it is going, the next attempt starts on the same node with more GPUs.
    deleting = (pod("expert", 1, expert_index=0, deleting=True), *pods[1:])
    grown = step(later(at_boundary, 2, pods=deleting, busy_gpus={"a100-0": 2}), stopping.memory)
    created = {a.stage: a for a in grown.of(CreatePod)}
    action = created["expert-0"]
    assert (action.node, action.gpus) == ("a100-0", grow.gpus)
    argv: list[str] = list(action.manifest["spec"]["containers"][0]["args"])
    assert argv[argv.index("--micro-batch") + 1] == str(grow.micro_batch)
    assert argv[argv.index("--grad-accum") + 1] == str(grow.grad_accum)
    zero = decided(grown)[0]
    assert (zero.moves, zero.last_failure, zero.move) == (1, None, None)


def _cp(step_: int) -> Any:
    ref = checkpoint_ref(step_)
    return CheckpointStatus(step=ref.step, time=ref.time, uri=ref.uri)
