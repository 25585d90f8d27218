"""The video quickstart through the real operator: a scaled-down video DDMRun (Wan experts on moving
digits) runs to Succeeded on the kwok GPU fleet with MinIO as its store; the planner places the video
experts from their clip workload; the model in MinIO loads through diffusers and samples clips."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.env import fleet as fleet_builders
from tests.env.cluster import ControlPlane
from tests.env.minio import MinioServer
from tests.env.runtime_process import PodRuntimeProcess
from tests.operator.conftest import SECRET, OperatorProcess, apply, phase, pods, wait_run

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.e2e]

VIDEO_QUICKSTART = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "video-quickstart.yaml"


def video_quickstart_small() -> dict[str, Any]:
    """manifests/examples/video-quickstart.yaml scaled down to what 2 shared CPU cores train in a minute."""
    run: dict[str, Any] = next(
        d for d in yaml.safe_load_all(VIDEO_QUICKSTART.read_text()) if d and d["kind"] == "DDMRun"
    )
    run = copy.deepcopy(run)
    spec = run["spec"]
    spec["dataset"].update(maxExamples=96)
    spec["partition"].update(clusters=2, fineClusters=8, sampleSize=96, iterations=5)
    spec["expert"].update(steps=16, globalBatchSize=8, checkpointEvery=8)
    spec["router"].update(steps=10, globalBatchSize=8, checkpointEvery=5)
    spec["sampling"].update(steps=3)
    spec["evaluation"].update(samples=8, strategies=["top-1", "top-2"])
    spec["failurePolicy"] = {"maxRestarts": 2, "backoffSeconds": 1, "maxBackoffSeconds": 4}
    return run


def test_a_video_run_succeeds_through_the_operator(  # noqa: PLR0917 - fixtures
    control_plane: ControlPlane,
    atoll_crds: ControlPlane,
    fleet: fleet_builders.Fleet,
    pod_runtime: PodRuntimeProcess,
    minio: MinioServer,
    namespace: str,
    store_secret: str,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    run = video_quickstart_small()
    name = run["metadata"]["name"]
    start_operator("--default-store", store_secret, "--default-store-secret", SECRET, "--max-gpus-per-pod", "1")
    apply(control_plane, namespace, run)
    done = wait_run(control_plane, namespace, name, lambda r: phase(r) == "Succeeded", timeout=600, what="Succeeded")
    assert done["status"]["phase"] == "Succeeded"

    # The planner placed each video expert on a GPU product it chose from the clip workload.
    products = {p.product for p in fleet_builders.PRODUCTS}
    expert_pods = [
        p for p in pods(control_plane, namespace, name) if p["metadata"]["labels"]["atoll.dev/stage"] == "expert"
    ]
    assert {p["metadata"]["labels"].get("atoll.dev/expert") for p in expert_pods} == {"0", "1"}
    for pod in expert_pods:
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        node = control_plane.kubectl_json("get", "node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] in products

    # The model in MinIO: diffusers' own loader, clips out.
    from diffusers import DiffusionPipeline

    from atoll.store.s3 import S3Store
    from atoll.trainer.pipeline import DDMPipeline
    from atoll.trainer.stages.assemble import open_model

    store = S3Store.from_uri(f"{store_secret}/{namespace}/{name}", env=minio.env())
    metrics = store.get_json("eval/metrics.json")
    assert metrics["video"] is True
    assert metrics["strategies"]["top-2"]["grid"].endswith(".gif")
    with open_model(store) as directory:
        pipeline = DiffusionPipeline.from_pretrained(directory, trust_remote_code=True)
    assert isinstance(pipeline, DDMPipeline)
    assert pipeline.num_experts == 2
    assert pipeline.latent_shape == (3, 4, 16, 16)
    out = pipeline("a 3 moving left", strategy="top-2", num_inference_steps=3, generator=0)
    assert len(out.frames[0]) == 4
    assert out.frames[0][0].size == (16, 16)
