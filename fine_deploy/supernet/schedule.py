"""Which noise schedule a model was trained with, and the scheduler folder that travels with every export.

The schedule is part of the model: sampling a network with another beta schedule than it was trained on
gives noise. `fine-deploy train` records its DDPM scheduler kwargs in the supernet's provenance (the
recipe's `scheduler`); a retrained subnet points at its parent; a supernet that records none (a
converted or untrained one) gets diffusers' `DDPMScheduler` defaults, and that fact is recorded with
every artifact and sample so nobody mistakes it for the trained schedule.

The file format is diffusers' own: `scheduler/scheduler_config.json` with `_class_name: DDPMScheduler`,
which `DDIMScheduler.from_config` and the stock pipelines read as well.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fine_deploy.errors import FineDeployError

SCHEDULER_DIR = "scheduler"
SCHEDULER_FILE = "scheduler_config.json"
SAMPLERS = ("ddim", "ddpm")
FLOW = "FlowMatchEulerDiscreteScheduler"
DEFAULTS_SOURCE = "diffusers DDPMScheduler defaults (the supernet records no training schedule)"


@dataclass
class Schedule:
    """The training noise schedule of a model: scheduler kwargs, where they came from, the scheduler class."""

    config: dict[str, Any]  # scheduler kwargs (num_train_timesteps, beta_schedule, ...)
    source: str  # "recipe dit-digits (supernet provenance)" | "parent supernet ..." | DEFAULTS_SOURCE
    cls: str = "DDPMScheduler"  # the training family: DDPMScheduler | FlowMatchEulerDiscreteScheduler

    @property
    def flow(self) -> bool:
        return self.cls == FLOW

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def training_schedule(sn: Any, _seen: int = 0) -> Schedule:
    """The DDPM schedule supernet `sn` was trained with (see the module docstring for the lookup order)."""
    prov = dict(getattr(sn.spec, "provenance", None) or {})
    recipe = prov.get("recipe")
    if isinstance(recipe, dict) and isinstance(recipe.get("scheduler"), dict):
        name = recipe.get("name") or prov.get("recipe_name") or "unnamed"
        return Schedule(_full(recipe["scheduler"]), f"recipe {name} (supernet provenance)")
    family = sn.adapter.scheduler
    if isinstance(prov.get("scheduler"), dict):
        return Schedule(_full(prov["scheduler"], family), "supernet provenance", family)
    parent = prov.get("parent")
    if isinstance(parent, dict) and parent.get("path") and _seen < 4:
        from fine_deploy.supernet.core import load_supernet

        try:
            up = load_supernet(parent["path"])
        except (FineDeployError, OSError):
            up = None
        if up is not None and (not parent.get("sha256") or up.content_hash == parent["sha256"]):
            s = training_schedule(up, _seen + 1)
            return Schedule(s.config, f"parent supernet {parent['path']}: {s.source}", s.cls)
    return Schedule(_full({}, family), DEFAULTS_SOURCE, family)


def _scheduler_class(name: str) -> type:
    import diffusers

    if name not in ("DDPMScheduler", FLOW):
        raise FineDeployError(f"scheduler {name} is not a training scheduler fine-deploy samples with; "
                              f"use DDPMScheduler or {FLOW}")
    return getattr(diffusers, name)


def _full(kwargs: dict[str, Any], cls: str = "DDPMScheduler") -> dict[str, Any]:
    """Every scheduler field spelled out, so the file reads the same under other diffusers defaults."""
    try:
        return _clean(_scheduler_class(cls)(**_clean(kwargs)).config)
    except (TypeError, ValueError, NotImplementedError) as e:
        raise FineDeployError(f"scheduler config {kwargs} is not a valid {cls} config ({e}); "
                              "fix the recipe's `scheduler` field") from None


def write_scheduler(directory: str | Path, schedule: Schedule) -> Path:
    """Write `directory/scheduler/scheduler_config.json` (diffusers' layout); returns its path."""
    out = Path(directory) / SCHEDULER_DIR
    _scheduler_class(schedule.cls)(**schedule.config).save_pretrained(str(out))
    return out / SCHEDULER_FILE


def read_scheduler(directory: str | Path) -> dict[str, Any]:
    """The scheduler kwargs stored in an artifact or pipeline folder (`_class_name` kept: the family)."""
    path = Path(directory) / SCHEDULER_DIR / SCHEDULER_FILE
    try:
        raw = json.loads(path.read_text())
        return {**_clean(raw), "_class_name": raw.get("_class_name", "DDPMScheduler")}
    except FileNotFoundError:
        raise FineDeployError(f"{directory} has no {SCHEDULER_DIR}/{SCHEDULER_FILE}; re-export it with this "
                              "fine-deploy (older exports carried no schedule) or pass the plan instead") from None
    except (OSError, ValueError) as e:
        raise FineDeployError(f"{path} is not valid JSON ({e}); re-export the artifact") from None


def make_scheduler(config: dict[str, Any], sampler: str) -> Any:
    """A diffusers scheduler of kind `sampler` (ddim: deterministic, few steps; ddpm: ancestral) on `config`."""
    from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if sampler not in SAMPLERS:
        raise FineDeployError(f"--sampler {sampler!r} is unknown; use one of {', '.join(SAMPLERS)}")
    if config.get("_class_name") == FLOW:  # flow matching has one (Euler) sampler, deterministic
        return FlowMatchEulerDiscreteScheduler.from_config(_clean(config))
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    return cls.from_config(_clean(config))


def default_guidance(sn: Any) -> float:
    """The classifier-free guidance scale a model samples with by default: a converted pipeline's stock default;
    for a class-conditional model the scale its provenance records (a retrained subnet: its parent's), else its
    recipe's (the metric's `guidance_scale`); otherwise 1 (none). The one rule `export` records in the manifest
    and `sample` uses for supernets, retrained subnets and plans alike."""
    if sn.components:
        from fine_deploy.pipelines import pipeline_for

        return pipeline_for(sn.spec.pipeline["class"]).guidance
    if not sn.adapter.num_classes(sn.spec.config):
        return 1.0
    prov = sn.spec.provenance or {}
    if isinstance(prov.get("guidance_scale"), (int, float)) and not isinstance(prov.get("guidance_scale"), bool):
        return float(prov["guidance_scale"])
    recipe = prov.get("recipe")
    metric = (recipe.get("metric") or {}) if isinstance(recipe, dict) else {}
    return float(metric.get("guidance_scale", 1.0))
