"""Video datasets: the procedural built-ins (deterministic, captions that say what the pixels do) and
real video files (MP4 and GIF folders, tar shards) decoded with PyAV, sampled at dataset.fps."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from atoll.api.errors import SpecError
from atoll.api.load import load_spec_json
from atoll.api.spec import DatasetSpec
from atoll.trainer.data import DatasetError, MovingDigitsDataset, MovingShapesDataset, open_dataset
from tests.trainer.data.videos import gif_bytes, mp4_bytes, square_frames


def _centroids(clip: torch.Tensor, background: float) -> torch.Tensor:
    """Per frame, the (x, y) centre of mass of the pixels brighter than the background: [F, 2]."""
    weight = (clip.mean(0) - background).clamp_min(0)  # [F, H, W]
    ys, xs = torch.meshgrid(torch.arange(weight.shape[1]), torch.arange(weight.shape[2]), indexing="ij")
    total = weight.sum((1, 2)).clamp_min(1e-6)
    return torch.stack([(weight * xs).sum((1, 2)) / total, (weight * ys).sum((1, 2)) / total], dim=1)


def _area(clip: torch.Tensor, background: float) -> torch.Tensor:
    """Per frame, how many pixels differ from the background: [F]."""
    return ((clip - background).abs().amax(0) > 0.3).float().sum((1, 2))


AXIS = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}


def test_moving_digits_are_deterministic_by_seed() -> None:
    spec = DatasetSpec(uri="builtin://moving-digits", frames=6, fps=8, resolution=16, seed=3)
    a, b = open_dataset(spec), open_dataset(spec)
    other = open_dataset(spec.model_copy(update={"seed": 4}))
    assert isinstance(a, MovingDigitsDataset)
    assert len(a) == 4096
    assert a.example_shape == (3, 6, 16, 16)
    for i in (0, 1, 4095):
        assert torch.equal(a.clip(i), b.clip(i))
        assert a.caption(i) == b.caption(i)
    assert [a.caption(i) for i in range(20)] != [other.caption(i) for i in range(20)]
    batch = a.examples([0, 5])
    assert batch.shape == (2, 3, 6, 16, 16)
    assert float(batch.min()) >= -1.0
    assert float(batch.max()) <= 1.0


def test_moving_digit_captions_say_where_the_pixels_go() -> None:
    """The centre of mass travels along the captioned direction, and the label encodes digit and direction."""
    dataset = open_dataset(DatasetSpec(uri="builtin://moving-digits", frames=8, fps=8, resolution=32, seed=1))
    assert isinstance(dataset, MovingDigitsDataset)
    seen = set()
    for i in range(40):
        caption = dataset.caption(i)
        words = caption.split()
        digit, direction = int(words[1]), words[3]
        assert caption == f"a {digit} moving {direction}"
        assert dataset.label(i) == digit * 4 + ("left", "right", "up", "down").index(direction)
        assert dataset.class_names[dataset.label(i)] == f"{digit} moving {direction}"
        track = _centroids(dataset.clip(i), background=-1.0)
        axis, sign = AXIS[direction]
        along = float(track[-1, axis] - track[0, axis])
        across = float(track[-1, 1 - axis] - track[0, 1 - axis])
        assert sign * along > 2.0, (caption, track.tolist())
        assert abs(across) < 1.0, (caption, track.tolist())
        seen.add(direction)
    assert seen == {"left", "right", "up", "down"}


def test_bouncing_digits_turn_back() -> None:
    dataset = open_dataset(DatasetSpec(uri="builtin://bouncing-digits", frames=8, fps=8, resolution=32))
    bouncing = [i for i in range(40) if dataset.caption(i).endswith("and bouncing back")]
    assert 10 <= len(bouncing) <= 30  # about half
    for i in bouncing:
        axis, sign = AXIS[dataset.caption(i).split()[3]]
        track = _centroids(dataset.clip(i), background=-1.0)[:, axis] * sign
        turn = int(track.argmax())
        assert 0 < turn < 7, (dataset.caption(i), track.tolist())
        assert float(track[turn] - track[0]) > 0.5
        assert float(track[turn] - track[-1]) > 0.5


def test_moving_shape_captions_say_what_the_pixels_do() -> None:
    dataset = open_dataset(DatasetSpec(uri="builtin://moving-shapes", frames=8, fps=8, resolution=32, seed=2))
    assert isinstance(dataset, MovingShapesDataset)
    background = 15 / 127.5 - 1
    motions = set()
    for i in range(60):
        f = dataset.factors(i)
        assert dataset.caption(i) == f"a {f.colour} {f.shape} {f.motion}"
        clip = dataset.clip(i)
        track, area = _centroids(clip, background), _area(clip, background)
        if f.motion.startswith("moving"):
            axis, sign = AXIS[f.motion.split()[1]]
            assert sign * float(track[-1, axis] - track[0, axis]) > 2.0, (dataset.caption(i), track.tolist())
        elif f.motion == "growing":
            assert float(area[-1]) > 1.3 * float(area[0]), dataset.caption(i)
        elif f.motion == "shrinking":
            assert float(area[-1]) < 0.77 * float(area[0]), dataset.caption(i)
        else:  # rotating: stays put, keeps its size, yet its pixels change
            assert f.shape != "circle"
            assert float((track[-1] - track[0]).abs().max()) < 1.0
            assert abs(float(area[-1] - area[0])) < 0.25 * float(area[0])
            assert float((clip[:, -1] - clip[:, 0]).abs().amax()) > 1.0
        motions.add(f.motion)
    assert len(motions) == 7


def test_video_datasets_need_frames_and_image_datasets_refuse_them() -> None:
    with pytest.raises(SpecError, match=r"spec\.dataset\.frames"):
        load_spec_json('{"dataset": {"uri": "builtin://moving-digits"}}')
    with pytest.raises(SpecError, match=r"spec\.dataset\.frames"):
        load_spec_json('{"dataset": {"uri": "builtin://digits", "frames": 8}}')
    with pytest.raises(SpecError, match=r"spec\.dataset\.uri"):
        load_spec_json('{"dataset": {"uri": "builtin://moving-digits?bounce=1", "frames": 4}}')


def _left_edges(clip: torch.Tensor) -> list[int]:
    """Per frame, the first column where the white square is."""
    return [int((clip[0, k] > 0).any(0).nonzero()[0]) for k in range(clip.shape[1])]


@pytest.mark.parametrize("kind", ["mp4", "gif"])
def test_video_folder_samples_frames_at_fps(tmp_path: Path, kind: str) -> None:
    """16 frames at 16 fps, read as 4 frames at 4 fps: source frames 0, 4, 8, 12; class labels from sub-folders."""
    frames = square_frames(16)
    data = mp4_bytes(frames, 16) if kind == "mp4" else gif_bytes(frames, 16)
    for cls in ("left", "right"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / f"clip.{kind}").write_bytes(data)
    (tmp_path / "right" / "clip.txt").write_text("a square moving right\n")
    dataset = open_dataset(DatasetSpec(uri=str(tmp_path), resolution=32, frames=4, fps=4))
    assert len(dataset) == 2
    assert dataset.class_names == ("left", "right")
    assert [dataset.label(i) for i in range(2)] == [0, 1]
    assert [dataset.caption(i) for i in range(2)] == ["", "a square moving right"]
    clip = dataset.example(1)
    assert clip.shape == (3, 4, 32, 32)
    assert _left_edges(clip) == [0, 4, 8, 12]
    # Frames asked for past the end of the video hold its last frame.
    held = open_dataset(DatasetSpec(uri=str(tmp_path), resolution=16, frames=6, fps=4)).example(0)
    assert _left_edges(held) == [0, 2, 4, 6, 7, 7]


def test_video_tar_shards_and_errors(tmp_path: Path) -> None:
    mp4 = mp4_bytes(square_frames(8, step=2), 8)
    with tarfile.open(tmp_path / "shard-000000.tar", "w") as tar:
        for name, data in (("a.mp4", mp4), ("a.txt", b"a square moving right"), ("b.png", b"not wanted")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dataset = open_dataset(DatasetSpec(uri=str(tmp_path), resolution=32, frames=4, fps=8))
    assert len(dataset) == 1
    assert dataset.caption(0) == "a square moving right"
    assert _left_edges(dataset.example(0)) == [0, 2, 4, 6]

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(DatasetError, match=r"cannot decode video .*broken\.mp4"):
        open_dataset(DatasetSpec(uri=str(folder), resolution=16, frames=4)).example(0)
    with pytest.raises(DatasetError, match=r"no images .* but videos: set dataset\.frames"):
        open_dataset(DatasetSpec(uri=str(folder), resolution=16))
    images = tmp_path / "images"
    images.mkdir()
    (images / "x.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"no videos .* but images: set dataset\.frames to 1"):
        open_dataset(DatasetSpec(uri=str(images), resolution=16, frames=4))
