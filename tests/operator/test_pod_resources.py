"""Stage pods a real cluster keeps: CPU and memory requests equal to limits (Guaranteed QoS)
from the preset, the GPU count and the spec's overrides; threads from the CPU limit; a
memory-backed /dev/shm; a size-limited scratch volume; a read-only root filesystem with every
cache on scratch; a grace period long enough to upload a checkpoint; spec.weights as env."""

from __future__ import annotations

from typing import Any

from atoll.api.spec import DDMRunSpec
from atoll.operator.placement import Assignment
from atoll.operator.pod_resources import pod_resources
from atoll.operator.pods import Owner, StageAttempt, build_pod
from atoll.operator.settings import OperatorSettings
from atoll.stages import StageJob

OWNER = Owner(api_version="atoll.dev/v1alpha1", kind="DDMRun", name="r", uid="u-1")


def spec(**fields: Any) -> DDMRunSpec:
    body: dict[str, Any] = {
        "dataset": {"uri": "builtin://digits"},
        "partition": {"clusters": 4},
        "expert": {"preset": "dit-xl/2"},
        "router": {"preset": "dit-b/2"},
    }
    body.update(fields)
    return DDMRunSpec.model_validate(body)


def pod(run: DDMRunSpec, job: StageJob, gpus: int) -> dict[str, Any]:
    plan = None
    if gpus:
        plan = Assignment(
            expert=job.expert or 0,
            node="n",
            gpu_product="NVIDIA-H100-80GB-HBM3",
            gpus=gpus,
            micro_batch=8,
            grad_accum=1,
        )
    item = StageAttempt(
        run="r",
        namespace="ns",
        job=job,
        attempt=1,
        spec_uri="s3://atoll/runs/ns/r/spec.json",
        store_uri="s3://atoll/runs/ns/r",
        store_secret="minio",
        owner=OWNER,
        assignment=plan,
        pinned=job.stage == "expert",
    )
    return build_pod(item, run, OperatorSettings())


def qos(manifest: dict[str, Any]) -> str:
    """The QoS class Kubernetes gives the pod (every container: requests equal to limits for cpu and memory)."""
    containers = manifest["spec"]["containers"]
    guaranteed = all(
        c.get("resources", {}).get("limits", {}).get(r)
        and c["resources"]["requests"].get(r, c["resources"]["limits"][r]) == c["resources"]["limits"][r]
        for c in containers
        for r in ("cpu", "memory")
    )
    if guaranteed:
        return "Guaranteed"
    return "Burstable" if any(c.get("resources", {}).get("requests") for c in containers) else "BestEffort"


def env(manifest: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in manifest["spec"]["containers"][0]["env"]}


def test_every_stage_pod_is_guaranteed_with_sizes_from_preset_and_gpus() -> None:
    run = spec()
    expert = pod(run, StageJob("expert", 0), 4)
    resources = expert["spec"]["containers"][0]["resources"]
    assert resources["requests"] == resources["limits"]
    assert resources["limits"] == {"cpu": "64000m", "memory": "393216Mi", "nvidia.com/gpu": "4"}
    assert qos(expert) == "Guaranteed"
    router = pod(run, StageJob("router"), 1)["spec"]["containers"][0]["resources"]["limits"]
    assert (router["cpu"], router["memory"]) == ("8000m", "49152Mi")
    for job in (StageJob("partition"), StageJob("assemble"), StageJob("evaluate")):
        assert qos(pod(run, job, 1 if job.stage != "assemble" else 0)) == "Guaranteed", job


def test_the_spec_overrides_cpu_and_memory_per_gpu() -> None:
    run = spec(placement={"cpuPerGpu": 2.5, "memoryPerGpuGiB": 10})
    limits = pod(run, StageJob("expert", 1), 2)["spec"]["containers"][0]["resources"]["limits"]
    assert (limits["cpu"], limits["memory"]) == ("5000m", "20480Mi")
    no_gpu = pod(run, StageJob("assemble"), 0)["spec"]["containers"][0]["resources"]["limits"]
    assert (no_gpu["cpu"], no_gpu["memory"]) == ("2500m", "10240Mi")


def test_threads_follow_the_cpu_limit_through_the_downward_api() -> None:
    variables = env(pod(spec(), StageJob("expert", 0), 2))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        ref = variables[name]["resourceFieldRef"]
        assert ref == {"containerName": "stage", "resource": "limits.cpu", "divisor": "1"}


def test_shm_scratch_and_a_read_only_root() -> None:
    manifest = pod(spec(), StageJob("expert", 0), 2)
    volumes = {v["name"]: v for v in manifest["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16384Mi"}
    assert volumes["scratch"]["emptyDir"]["sizeLimit"].endswith("Mi")
    container = manifest["spec"]["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/tmp": "scratch", "/dev/shm": "dshm"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    variables = env(manifest)
    for name in ("HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "ATOLL_WEIGHTS_CACHE"):
        assert variables[name].startswith("/tmp"), name
    tiny = pod(spec(expert={"preset": "tiny"}), StageJob("expert", 0), 1)
    shm = next(v for v in tiny["spec"]["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"]
    assert shm == "512Mi", "at most a quarter of the pod's memory"


def test_the_grace_period_covers_the_presets_checkpoint_upload_and_the_template_may_change_it() -> None:
    run = spec()
    big = pod(run, StageJob("expert", 0), 1)["spec"]["terminationGracePeriodSeconds"]
    small = pod(spec(expert={"preset": "tiny"}), StageJob("expert", 0), 1)["spec"]["terminationGracePeriodSeconds"]
    checkpoint = pod_resources(run, StageJob("expert", 0), 1)
    assert big == checkpoint.grace_seconds
    assert big > 200, "dit-xl/2: ~11 GB of checkpoint at 50 MiB/s"
    assert 60 <= small < big
    longer = pod(spec(template={"terminationGracePeriodSeconds": 900}), StageJob("expert", 0), 1)
    assert longer["spec"]["terminationGracePeriodSeconds"] == 900


def test_spec_weights_become_env_on_the_pods() -> None:
    volume = spec(weights={"source": "volume", "path": "/weights"})
    assert env(pod(volume, StageJob("partition"), 1))["ATOLL_WEIGHTS_DIR"] == "/weights"
    hub = spec(weights={"source": "hub", "path": "/hf-cache"})
    assert env(pod(hub, StageJob("partition"), 1))["HF_HOME"] == "/hf-cache"
    assert "ATOLL_WEIGHTS_DIR" not in env(pod(spec(), StageJob("partition"), 1))


def test_the_template_is_merged_onto_every_stage_pod() -> None:
    template = {"labels": {"team": "vision"}, "priorityClassName": "batch-high", "env": [{"name": "X", "value": "1"}]}
    run = spec(template=template)
    for job, gpus in ((StageJob("partition"), 1), (StageJob("expert", 0), 1), (StageJob("router"), 1),
                      (StageJob("assemble"), 0), (StageJob("evaluate"), 1)):  # fmt: skip
        manifest = pod(run, job, gpus)
        assert manifest["metadata"]["labels"]["team"] == "vision", job
        assert manifest["spec"]["priorityClassName"] == "batch-high", job
        assert env(manifest)["X"] == "1", job
