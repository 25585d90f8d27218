"""CLIP text–video similarity, computed through the real transformers loading path on a tiny random-init CLIP.

A random CLIP ranks nothing, so the scorer's arithmetic is checked against a direct
computation with the same model (one frame at a time, through CLIPModel's own forward), and
the ordering property on constructed embeddings; absent weights are reported with where the
lookup looked, and nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atoll.api.weights import WeightsSpec
from atoll.trainer.data import MovingDigitsDataset
from atoll.trainer.evaluation.clipsim import clip_similarity, load_clip_scorer
from atoll.trainer.evaluation.video import clip_frames


@pytest.fixture(scope="module")
def clips() -> tuple[torch.Tensor, list[str]]:
    dataset = MovingDigitsDataset(16, 4, 4.0, seed=0, size=6)
    return dataset.examples(range(6)), [dataset.caption(i) for i in range(6)]


def test_clipsim_is_the_mean_over_clips_and_frames_of_caption_frame_cosines(
    weights_dir: Path, clips: tuple[torch.Tensor, list[str]]
) -> None:
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    scorer, reason = load_clip_scorer()
    assert scorer is not None, reason
    assert scorer.weights == str(weights_dir / "clip-vitl14")
    videos, captions = clips
    value = scorer(videos, captions)

    directory = weights_dir / "clip-vitl14"
    model = CLIPModel.from_pretrained(directory, local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(directory, local_files_only=True)
    processor = CLIPImageProcessorPil.from_pretrained(directory, local_files_only=True)
    per_clip = []
    with torch.inference_mode():
        for video, caption in zip(videos, captions, strict=True):
            text = tokenizer([caption], truncation=True, max_length=12, return_tensors="pt")
            cosines = []
            for frame in clip_frames(video):
                out = model(**text, pixel_values=processor(images=[frame], return_tensors="pt")["pixel_values"])
                cosines.append(float((out.text_embeds * out.image_embeds).sum()))  # both unit vectors
            per_clip.append(sum(cosines) / len(cosines))
    assert value == pytest.approx(sum(per_clip) / len(per_clip), abs=1e-5)

    # Images are one-frame clips; clips without a caption are left out.
    assert scorer(videos[:, :, 0], captions) == pytest.approx(scorer(videos[:, :, :1], captions), abs=1e-6)
    assert scorer(videos, ["", *captions[1:]]) == pytest.approx(scorer(videos[1:], captions[1:]), abs=1e-6)
    assert scorer(videos[:2], ["", " "]) is None
    with pytest.raises(ValueError, match="6 clips but 5 captions"):
        scorer(videos, captions[:5])


def test_a_clip_scores_higher_with_its_own_caption_than_with_another() -> None:
    text = torch.eye(4, 8) * 3.0  # four orthogonal captions, not unit length
    frames = torch.stack([text * s for s in (0.5, 1.0, 2.0)], dim=1)  # every frame along its caption
    own = clip_similarity(text, frames)
    other = clip_similarity(text.roll(1, dims=0), frames)
    assert own.tolist() == pytest.approx([1.0] * 4)
    assert other.tolist() == pytest.approx([0.0] * 4)
    # Averaged over frames: half the frames showing another caption halve the score.
    mixed = torch.stack([text, text.roll(1, dims=0)], dim=1)
    assert clip_similarity(text, mixed).tolist() == pytest.approx([0.5] * 4)
    with pytest.raises(ValueError, match=r"need text \[n, d\] and frames \[n, F, d\]"):
        clip_similarity(text, frames[:3])


def test_absent_weights_make_it_unavailable_naming_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATOLL_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    scorer, reason = load_clip_scorer()
    assert scorer is None
    assert f"{tmp_path}/clip-vitl14 (absent)" in reason
    assert "openai/clip-vit-large-patch14" in reason
    assert "Hugging Face cache" in reason
    assert "clipSimilarity" in reason

    scorer, reason = load_clip_scorer(WeightsSpec(source="volume", path="/nowhere"))
    assert scorer is None
    assert "/nowhere/clip-vitl14 does not exist" in reason
    scorer, reason = load_clip_scorer(WeightsSpec(source="hub", path=str(tmp_path / "hub")))
    assert scorer is None  # offline, and a metric never downloads even where the spec allows the hub
    assert "could not be loaded from the Hugging Face hub" in reason


def test_spec_weights_none_still_finds_the_local_copy(weights_dir: Path) -> None:
    scorer, reason = load_clip_scorer(WeightsSpec(source="none"))
    assert scorer is not None, reason
    scorer, reason = load_clip_scorer(WeightsSpec(source="volume", path=str(weights_dir)))
    assert scorer is not None, reason
