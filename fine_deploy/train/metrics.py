"""Training-time quality: held-out denoising loss, and the digits Fréchet distance of samples drawn with
the one sampler (`fine_deploy.sample.loop`); `python -m fine_deploy.train.metrics` retrains the metric's
classifier (`fine_deploy.sample.digits_metric`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fine_deploy.errors import FineDeployError
from fine_deploy.sample.digits_metric import (
    CLASSIFIER_RESOLUTION,
    CLASSIFIER_SCHEMA,
    DigitsClassifier,
    classifier_path,
    features,
    frechet_distance,
    load_classifier,
)
from fine_deploy.train.data import ImageSet

__all__ = ["DigitsClassifier", "features", "frechet_distance", "heldout_loss", "load_classifier", "quality",
           "train_classifier"]


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


def fixed_noisy_batches(tsn, data: ImageSet, *, draws: int, seed: int, batch: int):
    """Every held-out image × `draws` fixed (noise, t) pairs, noised, in batches on the model's device:
    (noisy, t, labels, noise). The pairs depend only on `seed` and the data, so two models are scored on
    exactly the same problems."""
    g = torch.Generator().manual_seed(seed)
    T = tsn.noise_scheduler.config.num_train_timesteps
    x0 = data.images.repeat(draws, 1, 1, 1)
    labels = None if data.labels is None or not tsn.class_conditional else data.labels.repeat(draws)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, T, (len(x0),), generator=g)
    dev = next(tsn.parameters()).device
    for i in range(0, len(x0), batch):
        sl = slice(i, i + batch)
        noisy = tsn.noise_scheduler.add_noise(x0[sl], noise[sl], t[sl]).to(dev)
        yield noisy, t[sl].to(dev), None if labels is None else labels[sl].to(dev), noise[sl].to(dev)


@torch.no_grad()
def heldout_loss(tsn, data: ImageSet, config=None, *, draws: int = 2, seed: int = 1234, batch: int = 512) -> float:
    """Mean ε-prediction MSE over every held-out image × `draws` fixed (noise, t) pairs
    (`fixed_noisy_batches`: differences in this number are differences of the models)."""
    from fine_deploy.supernet.core import SubnetConfig

    config = config or SubnetConfig()
    total = count = 0.0
    for noisy, t, lab, noise in fixed_noisy_batches(tsn, data, draws=draws, seed=seed, batch=batch):
        pred = tsn.predict(noisy, t, lab, config)
        total += float(F.mse_loss(pred.float(), noise, reduction="sum"))
        count += noise.numel()
    return total / count


def quality(tsn, real: ImageSet, config=None, *, samples: int = 500, steps: int = 50, guidance_scale: float = 1.0,
            seed: int = 0) -> dict[str, Any]:
    """Fréchet distance (digits-classifier features) of `samples` DDIM samples vs `real`, plus class accuracy."""
    from fine_deploy.sample.loop import sample_model

    net = load_classifier()
    n_cls = tsn.adapter.num_classes(tsn.spec.config)
    labels = torch.arange(samples) % n_cls if n_cls else None
    imgs = sample_model(tsn.dense_module(config), tsn.noise_scheduler.config, samples, steps=steps, labels=labels,
                        guidance=guidance_scale, seed=seed)
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
