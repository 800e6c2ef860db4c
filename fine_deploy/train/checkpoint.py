"""A training run's resumable checkpoint: SUPERNET.ckpt/ holds the supernet so far, the optimizer state
(safetensors), the parameters' moving average where the run keeps one, and trainer.json (step, losses,
settings, and `kind`: absent for pre-training, "recovery" for recovery training, so neither resumes from the
other's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fine_deploy.errors import FineDeployError
from fine_deploy.supernet.core import Supernet

TRAINER_SCHEMA = 1
TRAINER_FILE = "trainer.json"
OPTIMIZER_FILE = "optimizer.safetensors"
EMA_FILE = "ema.safetensors"  # the parameters' moving average, where the recipe keeps one


def load_checkpoint(ckpt: Path, kind: str | None,
                    what: str) -> tuple[Supernet, dict[str, torch.Tensor], dict[str, Any]]:
    """(supernet, optimizer tensors, trainer.json) of a checkpoint of `kind`; `what` names the run in messages."""
    from safetensors.torch import load_file

    meta_path = ckpt / TRAINER_FILE
    if not meta_path.is_file():
        raise FineDeployError(f"--resume: no checkpoint at {ckpt}; run without --resume to start {what}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise FineDeployError(
            f"{meta_path}: not valid JSON ({e.msg}); delete {ckpt} and run without --resume") from None
    if meta.get("schema") != TRAINER_SCHEMA or meta.get("kind") != kind:
        raise FineDeployError(f"{meta_path}: not a {what} checkpoint of this version; run without --resume")
    return Supernet.load(ckpt / "supernet"), load_file(str(ckpt / OPTIMIZER_FILE)), meta
