"""charts/atoll-island grants exactly what the operator needs on an island (atoll.operator.islands.access)."""

from __future__ import annotations

from atoll.operator.islands.access import REMOTE_ACCESS
from tests.operator.islands import ISLAND_CHART, ISLAND_NAMESPACE, helm, render_island_chart


def test_helm_lint() -> None:
    assert "0 chart(s) failed" in helm("lint", "--strict", str(ISLAND_CHART)).stdout


def test_rules_are_exactly_the_operators_needs() -> None:
    documents = render_island_chart()
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Secret", "ServiceAccount"]
    role = next(d for d in documents if d["kind"] == "Role")
    cluster_role = next(d for d in documents if d["kind"] == "ClusterRole")
    assert role["metadata"]["namespace"] == ISLAND_NAMESPACE

    def granted(rules: list[dict[str, list[str]]]) -> dict[str, tuple[str, ...]]:
        assert all(rule["apiGroups"] == [""] and len(rule["resources"]) == 1 for rule in rules)
        return {rule["resources"][0]: tuple(rule["verbs"]) for rule in rules}

    assert granted(role["rules"]) == {a.resource: a.verbs for a in REMOTE_ACCESS if a.namespaced}
    assert granted(cluster_role["rules"]) == {a.resource: a.verbs for a in REMOTE_ACCESS if not a.namespaced}
    for binding in (d for d in documents if d["kind"].endswith("Binding")):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "atoll-island", "namespace": ISLAND_NAMESPACE}
        ]


def test_the_token_secret_is_optional() -> None:
    kinds = [d["kind"] for d in render_island_chart("--set", "tokenSecret=false")]
    assert "Secret" not in kinds
    account = next(d for d in render_island_chart("--set", "serviceAccountName=lab") if d["kind"] == "ServiceAccount")
    assert account["metadata"]["name"] == "lab"
