"""`fine-deploy retrain`: FINE's light retraining of a planned subnet — U, V and every dense parameter
frozen, only the per-layer σ trained, on a limited fraction of the data, for a bounded number of steps.

SUBNET output format: a supernet directory (supernet.json + weights.safetensors, the same format
every command reads) restricted to the plan's depth — its blocks are the plan's blocks, their σ start
from the parent's σ interpolated along depth and are then retrained — with the parent's shared bases
U, V copied bit for bit, plus `plan.json`: the input plan re-pointed at this directory (absolute path
and new content hash). So `fine-deploy export --plan SUBNET/plan.json` exports the retrained subnet,
and the directory is also a valid `--supernet` (its full depth is the plan's depth; ranks and widths
stay knobs, so the plan's ranks/widths still apply).
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_directory
from fine_deploy.supernet.core import SubnetConfig, Supernet, source_name
from fine_deploy.train.data import ImageSet, load_images, split
from fine_deploy.train.data import fraction as data_fraction
from fine_deploy.train.engine import TrainableSupernet, sigma_only
from fine_deploy.train.loop import LoopSettings, LoopState, make_accelerator, run_steps

PLAN_FILE = "plan.json"


def restrict_depth(sn: Supernet, depth: int | None) -> Supernet:
    """A supernet whose full depth is `depth`: its layers are those of the depth-`depth` subnet, each with
    σ interpolated at its position along the parent's depth and the dense parameters of the nearest
    parent block (`Supernet.layout`), sharing the parent's bases."""
    spec = copy.deepcopy(sn.spec)
    if depth is None or depth == sn.full_depth:
        return Supernet(spec, dict(sn.tensors))
    layout = sn.layout(depth)
    tensors = {k: v for k, v in sn.tensors.items() if k.startswith("basis.")}
    by_type: dict[str, list[dict]] = {t.name: [] for t in spec.types}
    for ms in layout.matrices:
        by_type[ms.type].append({"name": ms.name, "parts": [{"module": m, "rows": [a, b]} for m, a, b in ms.parts]})
        tensors[f"sigma.{ms.name}"] = sum(w * sn.tensors[f"sigma.{n}"] for n, w in ms.sigma).clone()
        if sn.spec.type(ms.type).source_top:  # the exact top option follows σ's interpolation along depth
            tensors[source_name(ms.name)] = sum(w * sn.tensors[source_name(n)] for n, w in ms.sigma).clone()
    for t in spec.types:
        t.matrices = by_type[t.name]
    spec.types = [t for t in spec.types if t.matrices]
    tensors = {k: v for k, v in tensors.items()
               if not k.startswith("basis.") or k.split(".")[1] in {t.name for t in spec.types}}
    spec.dense = [name for name, _ in layout.dense]
    for name, src in layout.dense:
        tensors[f"dense.{name}"] = sn.tensors[f"dense.{src}"]
    spec.config = sn.adapter.subnet_config(spec.config, depth)
    options = [d for d in spec.depth.get("options", []) if d <= depth] or [depth]
    spec.depth = dict(spec.depth, full=depth, options=options, init="linear-sigma")
    return Supernet(spec, tensors)


def _training_recipe(sn: Supernet) -> dict[str, Any]:
    return dict(sn.spec.provenance.get("recipe") or {})


def recipe_split(sn: Supernet, data: str | Path | None = None) -> tuple[str | Path, tuple[ImageSet, ImageSet]]:
    """(data source, (train, held-out)): `sn`'s pre-training split of `data` (its recipe's data by default),
    so held-out images stay unseen by any retraining too."""
    rec = _training_recipe(sn)
    source = data if data is not None else (rec.get("data") or {}).get("source", "digits")
    images = load_images(source, int(sn.spec.config["sample_size"]), int(sn.spec.config.get("in_channels", 1)))
    held_frac = float((rec.get("data") or {}).get("heldout_fraction", 0.15))
    return source, split(images, held_frac, int(rec.get("seed", 0)))


def retrain_settings(batch_size: int, lr: float, steps: int, seed: int, cfg_dropout: float) -> LoopSettings:
    """The loop settings of light retraining: a short warm-up, then cosine decay over `steps`."""
    return LoopSettings(batch_size, lr, steps, seed, warmup_steps=min(10, steps // 10), grad_clip=1.0,
                        cfg_dropout=cfg_dropout)


def retrain(
    plan: str | Path,
    output: str | Path,
    *,
    data: str | Path | None = None,
    steps: int = 200,
    fraction: float = 0.1,
    supernet: str | Path | None = None,
    lr: float = 5e-3,
    batch_size: int = 32,
    seed: int = 0,
) -> Path:
    """σ-only retraining of `plan`'s subnet; writes SUBNET (see the module docstring) and returns its path."""
    from fine_deploy.planner.schema import Plan, supernet_for_plan
    from fine_deploy.supernet.schedule import default_guidance
    from fine_deploy.train.metrics import heldout_loss
    from fine_deploy.train.pretrain import loss_curve, refresh_reconstruction_error

    t0 = time.time()
    if steps < 1:
        raise FineDeployError(f"--steps {steps}: light retraining needs at least 1 step")
    plan_path = Path(plan)
    p = Plan.load(plan_path)
    parent = supernet_for_plan(p, supernet)
    config = parent.validate(SubnetConfig.from_json(p.subnet))
    sub = restrict_depth(parent, config.depth)
    cfg = replace(config, depth=None)

    rec = _training_recipe(parent)
    source, (train_set, heldout) = recipe_split(parent, data)
    train_set = data_fraction(train_set, fraction, seed)

    accelerator = make_accelerator()
    tsn = TrainableSupernet(sub, rec.get("scheduler")).to(accelerator.device)
    params = sigma_only(tsn)
    before = heldout_loss(tsn, heldout, cfg, draws=int(rec.get("heldout_draws", 2)))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model, optimizer = accelerator.prepare(tsn, optimizer)
    settings = retrain_settings(batch_size, lr, steps, seed,
                                float(rec.get("cfg_dropout", 0.1)) if tsn.class_conditional else 0.0)
    state = run_steps(accelerator, model, optimizer, tsn, train_set, settings, LoopState(), steps, params=params,
                      choose_config=lambda _s: cfg, label="σ-only retraining")
    accelerator.wait_for_everyone()
    out = Path(output)
    if not accelerator.is_main_process:
        return out
    tsn.eval()
    after = heldout_loss(tsn, heldout, cfg, draws=int(rec.get("heldout_draws", 2)))
    result = tsn.to_supernet()
    result.spec.sensitivity = {}  # the parent's table measured other subnets; none was measured for this one
    refresh_reconstruction_error(result)
    result.spec.provenance = {
        "source": "fine-deploy retrain", "sigma_only": True,
        "parent": {"path": p.supernet.get("path", "default"), "sha256": parent.content_hash},
        # the parent's sampling default travels with the subnet (`sample` and `export` read it)
        "guidance_scale": default_guidance(parent),
        "plan_subnet": p.subnet, "steps": steps, "data": str(source), "data_fraction": fraction,
        "train_images": len(train_set), "lr": lr, "batch_size": batch_size, "seed": seed,
        "heldout_loss_before": round(before, 6), "heldout_loss_after": round(after, 6),
        "loss_curve": loss_curve(state.losses), "processes": accelerator.num_processes,
        "wall_s": round(time.time() - t0, 1),
    }
    with atomic_directory(out) as tmp:
        result.save(tmp)
        new_plan = copy.deepcopy(p)
        new_plan.supernet = {"path": str(out.resolve()), "sha256": result.content_hash}
        new_plan.save(tmp / PLAN_FILE)
    result.path = out
    return out
