"""Training images that need no download (scikit-learn's digits) and a loader for a user's image folder.

Every data set here is a tensor of images [N, C, H, W] in [-1, 1] (the range DDPM noise schedules
assume) plus optional integer class labels; the data sets are small enough to live in memory, so
batches are drawn by index with a seeded generator instead of a DataLoader (that is what makes a
run resumable and identical across process counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fine_deploy.errors import FineDeployError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class ImageSet:
    images: torch.Tensor  # [N, C, H, W] float32 in [-1, 1]
    labels: torch.Tensor | None  # [N] int64, or None when unlabelled
    num_classes: int
    name: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx: torch.Tensor, name: str | None = None) -> ImageSet:
        labels = None if self.labels is None else self.labels[idx]
        return ImageSet(self.images[idx], labels, self.num_classes, name or self.name)


def digits(resolution: int = 16) -> ImageSet:
    """scikit-learn's 1,797 8×8 digits (0..16 grey levels), bilinearly resized to `resolution`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise FineDeployError(
            "the digits data set needs scikit-learn; install it with `pip install fine-deploy[train]`"
        ) from None
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()
    return ImageSet(x, torch.from_numpy(d.target.astype(np.int64)), 10, "digits")


def image_folder(path: str | Path, resolution: int, channels: int = 1) -> ImageSet:
    """Images from a folder; one sub-folder per class gives labels (sorted names), flat gives none."""
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise FineDeployError(f"{root}: no such image folder; pass a folder of images (one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if classes:
        files = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())
                 if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [(f, -1) for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise FineDeployError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found; put images in the folder")
    if channels not in (1, 3):
        raise FineDeployError(f"channels={channels}; image folders load as 1 (grey) or 3 (RGB) channels")
    mode = "L" if channels == 1 else "RGB"
    arrs = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode).resize((resolution, resolution), Image.Resampling.BILINEAR)
                arrs.append(np.asarray(im, dtype=np.float32).reshape(resolution, resolution, channels))
        except OSError as e:
            raise FineDeployError(f"{f}: unreadable image ({e}); remove or replace it") from None
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2) / 127.5 - 1.0
    labels = torch.tensor([i for _, i in files]) if classes else None
    return ImageSet(x.contiguous(), labels, len(classes), root.name)


def load_images(source: str | Path, resolution: int, channels: int = 1) -> ImageSet:
    """"digits" (built in) or a folder path."""
    if str(source) == "digits":
        if channels != 1:
            raise FineDeployError(f"digits are grey images (1 channel); the model wants {channels}")
        return digits(resolution)
    return image_folder(source, resolution, channels)


def split(data: ImageSet, heldout_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """A fixed (seeded) train / held-out split, so every run scores on the same held-out images."""
    if not 0.0 < heldout_fraction < 1.0:
        raise FineDeployError(f"held-out fraction {heldout_fraction} must lie strictly between 0 and 1")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_held = max(1, int(round(len(data) * heldout_fraction)))
    return data.subset(perm[n_held:], f"{data.name}-train"), data.subset(perm[:n_held], f"{data.name}-heldout")


def fraction(data: ImageSet, frac: float, seed: int) -> ImageSet:
    """A seeded subset with `frac` of the images (light retraining's "limited data")."""
    if not 0.0 < frac <= 1.0:
        raise FineDeployError(f"data fraction {frac} must lie in (0, 1]")
    n = max(1, int(round(len(data) * frac)))
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(perm[:n])


def recipe_calibration(sn: Any, resolution: int) -> torch.Tensor | None:
    """The images a supernet was trained on, where they can be loaded here (static int8's calibration data
    when no --calib is given): "digits", or an image folder that still exists; None otherwise."""
    from fine_deploy.supernet.spec import training_data_source

    source = training_data_source(sn.spec)
    if source is None:
        return None
    channels = int(sn.spec.config.get("in_channels", 1))
    return load_images(source, resolution, channels).images
