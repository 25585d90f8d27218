"""Datasets: real digits, procedural shapes, image folders with sidecars, tar shards (local and s3://)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atoll.api.spec import DatasetSpec
from atoll.trainer.data import COLOURS, SHAPES, DatasetError, ShapesDataset, open_dataset


def _png(colour: tuple[int, int, int], size: int = 12) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_shard(path: Path, samples: list[tuple[str, tuple[int, int, int], str | None, int | None]]) -> None:
    """A WebDataset shard: key.png, key.txt (when a caption is given), key.cls (when a label is)."""
    with tarfile.open(path, "w") as tar:
        for key, colour, caption, label in samples:
            members = {"png": _png(colour)}
            if caption is not None:
                members["txt"] = caption.encode()
            if label is not None:
                members["cls"] = str(label).encode()
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_digits_are_the_real_scikit_learn_digits() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    dataset = open_dataset(DatasetSpec(uri="builtin://digits", resolution=8))
    assert len(dataset) == 1797
    assert dataset.class_names == tuple("0123456789")
    image = dataset.image(17)
    assert image.shape == (3, 8, 8)
    assert torch.equal(image[0], image[2])  # grey in all three channels
    torch.testing.assert_close(image[0], torch.from_numpy(digits.images[17]).float() / 8 - 1)
    assert dataset.label(17) == int(digits.target[17])
    assert dataset.caption(17) == f"a handwritten {digits.target[17]}"


def test_digits_upsampled_and_limited() -> None:
    dataset = open_dataset(DatasetSpec(uri="builtin://digits", resolution=32, max_examples=10))
    assert len(dataset) == 10
    batch = dataset.examples([0, 9])
    assert batch.shape == (2, 3, 32, 32)
    assert float(batch.min()) >= -1.0
    assert float(batch.max()) <= 1.0
    with pytest.raises(IndexError):
        dataset.example(10)


def test_shapes_are_deterministic_by_seed_and_match_their_factors() -> None:
    spec = DatasetSpec(uri="builtin://shapes", resolution=16, seed=3)
    a, b = open_dataset(spec), open_dataset(spec)
    other = open_dataset(DatasetSpec(uri="builtin://shapes", resolution=16, seed=4))
    assert len(a) == 4096
    assert isinstance(a, ShapesDataset)
    assert a.class_names == SHAPES
    for i in (0, 1, 4095):
        assert torch.equal(a.image(i), b.image(i))
        assert a.caption(i) == b.caption(i)
    assert [a.caption(i) for i in range(20)] != [other.caption(i) for i in range(20)]
    for i in range(20):
        f = a.factors(i)
        assert a.caption(i) == f"a {f.colour} {f.shape} on a {f.background} background"
        assert a.label(i) == SHAPES.index(f.shape)
        assert f.colour != f.background
        pixels = (a.image(i).permute(1, 2, 0).numpy() + 1) * 127.5
        corner = np.array(COLOURS[f.background], dtype=np.float32)
        np.testing.assert_allclose(pixels[0, 0], corner, atol=1.0)  # shapes never reach the corners
        centre = pixels[round(f.y * 16 - 0.5), round(f.x * 16 - 0.5)]
        if f.shape in ("circle", "square"):  # both cover their centre whatever the angle
            np.testing.assert_allclose(centre, np.array(COLOURS[f.colour], dtype=np.float32), atol=40.0)


def test_folder_with_caption_sidecars_and_class_subdirectories(tmp_path: Path) -> None:
    for cls, colour in (("cats", (200, 0, 0)), ("dogs", (0, 0, 200))):
        (tmp_path / cls).mkdir()
        for j in range(2):
            (tmp_path / cls / f"{j}.png").write_bytes(_png(colour, size=20))
            if (cls, j) != ("dogs", 1):
                (tmp_path / cls / f"{j}.txt").write_text(f"a photo of {cls} {j}\n")
    dataset = open_dataset(DatasetSpec(uri=str(tmp_path), resolution=8))
    assert len(dataset) == 4
    assert dataset.class_names == ("cats", "dogs")
    assert [dataset.label(i) for i in range(4)] == [0, 0, 1, 1]
    assert [dataset.caption(i) for i in range(4)] == ["a photo of cats 0", "a photo of cats 1", "a photo of dogs 0", ""]
    image = dataset.image(3)
    assert image.shape == (3, 8, 8)
    torch.testing.assert_close(image[:, 4, 4], torch.tensor([-1.0, -1.0, 200 / 127.5 - 1]))


def test_flat_folder_is_unlabelled_and_file_uri_works(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(_png((0, 255, 0)))  # content sniffed, not the extension
    (tmp_path / "a.txt").write_text("green")
    (tmp_path / "notes.md").write_text("ignored")
    dataset = open_dataset(DatasetSpec(uri=f"file://{tmp_path}", resolution=8))
    assert len(dataset) == 1
    assert dataset.label(0) == -1
    assert dataset.class_names == ()
    assert dataset.caption(0) == "green"


def test_tar_shards_in_a_directory_and_a_single_shard(tmp_path: Path) -> None:
    _write_shard(tmp_path / "shard-000001.tar", [("c", (0, 0, 255), "blue", 2), ("d", (255, 255, 255), None, 0)])
    _write_shard(tmp_path / "shard-000000.tar", [("a", (255, 0, 0), "red", 0), ("b", (0, 255, 0), "green", 1)])
    dataset = open_dataset(DatasetSpec(uri=str(tmp_path), resolution=8))
    assert len(dataset) == 4
    assert [dataset.caption(i) for i in range(4)] == ["red", "green", "blue", ""]
    assert [dataset.label(i) for i in range(4)] == [0, 1, 2, 0]
    assert dataset.class_names == ("0", "1", "2")
    torch.testing.assert_close(dataset.image(1)[:, 0, 0], torch.tensor([-1.0, 1.0, -1.0]))
    single = open_dataset(DatasetSpec(uri=str(tmp_path / "shard-000001.tar"), resolution=8))
    assert [single.caption(i) for i in range(len(single))] == ["blue", ""]


def test_bad_uris_and_bad_data_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset\.uri .*does not exist"):
        open_dataset(DatasetSpec(uri=str(tmp_path / "nowhere"), resolution=8))
    with pytest.raises(DatasetError, match=r"dataset\.uri .*does not exist or is empty"):
        open_dataset(DatasetSpec(uri=str(tmp_path), resolution=8))
    (tmp_path / "readme.md").write_text("no images")
    with pytest.raises(DatasetError, match=r"dataset\.uri .*no images"):
        open_dataset(DatasetSpec(uri=str(tmp_path), resolution=8))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    dataset = open_dataset(DatasetSpec(uri=str(tmp_path), resolution=8))
    with pytest.raises(DatasetError, match=r"cannot decode image .*broken\.png"):
        dataset.image(0)
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_shard(shards / "x.tar", [("a", (1, 2, 3), "x", None)])
    (shards / "x.tar").write_bytes((shards / "x.tar").read_bytes()[:700])  # torn shard
    with pytest.raises(DatasetError, match=r"x\.tar"):
        open_dataset(DatasetSpec(uri=str(shards), resolution=8))


def test_tar_shards_and_folders_from_s3(
    minio_client: object, minio_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    _write_shard(tmp_path / "s0.tar", [("a", (255, 0, 0), "red", 3), ("b", (0, 255, 0), "green", 1)])
    minio_client.fput_object(minio_bucket, "sets/shards/s0.tar", str(tmp_path / "s0.tar"))  # type: ignore[attr-defined]
    for key, data in (("sets/folder/x.png", _png((0, 0, 255))), ("sets/folder/x.txt", b"blue")):
        minio_client.put_object(minio_bucket, key, io.BytesIO(data), len(data))  # type: ignore[attr-defined]
    dataset = open_dataset(DatasetSpec(uri=f"s3://{minio_bucket}/sets/shards", resolution=8))
    assert [dataset.caption(i) for i in range(2)] == ["red", "green"]
    assert dataset.label(0) == 3
    torch.testing.assert_close(dataset.image(0)[:, 1, 1], torch.tensor([1.0, -1.0, -1.0]))
    folder = open_dataset(DatasetSpec(uri=f"s3://{minio_bucket}/sets/folder", resolution=8))
    assert folder.caption(0) == "blue"
    torch.testing.assert_close(folder.image(0)[:, 0, 0], torch.tensor([-1.0, -1.0, 1.0]))
    with pytest.raises(DatasetError, match=r"dataset\.uri"):
        open_dataset(DatasetSpec(uri=f"s3://{minio_bucket}/sets/missing", resolution=8))
