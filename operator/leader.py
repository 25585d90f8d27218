"""Leader election for the operator: of several replicas, exactly one acts, through a
`coordination.k8s.io/v1` Lease in the operator's namespace.

Every replica watches and indexes all the time (so a standby takes over with warm indexes);
only the holder of the Lease reconciles. The fence is `LeaderElector.acting()`: true only
until `renew_seconds` after the start of the last successful renewal, which is shorter than
the `lease_seconds` a standby waits, on its own clock, after it last saw the Lease change. So
a leader that cannot renew (partitioned, paused, overloaded) stops acting before anyone else
may start; `FencedKube` checks the fence before every write the reconciler makes. What the
fence cannot stop is a request already on the wire when it closes: the margin between the
two durations (5 s by default) is what such a request has to land. This module never
decides anything about runs and never reads them.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from atoll.log import get_logger
from atoll.operator.kube import Kube

log = get_logger(__name__)

LEASE_NAME = "atoll-operator"


class Leadership(Protocol):
    """What the reconciler's glue asks: may this replica act now, and since which term."""

    def acting(self) -> bool: ...

    @property
    def term(self) -> int:
        """Counts the times this replica became leader: a new term forgets what the last one remembered."""
        ...

    @property
    def elected(self) -> bool:
        """Whether leader election is on (False: a single replica that always acts)."""
        ...


class AlwaysLeader:
    """One replica and no election (`atoll operator` without --leader-elect): it always acts."""

    term = 1
    elected = False

    def acting(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class LeaseTimings:
    """client-go's defaults: a standby takes over 15–17 s after the leader's last renewal."""

    lease_seconds: float = 15.0
    """How long a standby waits, after it last saw the Lease change, before taking it."""
    renew_seconds: float = 10.0
    """How long after the start of its last successful renewal the leader keeps acting (< lease_seconds)."""
    retry_seconds: float = 2.0
    """How often every replica tries to acquire or renew."""

    def __post_init__(self) -> None:
        if not 0 < self.retry_seconds < self.renew_seconds < self.lease_seconds:
            raise ValueError(
                "leader election needs 0 < retry_seconds < renew_seconds < lease_seconds, got"
                f" {self.retry_seconds}, {self.renew_seconds}, {self.lease_seconds}"
            )


def default_identity() -> str:
    """The pod's name in cluster (POD_NAME), else host and pid; a random suffix tells restarts apart."""
    base = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    return f"{base}-{uuid.uuid4().hex[:6]}"


def in_cluster_namespace() -> str | None:
    """The namespace of the pod's ServiceAccount (in cluster), else POD_NAMESPACE."""
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if path.exists():
        return path.read_text(encoding="utf-8").strip() or None
    return os.environ.get("POD_NAMESPACE") or None


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquires and renews the Lease on a thread of its own (a busy event loop never delays a renewal)."""

    def __init__(
        self,
        api_client: Any,
        *,
        namespace: str,
        name: str = LEASE_NAME,
        identity: str | None = None,
        timings: LeaseTimings | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self.api: Any = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.timings = timings or LeaseTimings()
        self.monotonic = monotonic
        self.elected = True
        self._lock = threading.Lock()
        self._valid_until = -math.inf
        self._term = 0
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = -math.inf
        self._reached_at = -math.inf
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._timeout = self.timings.renew_seconds
        """A request that hangs longer than this is abandoned (the fence has closed by then anyway)."""

    # -- what the operator asks -------------------------------------------------------------

    def acting(self) -> bool:
        """The fence: this replica holds the Lease and renewed it recently enough to act."""
        with self._lock:
            return self.monotonic() < self._valid_until

    @property
    def term(self) -> int:
        with self._lock:
            return self._term

    def connected(self, within: float | None = None) -> bool:
        """Whether the last round trip to the API server succeeded within `within` seconds (lease_seconds)."""
        with self._lock:
            return self.monotonic() - self._reached_at < (within or self.timings.lease_seconds)

    def holder(self) -> str | None:
        """The holder the Lease named when last read."""
        with self._lock:
            return None if self._observed is None else self._observed[0]

    # -- the loop ---------------------------------------------------------------------------

    def start(self) -> LeaderElector:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop renewing; close the fence first, then hand the Lease over at once if we hold it."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timings.retry_seconds + 30)
        with self._lock:
            held = self._valid_until > -math.inf and self._observed is not None and self._observed[0] == self.identity
            self._valid_until = -math.inf
        if release and held:
            try:
                self._release()
            except Exception as error:
                log.warning("could not release the leader lease; it expires on its own", error=str(error))

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.try_acquire_or_renew()
            except Exception as error:
                log.warning("leader election: the lease could not be read or written", error=str(error))
            self._stopping.wait(self.timings.retry_seconds)

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the Lease afterwards."""
        from kubernetes.client.exceptions import ApiException

        started = self.monotonic()
        lease = self._read()
        now = self.monotonic()
        with self._lock:
            self._reached_at = now
        if lease is None:
            return self._write(None, started)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"), lease["metadata"].get("resourceVersion"))
        with self._lock:
            if record != self._observed:
                self._observed, self._observed_at = record, now
            expired = now - self._observed_at >= float(spec.get("leaseDurationSeconds") or self.timings.lease_seconds)
            if holder not in (None, self.identity) and not expired:
                if self._valid_until > -math.inf:
                    log.warning("leadership lost", leader=holder, identity=self.identity)
                self._valid_until = -math.inf
                return False
        try:
            return self._write(lease, started)
        except ApiException as error:
            if int(getattr(error, "status", 0) or 0) == 409:
                return False  # another replica wrote it first: read again next time
            raise

    def _read(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.api.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=self._timeout
            )
        except ApiException as error:
            if int(getattr(error, "status", 0) or 0) == 404:
                return None
            raise
        data: dict[str, Any] = json.loads(response.data)
        return data

    def _write(self, lease: dict[str, Any] | None, started: float) -> bool:
        """Create or take or renew the Lease (optimistic: the resourceVersion must still match)."""
        from kubernetes.client.exceptions import ApiException

        now = _micro_time(datetime.now(UTC))
        spec = dict((lease or {}).get("spec") or {})
        renewing = spec.get("holderIdentity") == self.identity
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=max(1, math.ceil(self.timings.lease_seconds)),
            renewTime=now,
        )
        if not renewing:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease is not None else 0)
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}
        try:
            if lease is None:
                self.api.create_namespaced_lease(self.namespace, body, _request_timeout=self._timeout)
            else:
                self.api.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=self._timeout)
        except ApiException as error:
            if int(getattr(error, "status", 0) or 0) == 409:
                return False
            raise
        with self._lock:
            was_acting = self.monotonic() < self._valid_until
            self._valid_until = started + self.timings.renew_seconds
            self._observed = (self.identity, now, spec.get("leaseTransitions"), None)
            if not renewing or not was_acting:
                self._term += 1
                log.info("became the leader", identity=self.identity, term=self._term)
        return True

    def _release(self) -> None:
        lease = self._read()
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        spec = dict(lease["spec"])
        spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=_micro_time(datetime.now(UTC)))
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": spec,
        }  # fmt: skip
        self.api.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=self._timeout)
        log.info("leader lease released", identity=self.identity)


class FencedKube(Kube):
    """The reconciler's API calls, every write refused unless this replica is acting as leader.

    A refusal is an `ApiException` with status 0 and reason "not the leader", so the executor
    records it as a failed action (tried again next tick) like any other API error."""

    def __init__(self, api_client: Any, leadership: Leadership) -> None:
        super().__init__(api_client)
        self.leadership = leadership

    def _fence(self, what: str) -> None:
        if not self.leadership.acting():
            from kubernetes.client.exceptions import ApiException

            raise ApiException(status=0, reason=f"not the leader: {what} refused")

    def create_pod(self, manifest: dict[str, Any]) -> bool:
        self._fence("pod creation")
        return super().create_pod(manifest)

    def delete_pod(self, namespace: str, name: str, *, grace_seconds: int | None = None) -> None:
        self._fence("pod deletion")
        super().delete_pod(namespace, name, grace_seconds=grace_seconds)

    def create_expert(self, manifest: dict[str, Any]) -> bool:
        self._fence("DDMExpert creation")
        return super().create_expert(manifest)

    def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._fence("DDMRun status patch")
        super().patch_run_status(namespace, name, status)

    def patch_expert_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._fence("DDMExpert status patch")
        super().patch_expert_status(namespace, name, status)
