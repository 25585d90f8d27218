"""The run's state machine: its phases, the one table of transitions, and what each stage waits for.

    Pending ──store ready──▶ Partitioning ──partition done──▶ Training ──experts done──▶ Routing
    Training/Routing ──experts and router done──▶ Assembling ──model written──▶ Evaluating
    Evaluating ──metrics written──▶ Succeeded          any phase ──a stage gave up / bad input──▶ Failed

The router starts with the experts (it needs only the partition), so Routing is the time
the router still trains after the last expert finished, and is skipped when it finished
first. Evaluate runs after assembly in its own phase, so the model URI is published one
phase before the run succeeds. Transitions only move forward; several may fire at one tick
(a re-applied run whose store already holds every result). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from atoll.api.status import RUN_PHASES, RunPhase, StagePhase


@dataclass(frozen=True, kw_only=True)
class RunFacts:
    """What the reconciler observed, reduced to what the phase depends on."""

    store_ready: bool
    """spec.json is in the run's store (the run's inputs are settled)."""
    partition: StagePhase
    experts: Sequence[StagePhase]
    """One per DDMExpert; empty until the partition created them."""
    router: StagePhase
    assemble: StagePhase
    evaluate: StagePhase
    failure: tuple[str, str] | None = None
    """(reason, message) when the run cannot succeed: bad input or a stage out of restarts."""

    @property
    def experts_done(self) -> bool:
        return bool(self.experts) and all(phase == "Succeeded" for phase in self.experts)


Guard = Callable[[RunFacts], bool]

TRANSITIONS: dict[RunPhase, list[tuple[Guard, RunPhase]]] = {
    "Pending": [(lambda f: f.store_ready, "Partitioning")],
    "Partitioning": [(lambda f: f.partition == "Succeeded", "Training")],
    "Training": [
        (lambda f: f.experts_done and f.router == "Succeeded", "Assembling"),
        (lambda f: f.experts_done, "Routing"),
    ],
    "Routing": [(lambda f: f.router == "Succeeded", "Assembling")],
    "Assembling": [(lambda f: f.assemble == "Succeeded", "Evaluating")],
    "Evaluating": [(lambda f: f.evaluate == "Succeeded", "Succeeded")],
    "Succeeded": [],
    "Failed": [],
}
"""phase → [(guard, next phase)], the first guard that holds wins. Failed is reachable
from every phase that is not final (see `advance`)."""

TERMINAL: frozenset[RunPhase] = frozenset({"Succeeded", "Failed"})


def advance(phase: RunPhase, facts: RunFacts) -> list[RunPhase]:
    """The phases the run passes through from `phase` given `facts` (empty: it stays)."""
    if phase in TERMINAL:
        return []
    if facts.failure is not None:
        return ["Failed"]
    path: list[RunPhase] = []
    while True:
        step = next((target for guard, target in TRANSITIONS[phase] if guard(facts)), None)
        if step is None:
            return path
        path.append(step)
        phase = step


def stage_ready(stage: str, facts: RunFacts) -> bool:
    """Whether a stage's inputs exist, i.e. it may start (the pipeline's dependencies)."""
    if stage == "partition":
        return facts.store_ready
    if stage in ("expert", "router"):
        return facts.partition == "Succeeded"
    if stage == "assemble":
        return facts.experts_done and facts.router == "Succeeded"
    if stage == "evaluate":
        return facts.assemble == "Succeeded"
    raise ValueError(f"unknown stage {stage!r}")


def order(phase: RunPhase) -> int:
    """Position of a phase along the pipeline (Failed sorts last)."""
    return RUN_PHASES.index(phase)


# Share of the whole run each part stands for in `progress` (experts and router train
# side by side and dominate the time).
WEIGHTS = {"partition": 0.05, "experts": 0.75, "router": 0.1, "assemble": 0.05, "evaluate": 0.05}


def run_progress(
    *, partition: float, experts: Sequence[float], clusters: int, router: float, assemble: float, evaluate: float
) -> float:
    """The fraction of the run done, from each stage's own fraction in [0, 1]."""
    expert_part = sum(experts) / clusters if clusters else 0.0
    total = (
        WEIGHTS["partition"] * partition
        + WEIGHTS["experts"] * expert_part
        + WEIGHTS["router"] * router
        + WEIGHTS["assemble"] * assemble
        + WEIGHTS["evaluate"] * evaluate
    )
    return max(0.0, min(1.0, total))
