"""pytest fixtures for the real test environment: MinIO, the control plane, the fake GPU
fleet, the pod process runtime and a namespace per test. Registered by tests/conftest.py.

One server of each kind per pytest session. A missing prerequisite fails the test in CI
(CI=true) and skips it locally, with the reason; it is never silently ignored.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.env import binaries, kube
from tests.env import fleet as fleet_builders
from tests.env import karpenter as karpenter_env
from tests.env.binaries import MissingPrerequisiteError
from tests.env.cluster import ControlPlane
from tests.env.karpenter import Karpenter
from tests.env.minio import MinioServer
from tests.env.runtime_process import PodRuntimeProcess

CLUSTER_FIXTURES = frozenset(
    {"control_plane", "fleet", "pod_runtime", "namespace", "core_v1", "operator_image", "karpenter"}
)
MINIO_FIXTURES = frozenset({"minio", "minio_client", "minio_bucket", "s3_env"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses an environment fixture, so `-m "not cluster and not minio"` skips them."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & CLUSTER_FIXTURES:
            item.add_marker(pytest.mark.cluster)
        if names & MINIO_FIXTURES:
            item.add_marker(pytest.mark.minio)


def _prerequisite(make: Callable[[], Any]) -> Any:
    """Run make(); turn a missing binary into a failure (CI) or a skip (locally)."""
    try:
        return make()
    except MissingPrerequisiteError as missing:
        if missing.fatal:
            pytest.fail(str(missing), pytrace=False)
        pytest.skip(str(missing))


# --- MinIO -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    """The session's MinIO server (endpoint, access_key, secret_key, env(), client(), restart())."""
    server: MinioServer = _prerequisite(lambda: MinioServer(tmp_path_factory.mktemp("minio")))
    server.start()
    yield server
    server.close()


@pytest.fixture
def minio_client(minio: MinioServer) -> Any:
    """A `minio.Minio` client for the session's server (restarted first if a test stopped it)."""
    minio.start()
    return minio.client()


@pytest.fixture
def minio_bucket(minio: MinioServer, minio_client: Any) -> Iterator[str]:
    """A fresh, uniquely named, empty bucket; emptied and removed after the test."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    minio_client.make_bucket(name)
    yield name
    minio.start()  # a test may have stopped the server
    from minio.deleteobjects import DeleteObject

    objects = [DeleteObject(obj.object_name) for obj in minio_client.list_objects(name, recursive=True)]
    errors = list(minio_client.remove_objects(name, objects)) if objects else []
    assert not errors, f"cleaning bucket {name}: {errors}"
    minio_client.remove_bucket(name)


@pytest.fixture
def s3_env(minio: MinioServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Sets MINIO_ENDPOINT / MINIO_ACCESS_KEY / MINIO_SECRET_KEY for this test; returns them."""
    env = minio.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MINIO_SECURE", raising=False)
    return env


# --- control plane, fleet, pod runtime ------------------------------------------------------


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The session's control plane: .kubeconfig, .kubectl(*args), .kubectl_json(*args), .api_client()."""
    cluster: ControlPlane = _prerequisite(lambda: ControlPlane(tmp_path_factory.mktemp("cluster")))
    cluster.start()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def core_v1(control_plane: ControlPlane) -> Any:
    """A `kubernetes.client.CoreV1Api` for the session's control plane."""
    from kubernetes import client

    return client.CoreV1Api(control_plane.api_client())


@pytest.fixture(scope="session")
def pod_runtime(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodRuntimeProcess]:
    """The pod process runtime for the marked nodes: .logs(ns, name), .log_path(ns, name), .pod_pid(ns, name)."""
    runtime = PodRuntimeProcess(control_plane.kubeconfig, tmp_path_factory.mktemp("pod-runtime"))
    runtime.start()
    yield runtime
    runtime.stop()


@pytest.fixture(scope="session")
def fleet(control_plane: ControlPlane, core_v1: Any, pod_runtime: PodRuntimeProcess) -> fleet_builders.Fleet:
    """The default heterogeneous GPU fleet, every node Ready (GPU nodes executed by `pod_runtime`)."""
    nodes = fleet_builders.default_fleet()
    names = fleet_builders.apply(core_v1, nodes)
    kube.wait_nodes_ready(core_v1, names, timeout=90)
    return fleet_builders.Fleet(tuple(nodes))


@pytest.fixture
def namespace(core_v1: Any) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount) for one test; deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core_v1.create_namespace({"metadata": {"name": name, "labels": {"atoll.dev/test": "true"}}})
    kube.wait_for(
        lambda: kube.exists(core_v1.read_namespaced_service_account, "default", name),
        timeout=60,
        what=f"the default ServiceAccount of namespace {name}",
    )
    yield name
    core_v1.delete_namespace(name)


# --- images --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def operator_image() -> str:
    """The operator image built from the current sources (cached by its inputs: a warm run builds
    nothing), in Atoll's local container storage, where the pod runtime runs it from."""
    from images.build import ensure
    from images.engine import EngineError

    try:
        return ensure("operator")
    except EngineError as error:
        message = f"cannot build the operator image: {error}"
        if binaries.in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


# --- autoscaler ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def karpenter(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Karpenter]:
    """Karpenter's kwok provider against the session's control plane for the tests of one module:
    its CRDs applied, GPU instance types of every fleet product. Afterwards every NodePool is
    deleted, Karpenter removes the nodes it made, and it stops."""
    autoscaler: Karpenter = _prerequisite(
        lambda: Karpenter(control_plane.kubeconfig, tmp_path_factory.mktemp("karpenter"))
    )
    karpenter_env.apply_crds(control_plane.kubectl)
    try:
        autoscaler.start()
        yield autoscaler
    finally:
        left = karpenter_env.remove_node_pools(control_plane.kubectl)
        autoscaler.stop()
        karpenter_env.force_remove_nodes(control_plane.kubectl)
        assert not left, f"Karpenter did not remove {left}; its log ends:\n{autoscaler.log_tail()}"
