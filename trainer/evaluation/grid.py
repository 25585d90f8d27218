"""Sample grids: generated images tiled into one PNG, one row per class where labels exist.

Small images are enlarged by an integer factor (nearest neighbour, so no pixel is
invented) to make a 16-pixel digit legible. Pure image handling, no models.
"""

from __future__ import annotations

from collections.abc import Sequence

import PIL.Image
import torch

MIN_TILE = 64
"""Tiles are enlarged to at least this side."""
GAP = 2
"""Pixels of grey between tiles, so neighbouring samples never read as one image."""


def tensor_to_images(images: torch.Tensor) -> list[PIL.Image.Image]:
    """[n, 3, R, R] in [-1, 1] → RGB PIL images."""
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [PIL.Image.fromarray(image.permute(1, 2, 0).cpu().numpy(), mode="RGB") for image in array]


def to_grid(images: Sequence[PIL.Image.Image], columns: int) -> PIL.Image.Image:
    """Tile equally sized images row by row (enlarged to at least MIN_TILE pixels, GAP apart)."""
    if not images or columns < 1:
        raise ValueError("a grid needs at least one image and one column")
    width, height = images[0].size
    scale = max(1, MIN_TILE // max(width, height))
    tile_w, tile_h = width * scale, height * scale
    rows = -(-len(images) // columns)
    used = min(columns, len(images))
    size = (used * tile_w + (used - 1) * GAP, rows * tile_h + (rows - 1) * GAP)
    grid = PIL.Image.new("RGB", size, (128, 128, 128))
    for i, image in enumerate(images):
        tile = image.convert("RGB").resize((tile_w, tile_h), PIL.Image.Resampling.NEAREST)
        grid.paste(tile, ((i % columns) * (tile_w + GAP), (i // columns) * (tile_h + GAP)))
    return grid


def grid_order(labels: torch.Tensor, *, per_row: int = 8, max_rows: int = 16) -> tuple[list[int], int]:
    """Indices of the samples to show and the column count: one row per class, or the first 64.

    labels: [n] class label per sample (-1 when unknown).
    """
    known = sorted({int(v) for v in labels.tolist() if v >= 0})
    if not known:
        count = min(len(labels), per_row * per_row)
        return list(range(count)), per_row
    order: list[int] = []
    for label in known[:max_rows]:
        rows = [i for i, v in enumerate(labels.tolist()) if v == label][:per_row]
        order.extend(rows + [-1] * (per_row - len(rows)))
    return order, per_row


def grid_png(images: Sequence[PIL.Image.Image], order: list[int], columns: int) -> PIL.Image.Image:
    """The grid of images[order]; -1 entries stay blank (a class with fewer samples)."""
    blank = PIL.Image.new("RGB", images[0].size, (128, 128, 128))
    return to_grid([images[i] if i >= 0 else blank for i in order], columns)
