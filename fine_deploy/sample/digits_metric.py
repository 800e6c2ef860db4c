"""The digits metric: a small classifier's features and the Fréchet distance between two image sets.

FID-*style*, not Inception FID: the feature extractor is a small CNN trained by this project on
scikit-learn's digits (16×16 grey) and shipped as `fine_deploy/recipes/digits-classifier.safetensors`
(`python -m fine_deploy.train.metrics` rebuilds it), because Inception features mean little on 16×16 digits
and would need a download. Numbers are comparable with each other, never with published FIDs.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fine_deploy.errors import FineDeployError

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
    return Path(str(files("fine_deploy") / "recipes")) / CLASSIFIER_FILE


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
