"""The Helm chart, checked with the pinned helm, its RBAC and CRDs installed into the real API server."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.env import binaries
from tests.env.cluster import ControlPlane

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "atoll"
VALUES = ["--set", "defaultStore=s3://atoll/runs", "--set", "defaultStoreSecret=minio-credentials"]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        path = binaries.binary("helm")
    except binaries.MissingPrerequisiteError as missing:
        if missing.fatal:
            pytest.fail(str(missing), pytrace=False)
        pytest.skip(str(missing))
    return subprocess.run([str(path), *args], capture_output=True, text=True, check=True, timeout=120)


def render(*args: str) -> list[dict[str, Any]]:
    text = helm("template", "atoll", str(CHART), "--namespace", "atoll-system", *args).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def test_helm_lint() -> None:
    result = helm("lint", "--strict", str(CHART), *VALUES)
    assert "0 chart(s) failed" in result.stdout


def test_chart_crds_are_the_generated_ones() -> None:
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    generated = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    assert chart == generated, "run `atoll crds --write charts/atoll/crds`"


def test_template_wires_the_operator_flags() -> None:
    documents = render(
        *VALUES, "--set", "watchNamespaces={team-a,team-b}", "--set", "image.tag=1.2.3",
        "--set", "imagePullSecrets[0].name=registry",
    )  # fmt: skip
    operator = [d for d in documents if d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"]
    assert sorted(d["kind"] for d in operator) == [
        "ClusterRole", "ClusterRoleBinding", "Deployment",
        "Role", "Role", "Role", "RoleBinding", "RoleBinding", "RoleBinding", "Service", "ServiceAccount",
    ]  # fmt: skip
    watched = [d for d in operator if d["kind"] == "Role" and not d["metadata"]["name"].endswith("-leader-election")]
    assert sorted(d["metadata"]["namespace"] for d in watched) == ["team-a", "team-b"]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/atoll-dev/atoll-operator:1.2.3"
    assert deployment["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    assert container["args"][0] == "operator"
    for flag in (
        "--default-store=s3://atoll/runs",
        "--default-store-secret=minio-credentials",
        "--namespace=team-a",
        "--namespace=team-b",
        "--image=ghcr.io/atoll-dev/atoll-trainer:0.1.0",  # the stages run the trainer image
    ):
        assert flag in container["args"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"  # leader election: one replica acts
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    binding = next(d for d in operator if d["kind"] == "ClusterRoleBinding")
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "atoll-operator", "namespace": "atoll-system"}


def test_template_runs_the_agent_on_every_gpu_node_without_taking_a_gpu() -> None:
    documents = render(*VALUES, "--set", "agent.ignoreXids=79", "--set", "agent.runtimeClassName=nvidia")
    agent = [d for d in documents if d["metadata"]["labels"]["app.kubernetes.io/component"] == "agent"]
    assert sorted(d["kind"] for d in agent) == [
        "ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    ]  # fmt: skip
    daemonset = next(d for d in agent if d["kind"] == "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["agent", "--interval=30", "--ignore-xids=79"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert "nvidia.com/gpu" not in str(container["resources"]), "the agent must not hold a GPU"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["serviceAccountName"] == "atoll-agent"
    role = next(d for d in agent if d["kind"] == "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]}]  # own Node: the policy

    assert not [d for d in render(*VALUES, "--set", "agent.enabled=false") if d["kind"] == "DaemonSet"]


@pytest.mark.cluster
def test_rbac_and_crds_install_and_grant_what_the_operator_needs(control_plane: ControlPlane) -> None:
    documents = render(*VALUES, "--include-crds")
    control_plane.kubectl("create", "namespace", "atoll-system", check=False)
    workloads = ("Deployment", "DaemonSet")  # no image to run here: RBAC and CRDs only
    manifest = "\n---\n".join(yaml.safe_dump(d) for d in documents if d["kind"] not in workloads)
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest)
    control_plane.kubectl("wait", "--for=condition=Established", "crd/ddmruns.atoll.dev", "--timeout=60s")
    account = "system:serviceaccount:atoll-system:atoll-operator"

    def can(verb: str, resource: str, namespace: str | None = "team-a") -> bool:
        where = ["-n", namespace] if namespace else []
        kind, _, sub = resource.partition("/")  # kubectl reads TYPE/NAME: a subresource is a flag
        subresource = [f"--subresource={sub}"] if sub else []
        command = ["auth", "can-i", verb, kind, "--as", account, *where, *subresource]
        return control_plane.kubectl(*command, check=False).stdout.strip() == "yes"

    needed = [
        ("watch", "ddmruns.atoll.dev"),
        ("patch", "ddmruns.atoll.dev/status"),
        ("update", "ddmruns.atoll.dev/finalizers"),
        ("create", "ddmexperts.atoll.dev"),
        ("patch", "ddmexperts.atoll.dev/status"),
        ("update", "ddmexperts.atoll.dev/finalizers"),
        ("create", "pods"),
        ("delete", "pods"),
        ("get", "secrets"),
        ("create", "events"),
    ]
    for verb, resource in needed:
        assert can(verb, resource), f"the operator may not {verb} {resource}"
    assert can("list", "nodes", None)
    for verb, resource in (("list", "secrets"), ("delete", "secrets"), ("create", "deployments"), ("delete", "nodes")):
        assert not can(verb, resource), f"the operator must not {verb} {resource}"

    agent = "system:serviceaccount:atoll-system:atoll-agent"
    for verb, allowed in (("get", False), ("patch", True), ("delete", False), ("list", False)):
        result = control_plane.kubectl("auth", "can-i", verb, "nodes", "--as", agent, check=False)
        assert (result.stdout.strip() == "yes") is allowed, f"agent {verb} nodes"
    result = control_plane.kubectl("auth", "can-i", "get", "secrets", "--as", agent, "-A", check=False)
    assert result.stdout.strip() == "no", "the agent must not read secrets"


def test_node_groups_reach_the_operator_with_get_on_cluster_autoscalers_status_alone(tmp_path: Path) -> None:
    import argparse

    from atoll.operator.command import node_group_options

    values = tmp_path / "values.yaml"
    group = {"name": "eks-gpu-l4-5ec6b2a0", "pool": "gpu-l4", "product": "NVIDIA-L4", "gpusPerNode": 4,
             "nodeLabels": {"eks.amazonaws.com/nodegroup": "gpu-l4"}, "costPerGpuHour": 0.8}  # fmt: skip
    values.write_text(yaml.safe_dump({"clusterAutoscaler": {"nodeGroups": [group]}}))
    documents = render(*VALUES, "-f", str(values))
    args = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    given = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith(("--node-groups", "--autoscaler"))}
    groups, status = node_group_options(argparse.Namespace(node_groups=given["--node-groups"],
                                                           autoscaler_status=given["--autoscaler-status"]))  # fmt: skip
    assert status == ("kube-system", "cluster-autoscaler-status")
    assert [(g.pool_name(), g.gpus_per_node, g.node_labels) for g in groups] == [
        ("gpu-l4", 4, {"eks.amazonaws.com/nodegroup": "gpu-l4"})
    ]
    role = next(d for d in documents if d["kind"] == "Role" and d["metadata"]["name"].endswith("-autoscaler-status"))
    assert role["metadata"]["namespace"] == "kube-system"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["cluster-autoscaler-status"],
            "verbs": ["get"],
        }
    ]
    binding = next(
        d for d in documents if d["kind"] == "RoleBinding" and d["metadata"]["name"] == role["metadata"]["name"]
    )
    assert binding["subjects"][0]["name"] == "atoll-operator"
    plain = render(*VALUES)
    assert not [d for d in plain if d["metadata"]["name"].endswith("-autoscaler-status")], "nothing without node groups"
