"""The chart's RBAC in the real API server, both ways: `kubectl auth can-i` says yes to every
request the operator and the NVML agent make and no to what they must not do, cluster-wide
and with watchNamespaces (then pods, Secrets, DDMRuns and DDMExperts only in those
namespaces; nodes stay cluster-wide read). The agent's admission policy lets a token bound
to the agent's pod change only atoll.dev/ annotations of that pod's own Node.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.env import binaries, kube
from tests.env import fleet as fleet_builders
from tests.env.cluster import ControlPlane
from tests.env.karpenter import apply_crds

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "charts" / "atoll"
RBAC_KINDS = {
    "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
}  # fmt: skip
Check = tuple[str, str, str | None]
"""(verb, resource, subresource)."""

OPERATOR_IN_NAMESPACE: list[Check] = [
    *[(verb, "ddmruns.atoll.dev", None) for verb in ("list", "watch", "patch")],
    ("patch", "ddmruns.atoll.dev", "status"),
    ("update", "ddmruns.atoll.dev", "finalizers"),
    *[(verb, "ddmexperts.atoll.dev", None) for verb in ("get", "list", "watch", "create")],
    ("patch", "ddmexperts.atoll.dev", "status"),
    ("update", "ddmexperts.atoll.dev", "finalizers"),
    *[(verb, "pods", None) for verb in ("get", "list", "watch", "create", "delete")],
    ("get", "secrets", None),
    ("create", "events", None),
]
OPERATOR_NEVER: list[Check] = [
    *[(verb, "ddmruns.atoll.dev", None) for verb in ("get", "create", "update", "delete")],
    ("update", "ddmruns.atoll.dev", "status"),
    *[(verb, "ddmexperts.atoll.dev", None) for verb in ("update", "patch", "delete")],
    *[(verb, "pods", None) for verb in ("patch", "update")],
    ("create", "pods", "exec"),
    *[(verb, "secrets", None) for verb in ("list", "watch", "create", "update", "delete")],
    ("get", "configmaps", None),
    ("create", "deployments.apps", None),
    ("create", "rolebindings.rbac.authorization.k8s.io", None),
]
OPERATOR_CLUSTER: list[Check] = [
    ("list", "nodes", None),
    ("watch", "nodes", None),
    ("list", "nodepools.karpenter.sh", None),
]
OPERATOR_CLUSTER_NEVER: list[Check] = [
    *[(verb, "nodes", None) for verb in ("get", "patch", "update", "delete")],
    *[(verb, "nodepools.karpenter.sh", None) for verb in ("create", "patch", "update", "delete")],
    *[(verb, "namespaces", None) for verb in ("get", "list", "watch")],
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
]
AGENT: list[Check] = [("patch", "nodes", None)]
AGENT_NEVER: list[Check] = [
    *[(verb, "nodes", None) for verb in ("get", "list", "update", "delete", "create")],
    ("patch", "nodes", "status"),
    ("list", "pods", None),
    ("get", "secrets", None),
]


def helm_template(*args: str) -> list[dict[str, Any]]:
    try:
        path = binaries.binary("helm")
    except binaries.MissingPrerequisiteError as missing:
        if missing.fatal:
            pytest.fail(str(missing), pytrace=False)
        pytest.skip(str(missing))
    result = subprocess.run([str(path), "template", *args], capture_output=True, text=True, timeout=120, check=True)
    return [d for d in yaml.safe_load_all(result.stdout) if d]


class Release:
    """The RBAC objects of one rendering of the chart, applied (workloads left out)."""

    def __init__(self, control_plane: ControlPlane, *sets: str) -> None:
        self.control_plane = control_plane
        self.name = f"rbac-{uuid.uuid4().hex[:6]}"
        self.namespace = f"atoll-{uuid.uuid4().hex[:6]}"
        rendered = helm_template(self.name, str(CHART), "-n", self.namespace, *sets)
        self.objects = [d for d in rendered if d["kind"] in RBAC_KINDS]
        control_plane.kubectl("create", "namespace", self.namespace)
        control_plane.kubectl(
            "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": self.objects})
        )

    def _list(self) -> str:
        return json.dumps({"kind": "List", "apiVersion": "v1", "items": self.objects})

    def account(self, component: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}-{component}"

    def can(self, account: str, check: Check, namespace: str | None = None) -> bool:
        verb, resource, subresource = check
        args = ["auth", "can-i", verb, resource, f"--as={account}"]
        args += ["-n", namespace] if namespace else []
        args += [f"--subresource={subresource}"] if subresource else []
        result = self.control_plane.kubectl(*args, check=False)
        assert result.stdout.strip() in ("yes", "no"), result.stderr
        return result.stdout.strip() == "yes"

    def delete(self) -> None:
        self.control_plane.kubectl("delete", "-f", "-", "--wait=false", "--ignore-not-found", input=self._list())
        self.control_plane.kubectl("delete", "namespace", self.namespace, "--wait=false")


def matrix(release: Release, account: str, checks: list[Check], namespace: str | None) -> dict[Check, bool]:
    return {check: release.can(account, check, namespace) for check in checks}


@pytest.fixture
def release_factory(atoll_crds: ControlPlane) -> Iterator[Any]:
    # Karpenter's CRDs, so that `kubectl auth can-i … nodepools.karpenter.sh` resolves the resource.
    apply_crds(atoll_crds.kubectl)
    made: list[Release] = []

    def make(*sets: str) -> Release:
        made.append(Release(atoll_crds, *sets))
        return made[-1]

    yield make
    for release in made:
        release.delete()


def test_cluster_wide_operator_and_agent_can_exactly_what_they_need(release_factory: Any, namespace: str) -> None:
    release = release_factory()
    operator = release.account("operator")
    assert all(matrix(release, operator, OPERATOR_IN_NAMESPACE, namespace).values())
    assert all(matrix(release, operator, OPERATOR_IN_NAMESPACE, "kube-system").values())  # every namespace
    assert all(matrix(release, operator, OPERATOR_CLUSTER, None).values())
    assert not any(matrix(release, operator, OPERATOR_NEVER, namespace).values())
    assert not any(matrix(release, operator, OPERATOR_CLUSTER_NEVER, None).values())
    agent = release.account("agent")
    assert all(matrix(release, agent, AGENT, None).values())
    assert not any(matrix(release, agent, AGENT_NEVER, namespace).values())


def test_watch_namespaces_grants_namespaced_access_only_there(release_factory: Any, namespace: str) -> None:
    release = release_factory("--set", f"watchNamespaces={{{namespace}}}")
    operator = release.account("operator")
    assert all(matrix(release, operator, OPERATOR_IN_NAMESPACE, namespace).values())
    elsewhere = matrix(release, operator, OPERATOR_IN_NAMESPACE, "kube-system")
    assert not any(elsewhere.values()), [check for check, allowed in elsewhere.items() if allowed]
    assert all(matrix(release, operator, OPERATOR_CLUSTER, None).values())
    assert not any(matrix(release, operator, OPERATOR_NEVER, namespace).values())
    roles = [o for o in release.objects if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith("-operator")]
    assert [rule["resources"] for rule in roles[0]["rules"]] == [["nodes"], ["nodepools"]]


ISLAND_MONITOR_CLUSTER: list[Check] = [
    ("list", "computeislands.atoll.dev", None),
    ("patch", "computeislands.atoll.dev", "status"),
]
ISLAND_MONITOR_CLUSTER_NEVER: list[Check] = [
    *[(verb, "computeislands.atoll.dev", None) for verb in ("create", "update", "patch", "delete")],
    ("update", "computeislands.atoll.dev", "status"),
]


def test_islands_grant_the_island_monitor_exactly_what_it_needs(release_factory: Any, namespace: str) -> None:
    release = release_factory("--set", f"watchNamespaces={{{namespace}}}", "--set", "islands.enabled=true")
    operator = release.account("operator")
    assert all(matrix(release, operator, ISLAND_MONITOR_CLUSTER, None).values())
    assert not any(matrix(release, operator, ISLAND_MONITOR_CLUSTER_NEVER, None).values())
    assert release.can(operator, ("list", "ddmruns.atoll.dev", None), "kube-system"), (
        "orphan collection lists every run"
    )
    assert not release.can(operator, ("patch", "ddmruns.atoll.dev", None), "kube-system")
    assert release.can(operator, ("get", "secrets", None), release.namespace), "the kubeconfig Secrets"
    assert not release.can(operator, ("get", "secrets", None), "kube-system")
    assert not release.can(operator, ("list", "secrets", None), release.namespace)
    assert release.can(operator, ("create", "events", None), "default"), "Events about cluster-scoped islands"
    assert all(matrix(release, operator, OPERATOR_IN_NAMESPACE, namespace).values())
    deployment = next(o for o in helm_template(
        release.name, str(CHART), "-n", release.namespace, "--set", "islands.enabled=true"
    ) if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-operator"))  # fmt: skip
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--island-namespace={release.namespace}" in args
    assert "--island-interval=10" in args


def _token_api(control_plane: ControlPlane, token: str) -> Any:
    """A CoreV1Api that authenticates with token alone (no client certificate)."""
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = control_plane.server
    configuration.ssl_ca_cert = str(control_plane.cluster_dir / "pki" / "ca.crt")
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.CoreV1Api(client.ApiClient(configuration))


def test_agent_changes_only_atoll_annotations_of_its_own_node(
    release_factory: Any, fleet: fleet_builders.Fleet, core_v1: Any, atoll_crds: ControlPlane
) -> None:
    from kubernetes.client.exceptions import ApiException

    release = release_factory()
    own, other = fleet.simulated()[:2]  # kwok runs pods there without executing them
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent", "namespace": release.namespace},
        "spec": {"nodeName": own, "serviceAccountName": f"{release.name}-agent",
                 "containers": [{"name": "agent", "image": "atoll-operator"}]},
    }  # fmt: skip
    core_v1.create_namespaced_pod(release.namespace, pod)
    kube.wait_for(lambda: kube.read_pod(core_v1, release.namespace, "agent"), timeout=30, what="the agent pod")
    token = atoll_crds.kubectl(
        "create", "token", f"{release.name}-agent", "-n", release.namespace,
        "--bound-object-kind=Pod", "--bound-object-name=agent",
    ).stdout.strip()  # fmt: skip
    api = _token_api(atoll_crds, token)
    key = f"atoll.dev/probe-{uuid.uuid4().hex[:6]}"

    api.patch_node(own, {"metadata": {"annotations": {key: "ok"}}})
    assert core_v1.read_node(own).metadata.annotations[key] == "ok"

    def in_force() -> bool:
        # A new policy is enforced once the API server has loaded and type-checked it (a moment).
        try:
            api.patch_node(other, {"metadata": {"annotations": {f"{key}-wait": "x"}}})
        except ApiException as error:
            return error.status in (403, 422)
        return False

    kube.wait_for(in_force, timeout=60, what="the agent's admission policy in force", interval=1)

    refused = [
        (other, {"metadata": {"annotations": {key: "not mine"}}}, "only the Node its pod runs on"),
        (own, {"metadata": {"annotations": {"example.com/x": "y"}}}, "only atoll.dev/ annotations"),
        (own, {"metadata": {"labels": {"nvidia.com/gpu.product": "fake"}}}, "spec or labels"),
        (own, {"spec": {"unschedulable": True}}, "spec or labels"),
    ]
    for node, patch, message in refused:
        with pytest.raises(ApiException) as denied:
            api.patch_node(node, patch)
        assert denied.value.status in (403, 422), denied.value.body
        assert message in denied.value.body, denied.value.body
    core_v1.patch_node(own, {"metadata": {"annotations": {key: None}}})
    core_v1.patch_node(other, {"metadata": {"annotations": {f"{key}-wait": None}}})


def test_stage_pods_may_block_their_owners_deletion_only_with_its_finalizers(
    release_factory: Any, namespace: str, atoll_crds: ControlPlane
) -> None:
    """OwnerReferencesPermissionEnforcement: the operator's blockOwnerDeletion owner references
    need `update` on the owner's finalizers, which the chart grants (and a role without it fails)."""
    release = release_factory()
    quickstart = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "quickstart.yaml"
    run = next(d for d in yaml.safe_load_all(quickstart.read_text()) if d and d["kind"] == "DDMRun")
    atoll_crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(run))
    uid = atoll_crds.kubectl_json("get", "ddmrun", run["metadata"]["name"], "-n", namespace)["metadata"]["uid"]
    owner = {"apiVersion": "atoll.dev/v1alpha1", "kind": "DDMRun", "name": run["metadata"]["name"], "uid": uid,
             "controller": True, "blockOwnerDeletion": True}  # fmt: skip

    def create_pod(name: str, account: str) -> subprocess.CompletedProcess[str]:
        metadata = {"name": name, "namespace": namespace, "ownerReferences": [owner]}
        spec = {"containers": [{"name": "stage", "image": "atoll-trainer"}], "nodeName": "nowhere"}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
        return atoll_crds.kubectl("create", f"--as={account}", "-f", "-", input=json.dumps(pod), check=False)

    allowed = create_pod("with-finalizers", release.account("operator"))
    assert allowed.returncode == 0, allowed.stderr

    # the same rules but the finalizers one, for another account
    role = next(o for o in release.objects if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith("operator"))
    rules = [r for r in role["rules"] if not any(x.endswith("/finalizers") for x in r["resources"])]
    weaker = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
              "metadata": {"name": "no-finalizers", "namespace": namespace}, "rules": rules}  # fmt: skip
    atoll_crds.kubectl("apply", "-f", "-", input=json.dumps(weaker))
    atoll_crds.kubectl("create", "serviceaccount", "weaker", "-n", namespace)
    atoll_crds.kubectl("create", "rolebinding", "weaker", "-n", namespace, "--role=no-finalizers",
                       f"--serviceaccount={namespace}:weaker")  # fmt: skip
    refused = create_pod("without-finalizers", f"system:serviceaccount:{namespace}:weaker")
    assert refused.returncode != 0
    assert "cannot set blockOwnerDeletion" in refused.stderr, refused.stderr
