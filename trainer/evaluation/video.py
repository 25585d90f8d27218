"""Clips for people and for metrics: animated GIF / MP4 files, grids of clips, temporal consistency.

Clips are tensors [n, 3, F, R, R] in [-1, 1] (the datasets' layout). Writing video files
and measuring frame-to-frame change only: no models here.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch

from atoll.trainer.evaluation.grid import grid_png, tensor_to_images

GIF_MIN_FRAME_MS = 20
"""Browsers and Pillow round GIF frame durations below 20 ms up; keep at least that."""


def clip_frames(clip: torch.Tensor) -> list[PIL.Image.Image]:
    """One clip [3, F, R, R] in [-1, 1] → its F frames as RGB images."""
    return tensor_to_images(clip.transpose(0, 1))


def gif_bytes(frames: Sequence[PIL.Image.Image], fps: float) -> bytes:
    """An animated GIF that loops, one image per frame at `fps`."""
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    duration = max(GIF_MIN_FRAME_MS, round(1000 / fps))
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=list(frames[1:]), duration=duration, loop=0)
    return out.getvalue()


def mp4_bytes(frames: Sequence[PIL.Image.Image], fps: float) -> bytes:
    """An H.264 MP4 (MPEG-4 Part 2 where libx264 is missing) of the frames, through PyAV."""
    import av

    out = io.BytesIO()
    width, height = frames[0].size
    with av.open(out, mode="w", format="mp4") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream: Any = container.add_stream(codec, rate=round(fps))
        # yuv420p halves the chroma: sides must be even.
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        for image in frames:
            padded = PIL.Image.new("RGB", (stream.width, stream.height))
            padded.paste(image.convert("RGB"))
            for packet in stream.encode(av.VideoFrame.from_image(padded)):  # type: ignore[no-untyped-call]
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def clip_grid(clips: torch.Tensor, order: list[int], columns: int) -> list[PIL.Image.Image]:
    """The grid of clips[order] (−1 entries blank), one grid image per frame: an animation of the grid."""
    per_clip = [clip_frames(clip) for clip in clips]
    return [grid_png([frames[k] for frames in per_clip], order, columns) for k in range(clips.shape[2])]


def temporal_consistency(clips: torch.Tensor) -> float:
    """1 − the mean absolute change between consecutive frames, in units of the [-1, 1] range's width.

    1 is a still clip; a clip that flickers scores lower than one that moves smoothly.
    Compare a model's value with the real clips': both too high (frozen) and too low
    (flicker) are wrong.
    """
    if clips.ndim != 5 or clips.shape[2] < 2:
        raise ValueError(f"temporal consistency needs clips [n, 3, F ≥ 2, R, R], got {tuple(clips.shape)}")
    change = (clips[:, :, 1:] - clips[:, :, :-1]).abs().mean()
    return float(1.0 - change / 2.0)


def shuffle_frames(clips: torch.Tensor, seed: int) -> torch.Tensor:
    """The clips with their frames in a random order (one permutation per clip): same frames, no motion."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty_like(clips)
    for i in range(clips.shape[0]):
        out[i] = clips[i][:, torch.randperm(clips.shape[2], generator=generator)]
    return out
