"""The act step: apply one decision's actions, in a fixed order, and say which ones failed.

Order: spec.json, DDMExperts, pod deletions, then the DDMExpert statuses are handed to the
status writer (atoll.operator.reconcile.status_writer: they are written in the background,
and a write that fails is told to the run's next tick), then pod creations (a failed create
releases its GPU reservation), the run's status last; the Events to post are returned with
the outcome (posted by the kopf glue, from its event loop). Creations (DDMExperts, pods) go
out side by side on a thread pool shared by every run, the status writes on threads of their
own, so a run's status writes never queue behind another run's burst of pod creations, and
a tick never waits for its status writes: the run's next tick looks at its pods again while
they are on their way. Creates are create-if-absent (a pod of the same name owned by another
object is a failure, not ours), deletes ignore NotFound. An API error fails that action
alone; the next tick, level-based, tries again. The only module of the reconciler that writes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from atoll.api.status import DDMExpertStatus
from atoll.log import get_logger
from atoll.operator import storage
from atoll.operator.islands.remote import Islands
from atoll.operator.kube import Kube
from atoll.operator.ledger import GpuLedger
from atoll.operator.reconcile.actions import (
    Applied,
    CreateExpert,
    CreatePod,
    Decision,
    DeletePod,
    PatchExpertStatus,
    PatchRunStatus,
    WriteSpec,
)
from atoll.operator.reconcile.observation import RunObject, StoreProblem
from atoll.operator.reconcile.status_writer import StatusWriter
from atoll.operator.reconcile.store_reader import RunStores, run_owner
from atoll.store import StoreError

log = get_logger("atoll.operator.reconcile")


TRANSIENT_4XX = frozenset({404, 408, 409, 425, 429})
"""Client errors that may go away by themselves (a conflict, throttling, a namespace cache)."""


def _api_error(error: Exception) -> str:
    status = getattr(error, "status", None)
    reason = getattr(error, "reason", None)
    return f"{status} {reason}" if status is not None else str(error)


def permanent_refusal(error: Exception) -> str | None:
    """The API server's message when it refused a request for good (a 4xx that retrying the
    same object cannot fix: invalid, forbidden by admission or quota), else None."""
    status = getattr(error, "status", None)
    if not isinstance(status, int) or not 400 <= status < 500 or status in TRANSIENT_4XX:
        return None
    message = None
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        message = json.loads(getattr(error, "body", None) or "{}").get("message")
    return f"{status} {getattr(error, 'reason', None) or 'refused'}: {message or 'no message'}"


class Executor:
    """Applies decisions through the Kubernetes API and the run's store; the Events to post
    come back in `Applied.events` (the kopf glue posts them from its event loop)."""

    def __init__(
        self,
        kube: Kube,
        ledger: GpuLedger,
        stores: RunStores,
        *,
        parallel: int = 16,
        islands: Islands | None = None,
        timer: Callable[[str, float], None] | None = None,
    ) -> None:
        self.kube = kube
        self.islands = islands
        """Where pods planned on a ComputeIsland's nodes are created (None: islands are off)."""
        self.ledger = ledger
        self.stores = stores
        self.creators = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="act-create")
        """DDMExpert and pod creations of one tick go out side by side (64 pods one after the
        other would delay the last by seconds)."""
        self.status_writer = StatusWriter(self._write_expert_status, parallel, "act-status", timer=timer)
        """DDMExpert status writes, in the background, on threads of their own: a status write
        waits only for other status writes as urgent as itself, never for pod creations."""
        self.timer = timer
        """Told the wall time of each part of the act step ("act-experts", "act-pods"), and of
        each status write from its hand-over ("status-write")."""

    def apply(self, run: RunObject, decision: Decision) -> Applied:
        applied = Applied()
        for write in decision.of(WriteSpec):
            self._write_spec(run, write, applied)
        started = time.perf_counter()
        experts: list[CreateExpert] = decision.of(CreateExpert)
        list(self.creators.map(lambda expert: self._create_expert(expert, applied), experts))
        self._time("act-experts", started, bool(experts))
        for delete in decision.of(DeletePod):
            log.info("deleting pod", pod=delete.name, namespace=run.namespace, why=delete.why)
            self._call(applied, f"deleting pod {delete.name}", self._delete, run, delete)
        applied.failed_experts = self.status_writer.failures(run.key)  # earlier ticks' writes
        for patch in decision.of(PatchExpertStatus):
            self.status_writer.submit(run.key, patch)
        started = time.perf_counter()
        creates: list[CreatePod] = decision.of(CreatePod)
        pods = [self.creators.submit(self._create, run, create) for create in creates]
        outcomes = [pod.result() for pod in pods]
        self._time("act-pods", started, bool(creates))
        for create, (created, failure, refused) in zip(creates, outcomes, strict=True):
            if refused is not None:
                self.ledger.release(create.key)
                applied.refused_pods[create.stage] = refused
                applied.errors.append(f"pod of {create.stage} refused: {refused}")
            elif failure is not None:
                self.ledger.release(create.key)
                applied.failed_pods[create.stage] = failure
                applied.errors.append(failure)
            elif created and create.started is not None:
                applied.events.append(create.started)
        for run_status in decision.of(PatchRunStatus):
            status = run_status.status.model_dump(by_alias=True, mode="json")
            if not self._call(applied, "DDMRun status", self.kube.patch_run_status, run.namespace, run.name, status):
                applied.run_status_written = False
        applied.events.extend(decision.events)
        for error in applied.errors:
            log.warning("action failed, retried next tick", run=run.name, namespace=run.namespace, error=error)
        return applied

    def _time(self, part: str, started: float, happened: bool) -> None:
        if self.timer is not None and happened:
            self.timer(part, time.perf_counter() - started)

    def _create_expert(self, expert: CreateExpert, applied: Applied) -> bool:
        name = expert.manifest["metadata"]["name"]
        if self._call(applied, f"DDMExpert {name}", self.kube.create_expert, dict(expert.manifest)):
            return True
        applied.experts_not_created.add(expert.expert)
        return False

    def _call(self, applied: Applied, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """One API call; an API error is recorded (False), never raised (nor an island that
        cannot be reached or is not known)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            call(*args, **kwargs)
        except (ApiException, HTTPError, OSError, LookupError) as error:
            applied.errors.append(f"{what}: {_api_error(error)}")
            return False
        return True

    def _write_expert_status(self, namespace: str, name: str, status: DDMExpertStatus) -> bool:
        """One DDMExpert status write, from a status writer's thread; a failure is logged here
        (the tick that decided it has ended) and told to the run's next tick."""
        body = status.model_dump(by_alias=True, mode="json")
        failed = Applied()
        if self._call(failed, f"DDMExpert {name} status", self.kube.patch_expert_status, namespace, name, body):
            return True
        log.warning("DDMExpert status not written, written again after the next tick", namespace=namespace,
                    error=failed.errors[0])  # fmt: skip
        return False

    def forget(self, run: RunObject) -> None:
        """The run is gone, or this replica no longer leads: its status writes not sent yet are dropped."""
        self.status_writer.forget(run.key)

    def _write_spec(self, run: RunObject, write: WriteSpec, applied: Applied) -> None:
        store = self.stores.store(run)
        if store is None:
            return
        try:
            storage.ensure_spec(store, write.spec, owner=run_owner(run))
        except storage.RunSetupError as error:
            problem = StoreProblem(reason=error.reason, message=error.message, permanent=error.permanent)
        except StoreError as error:
            refused = storage.classify_write_error(error, store.uri)
            problem = StoreProblem(reason=refused.reason, message=refused.message, permanent=refused.permanent)
        except OSError as error:  # a local path the operator cannot write (read-only, not a directory, …)
            problem = StoreProblem(
                reason="StoreUnwritable",
                message=f"cannot write {store.uri}: {error.strerror or error} (a local path is the operator's own"
                " filesystem: use an s3:// store on a cluster)",
                permanent=True,
            )
        else:
            return
        applied.spec_write_failure = problem
        applied.errors.append(f"spec.json not written: {problem.message}")

    def _delete(self, run: RunObject, delete: DeletePod) -> None:
        """Delete a pod of the run where it is: at home, or on the island the registry saw it on."""
        if self.islands is not None:
            for pod in self.islands.registry.pods_of(run.namespace, run.name):
                if pod.name == delete.name:
                    self.islands.delete_pod(pod.island, pod.namespace, pod.name, grace_seconds=delete.grace_seconds)
                    return
        self.kube.delete_pod(run.namespace, delete.name, grace_seconds=delete.grace_seconds)

    def _create(self, run: RunObject, create: CreatePod) -> tuple[bool, str | None, str | None]:
        """(created now, why it could not be created, the API server's refusal for good)."""
        from kubernetes.client.exceptions import ApiException

        name = create.manifest["metadata"]["name"]
        if create.island is not None:
            return self._create_on_island(run, create)
        try:
            created = self.kube.create_pod(dict(create.manifest))
            if not created and not self._ours(run.namespace, name, create):
                return False, f"cannot create pod {name}: a pod of that name that is not this run's still exists", None
        except ApiException as error:
            if (refused := permanent_refusal(error)) is not None:
                return False, None, refused
            return False, f"cannot create pod {name}: {_api_error(error)}", None
        return created, None, None

    def _create_on_island(self, run: RunObject, create: CreatePod) -> tuple[bool, str | None, str | None]:
        """An island's pod (and its store Secret there): created, or why not."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        name, island = create.manifest["metadata"]["name"], str(create.island)
        if self.islands is None:
            return False, f"cannot create pod {name} on island {island}: islands are off in this operator", None
        try:
            created = self.islands.create_pod(
                island, create.manifest, origin_namespace=run.namespace, run=run.name, run_uid=run.uid,
                home_secret=create.store_secret,
            )  # fmt: skip
        except ApiException as error:
            if (refused := permanent_refusal(error)) is not None:
                return False, None, f"island {island}: {refused}"
            return False, f"cannot create pod {name} on island {island}: {_api_error(error)}", None
        except (LookupError, OSError, HTTPError) as error:  # unknown island, unreachable API server, no store Secret
            return False, f"cannot create pod {name} on island {island}: {type(error).__name__}: {error}", None
        return created, None, None

    def _ours(self, namespace: str, name: str, create: CreatePod) -> bool:
        """Whether the existing pod of that name is the one this action would have created."""
        existing = self.kube.get_pod(namespace, name)
        if existing is None:
            return False
        wanted = {o.get("uid") for o in create.manifest["metadata"].get("ownerReferences") or []}
        found = {o.get("uid") for o in existing.get("metadata", {}).get("ownerReferences") or []}
        return bool(wanted & found)
