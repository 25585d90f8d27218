"""Decoding what the API server sends the operator: the standard library's json vs orjson.

    .venv/bin/python bench/api_json.py [--rounds 5]

Two documents the operator decodes by the thousand in a burst: one watch event of an expert
pod (its spec, status and managed fields as kwok leaves them, about 6.7 kB) and a list of a
run's 64 such pods (what the observe step reads while the pod watch trails, about 430 kB).
Each is decoded with `json.loads` (what kopf and the kubernetes client use) and with
`orjson.loads` (atoll.operator.api_json), interleaved, best of `--rounds` rounds; it prints
the time per document and the ratio, and checks that both give the same objects.
"""

from __future__ import annotations

import argparse
import json
import platform
import timeit
from typing import Any

import orjson

SHM = "/dev/shm"


def expert_pod() -> dict[str, Any]:
    """An expert pod as a watch event carries it once kwok ran it."""
    env = [{"name": f"ATOLL_VAR_{i}", "value": f"value-{i}-" + "x" * 20} for i in range(14)]
    sizes = {"nvidia.com/gpu": "1", "cpu": "4", "memory": "16Gi"}
    host = {"key": "kubernetes.io/hostname", "operator": "In", "values": ["kwok-gpu-0123"]}
    conditions = ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
    entry: dict[str, Any] = {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}
    spec_fields = {
        "f:metadata": {
            "f:annotations": {f"f:atoll.dev/a{i}": {} for i in range(6)},
            "f:labels": {f"f:atoll.dev/l{i}": {} for i in range(6)},
            "f:ownerReferences": {'k:{"uid":"abc"}': {}},
        },
        "f:spec": {
            "f:containers": {
                'k:{"name":"stage"}': {
                    ".": {}, "f:args": {}, "f:command": {}, "f:image": {},
                    "f:env": {f'k:{{"name":"{e["name"]}"}}': {".": {}, "f:name": {}, "f:value": {}} for e in env},
                    "f:resources": {"f:limits": {"f:nvidia.com/gpu": {}}},
                }
            },
            "f:affinity": {}, "f:tolerations": {},
        },
    }  # fmt: skip
    status_fields = {
        "f:status": {
            "f:conditions": {f'k:{{"type":"{t}"}}': entry for t in conditions},
            "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:podIP": {}, "f:startTime": {},
        }
    }  # fmt: skip
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": "bench-03-expert-17-a1", "namespace": "bench", "uid": "0d7c2b0e-4a55-4cfb-9d4e-2d5a1c0b1f11",
            "resourceVersion": "123456", "creationTimestamp": "2026-12-03T08:00:00Z",
            "labels": {f"atoll.dev/l{i}": f"v{i}" for i in range(6)},
            "annotations": {f"atoll.dev/a{i}": f"value{i}" for i in range(6)},
            "ownerReferences": [{"apiVersion": "atoll.dev/v1alpha1", "kind": "DDMRun", "name": "bench-03",
                                 "uid": "abc", "controller": True, "blockOwnerDeletion": True}],
            "managedFields": [
                {"manager": "atoll", "operation": "Update", "apiVersion": "v1", "time": "2026-12-03T08:00:00Z",
                 "fieldsType": "FieldsV1", "fieldsV1": spec_fields},
                {"manager": "kwok", "operation": "Update", "apiVersion": "v1", "time": "2026-12-03T08:00:01Z",
                 "fieldsType": "FieldsV1", "subresource": "status", "fieldsV1": status_fields},
            ],
        },
        "spec": {
            "containers": [{
                "name": "stage", "image": "atoll/trainer:0.1.0", "command": ["python", "-m", "atoll.trainer"],
                "args": ["expert", "--run", "bench-03", "--expert", "17", "--attempt", "1"],
                "env": env,
                "resources": {"limits": sizes, "requests": sizes},
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}, {"name": "dshm", "mountPath": SHM}],
                "terminationMessagePolicy": "FallbackToLogsOnError", "imagePullPolicy": "IfNotPresent",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }],
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 60, "nodeName": "kwok-gpu-0123",
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [host]}
            ]}}},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}] + [
                {"key": f"node.kubernetes.io/{k}", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 300}
                for k in ("not-ready", "unreachable")
            ],
            "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        },
        "status": {
            "phase": "Running", "hostIP": "10.0.0.1", "podIP": "10.0.0.17", "startTime": "2026-12-03T08:00:01Z",
            "conditions": [{"type": t, "status": "True", "lastProbeTime": None,
                            "lastTransitionTime": "2026-12-03T08:00:01Z"} for t in conditions],
            "containerStatuses": [{"name": "stage", "state": {"running": {"startedAt": "2026-12-03T08:00:01Z"}},
                                   "lastState": {}, "ready": True, "restartCount": 0, "started": True,
                                   "image": "atoll/trainer:0.1.0", "imageID": ""}],
            "qosClass": "Guaranteed",
        },
    }  # fmt: skip


def best_seconds(decode: Any, document: bytes, number: int, rounds: int) -> float:
    return min(timeit.repeat(lambda: decode(document), number=number, repeat=rounds)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pod = expert_pod()
    documents = {
        "watch event of one pod": (json.dumps({"type": "MODIFIED", "object": pod}).encode(), 2000),
        "list of a run's 64 pods": (json.dumps({"kind": "PodList", "items": [pod] * 64}).encode(), 40),
    }
    print(f"python {platform.python_version()}, orjson {orjson.__version__}, {platform.machine()}")
    for what, (document, number) in documents.items():
        assert orjson.loads(document) == json.loads(document)
        stdlib = best_seconds(lambda d: json.loads(d.decode("utf-8")), document, number, args.rounds)
        fast = best_seconds(orjson.loads, document, number, args.rounds)
        print(
            f"{what} ({len(document) / 1000:.1f} kB): json {stdlib * 1e6:.0f} µs, orjson {fast * 1e6:.0f} µs"
            f" ({stdlib / fast:.2f}× faster)"
        )


if __name__ == "__main__":
    main()
