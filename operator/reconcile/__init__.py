"""One reconciliation of one DDMRun: observe → decide → act.

Observe (atoll.operator.reconcile.observer): one immutable `Observation` of the world —
the run, its pods and DDMExperts, the nodes, the GPUs every pod holds or was promised, the
run's store, the clock. Decide (atoll.operator.reconcile.decide): a pure function of the
observation and the memory of earlier ticks that returns the actions, the run's status and
its Events. Act (atoll.operator.reconcile.executor): apply the actions. The GPU usage is
read (a fresh copy of the index's GPU holders, plus the ledger's promises), the decision
made and its GPUs reserved under the shared ledger's lock, so runs deciding on other
threads never promise the same GPUs twice: a reservation is dropped only by a copy of the
index that shows its pod, and every later decision reads a copy at least that new.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from atoll.operator.islands.remote import Islands
from atoll.operator.kube import Kube
from atoll.operator.ledger import GpuLedger
from atoll.operator.nodepools import NodePoolWatch
from atoll.operator.placement.capacity import pod_requests
from atoll.operator.reconcile.actions import Applied, CreatePod, Decision, Event, PatchExpertStatus
from atoll.operator.reconcile.decide import decide
from atoll.operator.reconcile.executor import Executor
from atoll.operator.reconcile.observation import Observation, RunMemory, RunObject
from atoll.operator.reconcile.observer import GpuHolders, IndexSnapshot, Observer
from atoll.operator.reconcile.store_reader import RunStores
from atoll.operator.settings import OperatorSettings

__all__ = [
    "Decision",
    "Event",
    "IndexSnapshot",
    "Observation",
    "Reconciler",
    "RunMemory",
    "decide",
    "decide_reserving",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Reconciler:
    """Reconciles DDMRuns; one per operator process, shared by every run's worker."""

    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        ledger: GpuLedger | None = None,
        timer: Callable[[str, float], None] | None = None,
        islands: Islands | None = None,
        node_pools: NodePoolWatch | None = None,
    ) -> None:
        self.settings = settings
        self.node_pools = node_pools
        """The cluster's Karpenter NodePools, listed now and then (None: not read)."""
        self.ledger = ledger or GpuLedger()
        self.stores = RunStores()
        self.islands = islands
        """The compute islands experts may be dispatched to (None: home only)."""
        self.observer = Observer(kube, settings, self.stores, islands)
        self.executor = Executor(kube, self.ledger, self.stores, islands=islands, timer=timer)
        self.clock = clock
        self.monotonic = monotonic
        self.timer = timer
        """Told the wall time of each step of a tick ("observe", "decide", "act"): the metrics."""

    def tick(
        self, body: Mapping[str, Any], indexes: IndexSnapshot, holders: GpuHolders, memory: RunMemory
    ) -> tuple[RunMemory, list[Event]]:
        """Bring one run one step closer to done: what to remember for the next tick, and the
        Events to post. `holders` copies the index's GPU holders when called."""
        started = time.perf_counter()
        observation = self.observer.observe(body, indexes, memory, now=self.clock(), monotonic=self.monotonic())
        observed = time.perf_counter()
        events: list[Event] = []

        def meanwhile(early: Decision) -> RunMemory:
            nonlocal memory
            applied = self.executor.apply(observation.run, early)
            events.extend(applied.events)
            memory = remember(memory, early, applied)
            return memory

        decision = decide_reserving(
            self.ledger, observation, holders, memory, self.settings, timer=self.timer, meanwhile=meanwhile
        )
        decided = time.perf_counter()
        applied = self.executor.apply(observation.run, decision)
        if self.timer is not None:
            self.timer("observe", observed - started)
            self.timer("decide", decided - observed)
            self.timer("act", time.perf_counter() - decided)
        return remember(memory, decision, applied), [*events, *applied.events]

    def forget(self, body: Mapping[str, Any]) -> None:
        """The run is gone: drop its store client, what was read of its pods, its status writes not sent yet."""
        run = RunObject.from_body(body)
        self.stores.forget(run)
        self.observer.forget(run)
        self.executor.forget(run)

    def stand_by(self, body: Mapping[str, Any]) -> None:
        """This replica no longer leads: the run's status writes not sent yet are dropped (the
        next leader decides every status again)."""
        self.executor.forget(RunObject.from_body(body))


def decide_reserving(
    ledger: GpuLedger,
    observation: Observation,
    holders: GpuHolders,
    memory: RunMemory,
    settings: OperatorSettings,
    *,
    timer: Callable[[str, float], None] | None = None,
    meanwhile: Callable[[Decision], RunMemory] | None = None,
) -> Decision:
    """The decision, made on the GPU usage when it needs it: first without it, and where that
    decision never reads the usage (nothing to place, no move check due: most ticks of a
    training run), that is the decision. Otherwise — the first read of the usage stops that
    first try at once, so no placement is planned twice — under the ledger's lock: the GPU
    usage (every holder the index shows now, plus what was promised and is not shown yet), the
    decision on it, and its GPUs reserved. Runs that only watch their pods thus never wait for
    the lock, nor for the copy of the index it guards, while another run places. `timer` is
    told how long a decision that needed the usage waited for the lock ("ledger-wait").

    While another run holds the lock, a run that has DDMExpert statuses to write (its pods
    started running while some of its experts still wait for GPUs) does not hold them until
    its turn: it decides once without placing (`Observation.placing` False; only a run with
    expert pods, so a run's first placing never decides twice), hands that
    decision to `meanwhile` to apply (which returns the memory after it) and then waits; the
    decision under the lock starts from that memory ("early-report": how often, how long)."""
    try:
        return decide(replace(observation, busy_gpus=UsageProbe()), memory, settings)
    except UsageNeeded:
        pass

    waiting = time.perf_counter()

    def report() -> None:
        nonlocal memory, waiting
        if meanwhile is None or not any(pod.stage == "expert" for pod in observation.pods):
            return  # no expert pod yet (a run's first placing): no DDMExpert status to report
        started = time.perf_counter()
        try:  # a decision that places nothing never reads the usage: the probe proves it
            early = decide(replace(observation, placing=False, busy_gpus=UsageProbe()), memory, settings)
        except UsageNeeded:
            return
        if early.of(PatchExpertStatus):
            memory = meanwhile(early)
            if timer is not None:
                timer("early-report", time.perf_counter() - started)
        waiting = time.perf_counter()  # the wait for the lock starts now

    with ledger.deciding(while_waiting=report):
        if timer is not None:
            timer("ledger-wait", time.perf_counter() - waiting)
        busy, requested = ledger.held(holders())
        observation = replace(observation, busy_gpus=busy, busy_requests=requested)
        decision = decide(observation, memory, settings)
        for create in decision.of(CreatePod):
            if create.node is not None:
                ledger.reserve(create.key, create.node, create.gpus, pod_requests(create.manifest.get("spec") or {}))
    return decision


class UsageNeeded(Exception):  # noqa: N818 - a signal inside decide_reserving, never escapes it
    """The decision looked at the GPU usage: it has to be made on the real one."""


class UsageProbe(Mapping[str, int]):
    """A GPU usage that stops the decision the moment anything looks at it: a pure decision
    that never did is the same on any usage."""

    def __getitem__(self, node: str) -> int:
        raise UsageNeeded

    def __iter__(self) -> Iterator[str]:
        raise UsageNeeded

    def __len__(self) -> int:
        raise UsageNeeded

    def __contains__(self, node: object) -> bool:
        raise UsageNeeded


def remember(before: RunMemory, decision: Decision, applied: Applied) -> RunMemory:
    """The decision's memory, amended by what the executor could not apply."""
    memory = decision.memory
    experts = {k: s for k, s in memory.experts.items() if k not in applied.failed_experts}
    created = {k: when for k, when in memory.experts_created.items() if k not in applied.experts_not_created}
    return replace(
        memory,
        experts=experts,
        experts_created=created,
        written=memory.written if applied.run_status_written else before.written,
        creation_failures=dict(applied.failed_pods),
        creation_refusals=dict(applied.refused_pods),
        spec_write_failure=applied.spec_write_failure,
    )
