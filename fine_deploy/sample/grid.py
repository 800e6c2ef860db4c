"""Image grids as PNG: one grid, or compressed | full | per-image difference side by side with captions."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from fine_deploy.fileio import atomic_write_bytes

TILE_MIN = 64  # small images (16×16 digits) are upscaled, nearest-neighbour, to at least this many pixels
PAD = 2
CAPTION_H = 18


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """[n, C, H, W] in [-1, 1] -> [n, H, W, 3] uint8 (grey images repeated over RGB)."""
    x = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] != 3:
        x = np.repeat(x[..., :1], 3, axis=-1)  # neither grey nor RGB: show the first channel
    return x


def grid_array(images: np.ndarray, cols: int | None = None, *, tiles_already_uint8: bool = False) -> np.ndarray:
    """Tile images into one [H, W, 3] uint8 array, `cols` per row (≈ square by default)."""
    tiles = images if tiles_already_uint8 else _to_uint8(images)
    n, h, w, _ = tiles.shape
    scale = max(1, math.ceil(TILE_MIN / max(h, w)))
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + PAD) + PAD, cols * (w + PAD) + PAD, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = PAD + r * (h + PAD), PAD + c * (w + PAD)
        out[y:y + h, x:x + w] = tiles[i]
    return out


def diff_tiles(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-image |a − b| (mean over channels) as grey tiles, white = the batch's largest difference."""
    d = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean(axis=1)
    peak = float(d.max()) if d.size else 0.0
    g = (d / peak * 255.0 + 0.5).astype(np.uint8) if peak > 0 else np.zeros(d.shape, np.uint8)
    return np.repeat(g[..., None], 3, axis=-1), peak


def _captioned(panels: list[tuple[str, np.ndarray]]) -> np.ndarray:
    from PIL import Image, ImageDraw

    h = max(p.shape[0] for _, p in panels)
    w = sum(p.shape[1] for _, p in panels) + 8 * (len(panels) - 1)
    canvas = Image.new("RGB", (w, h + CAPTION_H), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for caption, p in panels:
        canvas.paste(Image.fromarray(p), (x, CAPTION_H))
        draw.text((x + PAD, 3), caption, fill="black")
        x += p.shape[1] + 8
    return np.asarray(canvas)


def compare_array(compressed: np.ndarray, full: np.ndarray, captions: tuple[str, str]) -> np.ndarray:
    """compressed | full | |difference| grids with a caption over each."""
    tiles, peak = diff_tiles(compressed, full)
    return _captioned([(captions[0], grid_array(compressed)), (captions[1], grid_array(full)),
                       (f"|diff|, white = {peak:.3f}", grid_array(tiles, tiles_already_uint8=True))])


def save_png(array: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
