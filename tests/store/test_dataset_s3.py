"""Dataset tar shards in MinIO are read through the S3 store: a shard large enough to be a
multipart upload round-trips through `open_dataset` (the store's streamed, resumable reads)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atoll.api.spec import DatasetSpec
from atoll.store import open_store
from atoll.store.s3 import S3Store
from atoll.trainer.data import open_dataset

pytestmark = pytest.mark.minio


def noise_png(seed: int, side: int = 1024) -> bytes:
    """An incompressible PNG (~3 MB), so a handful make a multipart-sized shard."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=0)
    return out.getvalue()


def test_multipart_tar_shard_from_s3(minio_bucket: str, s3_env: dict[str, str], tmp_path: Path) -> None:
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(7):
            for ext, data in ((f"{i:04d}.png", noise_png(i)), (f"{i:04d}.txt", f"noise {i}".encode())):
                info = tarfile.TarInfo(ext)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    datasets = open_store(f"s3://{minio_bucket}/datasets")
    assert isinstance(datasets, S3Store)
    assert shard.stat().st_size > datasets.part_size  # uploaded in several parts
    datasets.put_file("noise/shard-000000.tar", shard)

    dataset = open_dataset(DatasetSpec(uri=f"s3://{minio_bucket}/datasets/noise", resolution=8))
    assert len(dataset) == 7
    assert [dataset.caption(i) for i in range(7)] == [f"noise {i}" for i in range(7)]
    image = dataset.image(6)
    assert tuple(image.shape) == (3, 8, 8)
    assert float(image.min()) >= -1.0
    assert float(image.max()) <= 1.0
