"""End to end: `atoll run FILE --local --store s3://…` runs every stage against MinIO; the
whole run lives in the bucket (nothing but logs on local disk) and a re-run is a no-op."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from atoll import layout
from atoll.store import CheckpointStore, open_store

pytestmark = [pytest.mark.minio, pytest.mark.e2e]

MANIFEST = """\
apiVersion: atoll.dev/v1alpha1
kind: DDMRun
metadata: {name: s3-e2e}
spec:
  dataset:   {uri: builtin://digits, resolution: 8}
  partition: {clusters: 2, features: pixels, seed: 0}
  expert:    {preset: tiny, steps: 8, globalBatchSize: 16, checkpointEvery: 4}
  router:    {preset: tiny, steps: 8, globalBatchSize: 16, checkpointEvery: 4}
  sampling:  {strategy: top-1, steps: 4, guidance: 1.0}
  evaluation: {samples: 8, strategies: [top-1]}
"""


def test_local_run_on_minio(minio_bucket: str, s3_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(MANIFEST)
    workdir = tmp_path / "work"
    argv = [sys.executable, "-m", "atoll", "run", str(tmp_path / "run.yaml"), "--local"]
    argv += ["--store", f"s3://{minio_bucket}/runs", "--workdir", str(workdir), "--jobs", "2"]
    env = {**os.environ, **s3_env, "COLUMNS": "200"}
    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1500, check=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    store = open_store(f"s3://{minio_bucket}/runs/s3-e2e")
    assert store.exists(layout.SPEC)
    assert store.exists(layout.PARTITION_STATS)
    assert store.list_objects(layout.cluster_data(0))
    for prefix in (layout.expert(0), layout.expert(1), layout.ROUTER):
        final = CheckpointStore(store, prefix, read_only=True).latest()  # verified: sizes and sha256
        assert final is not None, prefix
        assert final.step == 8
        assert final.metadata["final"] is True
    assert store.exists(f"{layout.MODEL}/model_index.json")
    assert store.get_json(f"{layout.EVAL}/metrics.json")
    # The run lives in the bucket: locally there are only the runtime's logs.
    assert {p.relative_to(workdir).parts[0] for p in workdir.rglob("*") if p.is_file()} == {"logs"}

    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "already done" in again.stdout
