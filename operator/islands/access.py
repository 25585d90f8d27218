"""What the home operator may do on an island, as data: the one definition the remote Role
(charts/atoll-island), `atoll island add`'s access check and their tests read.

Least privilege: pods, secrets and events in the island's namespace, nodes read; nothing else.
Pure: never talks to a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class Access:
    """Verbs on one resource (core API group) the operator needs on an island, and why."""

    resource: str
    verbs: tuple[str, ...]
    namespaced: bool = True
    why: str

    def requests(self, namespace: str) -> list[Request]:
        """One access request per verb (in `namespace`, or cluster-wide for a cluster-scoped resource)."""
        where = namespace if self.namespaced else None
        return [Request(verb=verb, resource=self.resource, namespace=where) for verb in self.verbs]


@dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    """One question for a SelfSubjectAccessReview: may I `verb` `resource` (in `namespace`)?"""

    verb: str
    resource: str
    group: str = ""
    namespace: str | None = None

    def __str__(self) -> str:
        what = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{self.verb} {what}" + (f" in namespace {self.namespace}" if self.namespace else " (cluster-wide)")


REMOTE_ACCESS: tuple[Access, ...] = (
    Access(
        resource="pods",
        verbs=("get", "list", "watch", "create", "delete"),
        why="expert pods: create them, watch their state, delete orphans",
    ),
    Access(
        resource="secrets",
        verbs=("get", "list", "create", "update", "delete"),
        why="the store Secret each expert pod reads: create, rotate, delete orphans",
    ),
    Access(resource="events", verbs=("list", "watch"), why="why an expert pod does not schedule or start"),
    Access(resource="nodes", verbs=("list", "watch"), namespaced=False, why="the island's GPU fleet"),
)
"""Everything the operator needs on an island (namespaced resources in the island's namespace)."""


def needed(namespace: str) -> list[Request]:
    """Every access request the operator's credentials must be allowed on an island."""
    return [request for access in REMOTE_ACCESS for request in access.requests(namespace)]


def beyond_needs(namespace: str) -> list[Request]:
    """A few requests least-privilege credentials must be refused: allowed, they show broader rights
    than the operator needs (cluster-wide Secrets or pods, writing nodes)."""
    return [
        Request(verb="list", resource="secrets"),
        Request(verb="create", resource="pods"),
        Request(verb="get", resource="secrets", namespace="kube-system"),
        Request(verb="patch", resource="nodes"),
        Request(verb="create", resource="rolebindings", group="rbac.authorization.k8s.io", namespace=namespace),
    ]
