"""Real FVD's feature path, run for real on a tiny random-init stand-in for I3D's TorchScript file.

The published `i3d_torchscript.pt` cannot be downloaded here, so a TorchScript module with the
same call (clips [n, 3, T ≥ 9, 224, 224] in [-1, 1], `rescale`, `resize`, `return_features`
→ [n, 400]) is saved to a file and found the way the real one is: through $ATOLL_I3D_WEIGHTS
or $ATOLL_WEIGHTS_DIR/i3d_torchscript.pt. Everything after `torch.jit.load` is the real code.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from atoll.trainer.data import MovingDigitsDataset
from atoll.trainer.encoders import WEIGHTS_ENV
from atoll.trainer.evaluation.domain import RealData, build_domain_metric
from atoll.trainer.evaluation.i3d import I3D_ENV, I3D_FILE, I3D_MIN_FRAMES, I3D_SIDE, I3DFeatures, find_i3d


class TinyI3D(nn.Module):
    """I3D's interface at a toy size: refuses clips that are not 224 × 224 with at least 9 frames."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 8, kernel_size=(3, 8, 8), stride=(1, 8, 8))
        self.head = nn.Linear(8 * 4, 400)

    def forward(
        self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False
    ) -> torch.Tensor:
        if x.shape[3] != 224 or x.shape[4] != 224 or x.shape[2] < 9:
            raise ValueError("I3D takes clips of at least 9 frames at 224 x 224")
        if rescale or resize or not return_features:
            raise ValueError("atoll asks for features of clips already in [-1, 1] at 224 x 224")
        maps = torch.relu(self.conv(x))  # [n, 8, T - 2, 28, 28]
        pooled = nn.functional.adaptive_avg_pool3d(maps, (1, 2, 2)).flatten(1)
        logits: torch.Tensor = self.head(pooled)
        return logits


@pytest.fixture
def i3d_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / I3D_FILE
    with warnings.catch_warnings():  # torch.jit is deprecated, but it is the format the real file is in
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(TinyI3D()), str(path))
    return path


def test_i3d_is_found_where_the_docs_say_and_reported_missing_otherwise(
    i3d_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(I3D_ENV, raising=False)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    path, reason = find_i3d()
    assert path is None
    assert "i3d_torchscript.pt" in reason
    assert I3D_ENV in reason

    monkeypatch.setenv(WEIGHTS_ENV, str(i3d_file.parent))
    assert find_i3d() == (i3d_file, "")
    monkeypatch.setenv(WEIGHTS_ENV, "/nonexistent")
    monkeypatch.setenv(I3D_ENV, str(i3d_file))
    assert find_i3d() == (i3d_file, "")


@pytest.mark.usefixtures("_one_torch_thread")
def test_fvd_in_i3d_features_separates_real_clips_from_noise(i3d_file: Path) -> None:
    features = I3DFeatures(i3d_file)
    dataset = MovingDigitsDataset(16, 4, 4.0, seed=0, size=160)
    indices = list(range(len(dataset)))
    clips = dataset.examples(indices)
    out = features(clips[:3], batch=2)  # 4 frames at 16 px: repeated to ≥ 9 frames, resized to 224
    assert out.shape == (3, 400)
    assert clips.shape[2] < I3D_MIN_FRAMES
    assert clips.shape[3] < I3D_SIDE

    real = RealData(
        images=clips,
        labels=torch.tensor([dataset.label(i) for i in indices]),
        label_kind="class",
        text=torch.zeros(len(indices), 1, 1),
        text_mask=torch.ones(len(indices), 1, dtype=torch.bool),
        class_names=dataset.class_names,
        factors=dataset.label_factors,
    )
    metric = build_domain_metric(real, samples=64, seed=0, classifier_steps=5, inception=features)
    floor = metric.fid(real.images[metric.sample_rows])
    noise = metric.fid(torch.rand(64, *clips.shape[1:]) * 2 - 1)
    assert floor is not None
    assert noise is not None
    assert noise > 3 * floor, (floor, noise)
