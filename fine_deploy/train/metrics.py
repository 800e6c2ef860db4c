"""Quality metrics: held-out denoising loss and a Fréchet distance in a small digits classifier's features.

The Fréchet distance here is FID-*style*, not Inception FID: the feature extractor is a small CNN
trained by this project on scikit-learn's digits (16×16 grey) and shipped as
`fine_deploy/recipes/digits-classifier.safetensors`, because Inception features mean little on 16×16
digits and would need a download. Numbers are comparable with each other, never with published FIDs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fine_deploy.errors import FineDeployError
from fine_deploy.train.data import ImageSet

CLASSIFIER_FILE = "digits-classifier.safetensors"
CLASSIFIER_SCHEMA = 1
CLASSIFIER_RESOLUTION = 16


class DigitsClassifier(nn.Module):
    """Three convs and a linear head; `features` (64-d, after global pooling) is the metric's space."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != CLASSIFIER_RESOLUTION:
            x = F.interpolate(x, size=(CLASSIFIER_RESOLUTION,) * 2, mode="bilinear", align_corners=False)
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def classifier_path() -> Path:
    from fine_deploy.train.recipe import recipes_dir

    return recipes_dir() / CLASSIFIER_FILE


def train_classifier(out: str | Path | None = None, *, epochs: int = 40, seed: int = 0) -> dict[str, Any]:
    """Train the metric's classifier on the digits train split and write it (safetensors + metadata)."""
    from safetensors.torch import save

    from fine_deploy.fileio import atomic_write_bytes
    from fine_deploy.train.data import digits, split

    torch.manual_seed(seed)
    train, held = split(digits(CLASSIFIER_RESOLUTION), 0.15, seed)
    net = DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=g)
        for i in range(0, len(train), 64):
            idx = perm[i:i + 64]
            # small shifts keep the features robust to the slightly off-centre digits a sampler makes
            x = torch.roll(train.images[idx], shifts=tuple(torch.randint(-1, 2, (2,), generator=g).tolist()),
                           dims=(2, 3))
            loss = F.cross_entropy(net(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(held.images).argmax(1) == held.labels).float().mean())
    meta = {"schema": CLASSIFIER_SCHEMA, "resolution": CLASSIFIER_RESOLUTION, "heldout_accuracy": round(acc, 4),
            "epochs": epochs, "seed": seed, "data": "sklearn digits, 85/15 split (seed 0), bilinear 8->16"}
    path = Path(out) if out is not None else classifier_path()
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"fine_deploy": json.dumps(meta)}))
    return meta


def load_classifier(path: str | Path | None = None) -> DigitsClassifier:
    from safetensors import SafetensorError, safe_open

    path = Path(path) if path is not None else classifier_path()
    if not path.is_file():
        raise FineDeployError(
            f"{path}: metric classifier missing; rebuild it with `python -m fine_deploy.train.metrics`"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("fine_deploy", "{}"))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, json.JSONDecodeError) as e:
        raise FineDeployError(f"{path}: unreadable classifier ({e}); rebuild it") from None
    if meta.get("schema") != CLASSIFIER_SCHEMA:
        raise FineDeployError(f"{path}: classifier schema {meta.get('schema')!r} is not {CLASSIFIER_SCHEMA}; "
                              "rebuild it")
    net = DigitsClassifier()
    net.load_state_dict(state)
    return net.eval()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½) of two feature sets [N, D]."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(ca @ cb)
    if not np.isfinite(covmean).all():  # near-singular product: regularise, as pytorch-fid does
        eps = np.eye(ca.shape[0]) * 1e-6
        covmean = linalg.sqrtm((ca + eps) @ (cb + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))


@torch.no_grad()
def features(images: torch.Tensor, classifier: DigitsClassifier | None = None, batch: int = 512) -> np.ndarray:
    net = classifier or load_classifier()
    return torch.cat([net.features(images[i:i + batch]) for i in range(0, len(images), batch)]).numpy()


@torch.no_grad()
def heldout_loss(tsn, data: ImageSet, config=None, *, draws: int = 2, seed: int = 1234, batch: int = 512) -> float:
    """Mean ε-prediction MSE over every held-out image × `draws` fixed (noise, t) pairs.

    The (noise, t) pairs depend only on `seed` and the data, so two subnets are scored on exactly
    the same problems and differences in this number are differences of the models.
    """
    from fine_deploy.supernet.core import SubnetConfig

    config = config or SubnetConfig()
    g = torch.Generator().manual_seed(seed)
    T = tsn.noise_scheduler.config.num_train_timesteps
    x0 = data.images.repeat(draws, 1, 1, 1)
    labels = None if data.labels is None or not tsn.class_conditional else data.labels.repeat(draws)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, T, (len(x0),), generator=g)
    dev = next(tsn.parameters()).device
    total = 0.0
    for i in range(0, len(x0), batch):
        sl = slice(i, i + batch)
        noisy = tsn.noise_scheduler.add_noise(x0[sl], noise[sl], t[sl]).to(dev)
        lab = None if labels is None else labels[sl].to(dev)
        pred = tsn.predict(noisy, t[sl].to(dev), lab, config)
        total += float(F.mse_loss(pred.float(), noise[sl].to(dev), reduction="sum"))
    return total / noise.numel()


def quality(tsn, real: ImageSet, config=None, *, samples: int = 500, steps: int = 50, guidance_scale: float = 1.0,
            seed: int = 0) -> dict[str, Any]:
    """Fréchet distance (digits-classifier features) of `samples` DDIM samples vs `real`, plus class accuracy."""
    from fine_deploy.train.sampling import sample

    net = load_classifier()
    n_cls = tsn.spec.config.get("num_embeds_ada_norm") if tsn.class_conditional else None
    labels = torch.arange(samples) % n_cls if n_cls else None
    imgs = sample(tsn.dense_module(config), tsn.noise_scheduler.config, samples, steps=steps, labels=labels,
                  guidance_scale=guidance_scale, seed=seed)
    if imgs.shape[1] != 1:
        raise FineDeployError("the digits Fréchet distance needs 1-channel images; this model makes "
                              f"{imgs.shape[1]}-channel ones")
    fd = frechet_distance(features(imgs, net), features(real.images, net))
    out: dict[str, Any] = {"frechet_distance": round(fd, 4), "samples": samples, "sampler": f"DDIM {steps} steps",
                           "feature_space": "fine-deploy digits classifier (64-d), not Inception"}
    if labels is not None:
        with torch.no_grad():
            out["class_accuracy"] = round(float((net(imgs).argmax(1) == labels).float().mean()), 4)
        out["guidance_scale"] = guidance_scale
    return out


if __name__ == "__main__":
    print(train_classifier())
