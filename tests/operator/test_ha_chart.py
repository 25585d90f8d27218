"""The chart's high availability and metrics: two replicas behind a leader Lease by default,
probes on the metrics port, a metrics Service, an optional ServiceMonitor, and a Role that
grants the Lease and nothing else.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.env.cluster import ControlPlane
from tests.operator.test_chart import CHART, VALUES, helm, render


def operator_deployment(documents: list[dict[str, object]]) -> dict[str, object]:
    return next(d for d in documents if d["kind"] == "Deployment")


def test_two_replicas_one_lease_by_default() -> None:
    documents = render(*VALUES)
    deployment = operator_deployment(documents)
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    for flag in ("--leader-elect", "--leader-lease=atoll-operator", "--metrics-port=8080", "--lease-seconds=15",
                 "--renew-seconds=10", "--retry-seconds=2"):  # fmt: skip
        assert flag in container["args"], flag
    assert not any(arg.startswith("--liveness") for arg in container["args"]), "one server on the port: ours"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 8080}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    spread = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert spread["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"

    service = next(d for d in documents if d["kind"] == "Service")
    assert service["metadata"]["name"] == "atoll-operator-metrics"
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert not [d for d in documents if d["kind"] == "ServiceMonitor"], "off unless asked for"

    role = next(d for d in documents if d["kind"] == "Role")
    assert role["metadata"]["namespace"] == "atoll-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["atoll-operator"],
         "verbs": ["get", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]  # fmt: skip


def test_service_monitor_and_single_replica() -> None:
    documents = render(*VALUES, "--set", "metrics.serviceMonitor.enabled=true",
                       "--set", "metrics.serviceMonitor.labels.release=prometheus")  # fmt: skip
    monitor = next(d for d in documents if d["kind"] == "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["atoll-system"]}

    single = render(*VALUES, "--set", "replicas=1", "--set", "leaderElection.enabled=false")
    deployment = operator_deployment(single)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not any(a == "--leader-elect" for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    assert not [d for d in single if d["kind"] in ("Role", "RoleBinding")]

    with pytest.raises(subprocess.CalledProcessError) as refused:
        helm("template", "atoll", str(CHART), *VALUES, "--set", "leaderElection.enabled=false")
    assert "replicas > 1 needs leaderElection.enabled" in refused.value.stderr


@pytest.mark.cluster
def test_the_lease_role_grants_the_lease_alone(control_plane: ControlPlane) -> None:
    documents = render(*VALUES)
    control_plane.kubectl("create", "namespace", "atoll-system", check=False)
    wanted = ("ServiceAccount", "Role", "RoleBinding")
    manifest = "\n---\n".join(yaml.safe_dump(d) for d in documents if d["kind"] in wanted)
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest)
    account = "system:serviceaccount:atoll-system:atoll-operator"

    def can(verb: str, resource: str, namespace: str = "atoll-system") -> bool:
        result = control_plane.kubectl("auth", "can-i", verb, resource, "--as", account, "-n", namespace, check=False)
        return result.stdout.strip() == "yes"

    for verb in ("get", "update"):
        assert can(verb, "leases.coordination.k8s.io/atoll-operator")
        assert not can(verb, "leases.coordination.k8s.io/kube-scheduler"), f"{verb} another Lease"
    assert can("create", "leases.coordination.k8s.io")
    assert not can("delete", "leases.coordination.k8s.io/atoll-operator")
    assert not can("get", "leases.coordination.k8s.io/atoll-operator", namespace="team-a"), "only its namespace"
