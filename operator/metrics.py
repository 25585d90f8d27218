"""The operator's Prometheus metrics: runs by phase, experts by state, per-expert training
figures, checkpoint age, restarts, reconcile latency and leadership.

Everything comes from what a reconcile tick already decided (the run's status and its experts'
statuses in `RunMemory`) and from the tick's own timings: this module never reads the API
server or a store. Per-run series are produced at scrape time from the latest snapshot of
each run (a custom collector), so a deleted run, or a replica that stops leading, leaves no
stale series behind. docs/operations.md lists every metric.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from atoll.api.status import RUN_PHASES, DDMExpertStatus, DDMRunStatus, StageStatus
from atoll.operator.leader import Leadership

STAGE_PHASES = ("Waiting", "Pending", "Running", "Restarting", "Succeeded", "Failed")
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RunKey = tuple[str, str]
"""(namespace, run)."""


@dataclass(frozen=True, kw_only=True)
class RunSnapshot:
    """What the last tick of one run decided, and the few spec figures the metrics need."""

    status: DDMRunStatus
    experts: Mapping[int, DDMExpertStatus]
    global_batch: int | None = None
    """The experts' global batch (samples per optimizer step)."""
    checkpoint_every: int | None = None
    """The experts' checkpoint interval in optimizer steps."""
    attempt_seen: Mapping[int, tuple[int, float]] = field(default_factory=dict)
    """Expert → (attempt, wall time this operator first saw it with its prediction)."""


def steps_per_second(expert: DDMExpertStatus, global_batch: int | None) -> float | None:
    if expert.samples_per_second is None or not global_batch:
        return None
    return expert.samples_per_second / global_batch


def projected_finish(expert: DDMExpertStatus, global_batch: int | None, now: float) -> float | None:
    """When the expert finishes (observed): its completion, else its heartbeat plus what is left at its speed."""
    if expert.phase == "Succeeded" and expert.completion_time is not None:
        return expert.completion_time.timestamp()
    rate = steps_per_second(expert, global_batch)
    if expert.phase != "Running" or not rate or expert.step is None or expert.total_steps is None:
        return None
    since = expert.heartbeat_time.timestamp() if expert.heartbeat_time is not None else now
    return since + max(0, expert.total_steps - expert.step) / rate


class RunCollector(Collector):
    """Per-run and per-expert series, built at scrape time from the runs' latest snapshots."""

    def __init__(self, leadership: Leadership, wall: Callable[[], float] = time.time) -> None:
        self.leadership = leadership
        self.wall = wall
        self._lock = threading.Lock()
        self._runs: dict[RunKey, RunSnapshot] = {}

    def update(self, key: RunKey, snapshot: RunSnapshot) -> None:
        with self._lock:
            self._runs[key] = snapshot

    def previous(self, key: RunKey) -> RunSnapshot | None:
        with self._lock:
            return self._runs.get(key)

    def forget(self, key: RunKey) -> None:
        with self._lock:
            self._runs.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._runs.clear()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            runs = dict(self._runs)
        now = self.wall()
        leader = GaugeMetricFamily("atoll_leader", "1 when this replica holds the leader lease and acts, else 0.")
        leader.add_metric([], 1.0 if self.leadership.acting() else 0.0)
        terms = CounterMetricFamily(
            "atoll_leader_terms", "Times this replica became the leader (each term starts with a fresh memory)."
        )
        terms.add_metric([], float(self.leadership.term))
        by_phase = GaugeMetricFamily(
            "atoll_runs", "DDMRuns by phase (the leader's view; 0 on standbys).", labels=["phase"]
        )
        counts = dict.fromkeys(RUN_PHASES, 0)
        by_state = GaugeMetricFamily("atoll_experts", "Experts by state, over every run.", labels=["state"])
        states = dict.fromkeys(STAGE_PHASES, 0)
        run_labels = ["namespace", "run"]
        expert_labels = ["namespace", "run", "expert"]
        phase = GaugeMetricFamily("atoll_run_phase", "1 for the run's current phase.", labels=[*run_labels, "phase"])
        condition = GaugeMetricFamily(
            "atoll_run_condition", "1 when the run's condition is True, else 0.", labels=[*run_labels, "type"]
        )
        progress = GaugeMetricFamily("atoll_run_progress_ratio", "Progress of the run in [0, 1].", labels=run_labels)
        restarts = GaugeMetricFamily(
            "atoll_stage_restarts", "Attempts started after an unfinished one.", labels=[*run_labels, "stage"]
        )
        families = {
            "step": GaugeMetricFamily("atoll_expert_step", "Optimizer step reached.", labels=expert_labels),
            "total": GaugeMetricFamily("atoll_expert_total_steps", "Optimizer steps to train.", labels=expert_labels),
            "loss": GaugeMetricFamily("atoll_expert_loss", "Latest training loss.", labels=expert_labels),
            "samples": GaugeMetricFamily(
                "atoll_expert_samples_per_second", "Training throughput (samples/s).", labels=expert_labels
            ),
            "steps": GaugeMetricFamily(
                "atoll_expert_steps_per_second", "Optimizer steps per second (samples/s ÷ global batch).",
                labels=expert_labels,
            ),
            "predicted": GaugeMetricFamily(
                "atoll_expert_predicted_finish_timestamp_seconds",
                "When the placement plan predicted the expert's current attempt to finish (Unix time).",
                labels=expert_labels,
            ),
            "projected": GaugeMetricFamily(
                "atoll_expert_observed_finish_timestamp_seconds",
                "When the expert finished, or will at its observed speed (Unix time).",
                labels=expert_labels,
            ),
            "age": GaugeMetricFamily(
                "atoll_expert_checkpoint_age_seconds",
                "Seconds since the expert's last committed checkpoint (running experts).",
                labels=expert_labels,
            ),
            "interval": GaugeMetricFamily(
                "atoll_expert_checkpoint_interval_seconds",
                "Expected seconds between checkpoints at the observed speed (checkpointEvery ÷ steps/s).",
                labels=expert_labels,
            ),
        }  # fmt: skip
        for (namespace, name), run in sorted(runs.items()):
            labels = [namespace, name]
            status = run.status
            counts[status.phase] += 1
            phase.add_metric([*labels, status.phase], 1.0)
            for item in status.conditions:
                condition.add_metric([*labels, item.type], 1.0 if item.status == "True" else 0.0)
            progress.add_metric(labels, status.progress_fraction)
            stages: dict[str, StageStatus] = {
                "partition": status.stages.partition, "router": status.stages.router,
                "assemble": status.stages.assemble, "evaluate": status.stages.evaluate,
            }  # fmt: skip
            stages.update({f"expert-{k}": expert for k, expert in run.experts.items()})
            for stage, stage_status in sorted(stages.items()):
                restarts.add_metric([*labels, stage], float(stage_status.restarts))
            for k, expert in sorted(run.experts.items()):
                states[expert.phase] += 1
                _expert_series(families, [*labels, str(k)], expert, run, k, now)
        for name, value in counts.items():
            by_phase.add_metric([name], float(value))
        for name, value in states.items():
            by_state.add_metric([name], float(value))
        yield from (leader, terms, by_phase, by_state, phase, condition, progress, restarts, *families.values())


def _expert_series(  # noqa: PLR0917 - one expert's figures into the families
    families: Mapping[str, GaugeMetricFamily],
    labels: list[str],
    expert: DDMExpertStatus,
    run: RunSnapshot,
    k: int,
    now: float,
) -> None:
    def put(family: str, value: float | None) -> None:
        if value is not None:
            families[family].add_metric(labels, float(value))

    rate = steps_per_second(expert, run.global_batch)
    put("step", expert.step)
    put("total", expert.total_steps)
    put("loss", expert.loss)
    put("samples", expert.samples_per_second)
    put("steps", rate)
    seen = run.attempt_seen.get(k)
    if expert.predicted_seconds is not None and seen is not None:
        put("predicted", seen[1] + expert.predicted_seconds)
    put("projected", projected_finish(expert, run.global_batch, now))
    if expert.phase == "Running":
        checkpoint = expert.last_checkpoint
        since = checkpoint.time if checkpoint is not None else expert.start_time
        put("age", None if since is None else max(0.0, now - since.timestamp()))
        if rate and run.checkpoint_every:
            put("interval", run.checkpoint_every / rate)


class OperatorMetrics:
    """The operator's registry: the run collector, reconcile latencies and errors."""

    def __init__(self, leadership: Leadership, wall: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        self.runs = RunCollector(leadership, wall)
        self.wall = wall
        self.registry.register(self.runs)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU seconds, open fds
        self.reconcile_seconds = Histogram(
            "atoll_reconcile_seconds",
            "Wall time of one reconcile tick of one run (observe, decide, act).",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "atoll_reconcile_step_seconds",
            "Wall time of one step of a tick: observe, decide (the placement plan included), act (and its"
            " parts act-experts, act-pods); status-write: a DDMExpert status write, from its hand-over until"
            " the API server took it; ledger-wait: a placing decision's wait for the GPU ledger; early-report: the"
            " decision without placing (and its act) a run makes and applies while it waits for the ledger.",
            labelnames=["step"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.event_loop_lag = Histogram(
            "atoll_event_loop_lag_seconds",
            "How late the event loop woke from a timed sleep: what every watch event, and so every"
            " index a tick reads, waits behind.",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "atoll_reconcile_errors", "Ticks that raised (retried at the next tick).", registry=self.registry
        )

    def record_step(self, step: str, seconds: float) -> None:
        self.step_seconds.labels(step=step).observe(seconds)

    def record_run(
        self,
        key: RunKey,
        status: DDMRunStatus | None,
        experts: Mapping[int, DDMExpertStatus],
        spec: Mapping[str, object],
    ) -> None:
        """The run as its last tick decided it (no status yet: nothing to show)."""
        if status is None:
            return
        expert_spec = spec.get("expert") if isinstance(spec.get("expert"), Mapping) else None
        batch, every = _training_figures(expert_spec)
        previous = self.runs.previous(key)
        seen = dict(previous.attempt_seen) if previous is not None else {}
        for k, expert in experts.items():
            if expert.predicted_seconds is not None and (k not in seen or seen[k][0] != expert.attempt):
                # The first attempt started with the stage; a later one when this operator first saw it.
                first = expert.start_time if expert.attempt == 1 else None
                seen[k] = (expert.attempt, first.timestamp() if first is not None else self.wall())
        self.runs.update(
            key,
            RunSnapshot(status=status, experts=dict(experts), global_batch=batch, checkpoint_every=every,
                        attempt_seen=seen),
        )  # fmt: skip


def _training_figures(expert: object) -> tuple[int | None, int | None]:
    """(global batch, checkpoint interval) of the experts, the preset's recipe filling the gaps."""
    from pydantic import ValidationError

    from atoll.api.spec import ExpertSpec

    if not isinstance(expert, Mapping):
        return None, None
    try:
        recipe = ExpertSpec.model_validate(expert).recipe()
    except (ValidationError, KeyError):
        return None, None
    return recipe.global_batch_size, recipe.checkpoint_every
