"""Video clips: the dataset interface for clips and decoding video files into clips with PyAV.

A clip is F frames sampled at `fps` from the start of a video, each frame centre-cropped
to a square and resized to R×R like an image, stacked as [3, F, R, R] in [-1, 1]. A video
shorter than F / fps holds its last frame (and says so). Decoding only: nothing here
writes video files or reads anything but the bytes it is given.
"""

from __future__ import annotations

import io
from abc import abstractmethod
from pathlib import PurePosixPath

import torch

from atoll.log import get_logger
from atoll.trainer.data.base import Dataset, DatasetError, pil_to_tensor

log = get_logger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".mov", ".mkv", ".avi")


class VideoDataset(Dataset):
    """Clips of `frames` frames at `fps`, with captions and optional class labels, in a fixed order."""

    fps: float
    """Frames per second the clips are sampled at."""

    @abstractmethod
    def clip(self, i: int) -> torch.Tensor:
        """Example i as float32 [3, F, R, R] in [-1, 1]."""

    def example(self, i: int) -> torch.Tensor:
        return self.clip(i)


def is_video_key(key: str) -> bool:
    """Whether a key names a video file (not hidden)."""
    name = PurePosixPath(key).name
    return not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS)


def decode_clip(data: bytes, *, frames: int, fps: float, resolution: int, where: str) -> torch.Tensor:
    """Decode a video file's bytes into a clip [3, F, R, R]: frame k is the one showing at k / fps seconds.

    A DatasetError names `where` when the bytes are not a readable video.
    """
    import av

    wanted = [k / fps for k in range(frames)]
    picked: list[torch.Tensor] = []
    shown: tuple[float, torch.Tensor] | None = None  # (time since the first frame, the frame)
    period = 0.0
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise DatasetError(f"cannot decode video {where}: it holds no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate) if stream.average_rate else fps
            period = 1.0 / rate
            start: float | None = None
            for index, frame in enumerate(container.decode(stream)):  # type: ignore[union-attr]
                time = float(frame.time) if frame.time is not None else index * period
                start = time if start is None else start
                # Every wanted time before this frame's own is showing the previous frame.
                while shown is not None and len(picked) < frames and wanted[len(picked)] < time - start - 1e-6:
                    picked.append(shown[1])
                if len(picked) == frames:
                    break
                shown = (time - start, pil_to_tensor(frame.to_image(), resolution))
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise DatasetError(f"cannot decode video {where}: {error}") from None
    if shown is None:
        raise DatasetError(f"cannot decode video {where}: it has no frames")
    held = sum(1 for t in wanted[len(picked) :] if t > shown[0] + period + 1e-6)
    if held:
        log.warning("video shorter than dataset.frames / dataset.fps: its last frame is held", video=where, held=held)
    picked.extend([shown[1]] * (frames - len(picked)))
    return torch.stack(picked, dim=1)
