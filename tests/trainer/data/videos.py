"""Writers of small real video files for the tests: MP4 through PyAV, animated GIF through Pillow."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image


def square_frames(count: int, side: int = 32, square: int = 8, step: int = 1) -> list[np.ndarray]:
    """RGB frames [side, side, 3] uint8: a white square on black whose left edge is at k·step in frame k."""
    frames = []
    for k in range(count):
        frame = np.zeros((side, side, 3), dtype=np.uint8)
        left = k * step
        frame[side // 2 - square // 2 : side // 2 + square // 2, left : left + square] = 255
        frames.append(frame)
    return frames


def mp4_bytes(frames: Sequence[np.ndarray], fps: int) -> bytes:
    """An H.264 MP4 of the frames (near-lossless: crf 0 where libx264 exists, else high-quality MPEG-4)."""
    import av

    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv444p" if codec == "libx264" else "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "0"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def gif_bytes(frames: Sequence[np.ndarray], fps: int) -> bytes:
    """An animated GIF of the frames at `fps` (Pillow stores durations in milliseconds)."""
    images = [Image.fromarray(f) for f in frames]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return out.getvalue()
