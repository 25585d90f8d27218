"""The run's store in one reconciliation: open it with the run's Secret, write spec.json
once, and read heartbeats, checkpoints and partition results (throttled). Credentials go
into the store client only; never into logs, status or Events.
"""

from __future__ import annotations

from atoll.api.status import StageStatus
from atoll.operator import storage
from atoll.operator.conditions import Trouble
from atoll.operator.reconcile.state import (
    TRAINING_STAGES,
    Failure,
    TickState,
    log,
    parse_key,
    stage_key,
)
from atoll.store import Store, StoreError


class StoreSteps(TickState):
    """The run's store in one reconciliation: open it with the run's Secret, write spec.json"""

    def _open_store(self) -> tuple[storage.StoreTarget, Store]:
        assert self.spec is not None
        try:
            target = storage.store_target(self.spec, self.namespace, self.name, self.settings)
            secret_version = None
            env = None
            if target.s3 and target.secret:
                secret = self.kube.get_secret(self.namespace, target.secret)
                env = storage.credentials(secret, target.secret, self.namespace)
                secret_version = (secret or {}).get("metadata", {}).get("resourceVersion")
            identity = (target.run_uri, target.secret, secret_version)
            if self.memory.store is None or self.memory.store_identity != identity:
                self.memory.store = storage.open_run_store(target, env)
                self.memory.store_identity = identity
        except storage.RunSetupError as error:
            raise Failure(error.reason, error.message) from None
        return target, self.memory.store

    def _ensure_spec(self) -> bool:
        """spec.json in the store (once); False while the store cannot be reached."""
        assert self.spec is not None
        assert self.store is not None
        assert self.target is not None
        if self.status.store_uri:
            return True
        try:
            owner = storage.RunOwner(self.namespace, self.name, self.owner.uid) if self.owner.uid else None
            storage.ensure_spec(self.store, self.spec, owner=owner)
        except storage.RunSetupError as error:
            raise Failure(error.reason, error.message) from None
        except StoreError as error:
            problem = storage.classify_store_error(error, self.target)
            if problem.permanent:
                raise Failure(problem.reason, problem.message) from None
            since = self.memory.store_down_since or self.now
            self.memory.store_down_since = since
            waited = (self.now - since).total_seconds()
            if waited >= self.settings.store_grace_seconds:
                raise Failure(
                    "StoreUnreachable",
                    f"{problem.message}; the run's store was never reachable in {waited:.0f} s",
                ) from None
            self.troubles.append(Trouble("StoreUnavailable", problem.message))
            return False
        self.memory.store_down_since = None
        self.status.store_uri = self.target.run_uri
        return True

    def _poll_keys(self) -> list[str]:
        """Stages whose heartbeat is worth reading now: not final, and started or ready."""
        status = self.status
        keys = []
        experts_done = bool(self.memory.experts) and all(
            s.phase == "Succeeded" for s in self._expert_statuses().values()
        )
        singles = {
            "partition": True,
            "router": status.stages.partition.phase == "Succeeded",
            "assemble": experts_done and status.stages.router.phase == "Succeeded",
            "evaluate": status.stages.assemble.phase == "Succeeded",
        }
        for key, ready in singles.items():
            stage_status: StageStatus = getattr(status.stages, key)
            if stage_status.phase not in ("Succeeded", "Failed") and (ready or stage_status.attempt > 0):
                keys.append(key)
        for k, expert in self._expert_statuses().items():
            if expert.phase not in ("Succeeded", "Failed"):
                keys.append(stage_key("expert", k))
        return keys

    def _poll_store(self) -> None:
        """Read heartbeats, checkpoints and partition results (at most every store_poll_seconds)."""
        assert self.store is not None
        memory = self.memory
        if self.monotonic() - memory.last_poll < self.settings.store_poll_seconds:
            if memory.store_error is not None:
                self.troubles.append(Trouble("StoreUnavailable", memory.store_error))
            return
        memory.last_poll = self.monotonic()
        try:
            for key in self._poll_keys():
                stage, expert = parse_key(key)
                progress = storage.read_progress(self.store, stage, expert)
                memory.progress[key] = progress
                if stage in TRAINING_STAGES and progress is not None:
                    known = memory.checkpoints.get(key)
                    newest = progress.last_checkpoint
                    if newest is not None and (known is None or known.step != newest.step):
                        memory.checkpoints[key] = storage.last_checkpoint(self.store, stage, expert)
            if self.status.stages.partition.phase == "Succeeded" and not self.status.cluster_sizes:
                self.status.cluster_sizes = storage.cluster_sizes(self.store) or []
        except StoreError as error:
            since = memory.store_down_since or self.now
            memory.store_down_since = since
            memory.store_error = f"{self.target.root if self.target else 'the store'} unreachable since " + (
                f"{since.isoformat(timespec='seconds')}: {error}"
            )
            self.troubles.append(Trouble("StoreUnavailable", memory.store_error))
            return
        if memory.store_down_since is not None:
            log.info("store reachable again", run=self.name, namespace=self.namespace)
        memory.store_down_since = None
        memory.store_error = None
