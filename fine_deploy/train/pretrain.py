"""`fine-deploy train`: FINE pre-training and OFA-Diffusion nested training of a supernet from a recipe.

The run starts from a seeded random diffusers backbone converted to shared factors at the recipe's
rank (so the supernet structure is exactly `convert`'s), then walks the recipe's stages:
- "fine": the full-size subnet, U, σ, V and dense parameters trained jointly on the denoising loss;
- "ofa": at the stage start, channel importance (OFA-Diffusion's gradient criterion) gives channel
  orders and per-size width allocations; each step then trains one nested size P drawn with weight
  w_i ∝ 1 + (m−1)(N−i)/(N−1) (smaller sizes more often). A size sets the widths (UNet), and per the
  recipe's `ofa.knobs` also the rank of every type (nearest option ≥ P·R) and the depth.
Checkpoints (`<SUPERNET>.ckpt/`: a full supernet + optimizer state + trainer.json) are written
atomically every `checkpoint_every` steps; `--resume` continues from the last one.
After training: held-out loss, the sensitivity table, recomputed reconstruction errors and (on digits)
the Fréchet distance go into supernet.json.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from fine_deploy.backbones import adapter_for
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_directory, atomic_write_json
from fine_deploy.supernet.core import SubnetConfig, Supernet, basis_names
from fine_deploy.train.checkpoint import EMA_FILE, OPTIMIZER_FILE, TRAINER_FILE, TRAINER_SCHEMA, load_checkpoint
from fine_deploy.train.data import ImageSet, load_images, split
from fine_deploy.train.engine import TrainableSupernet
from fine_deploy.train.loop import (
    Ema,
    LoopSettings,
    LoopState,
    load_optimizer_tensors,
    make_accelerator,
    optimizer_tensors,
    run_steps,
    size_generator,
)
from fine_deploy.train.recipe import Recipe, load_recipe


def checkpoint_dir(output: str | Path) -> Path:
    output = Path(output)
    return output.parent / f"{output.name}.ckpt"


def size_weights(n: int, m: float) -> torch.Tensor:
    """OFA-Diffusion's sampling weights for sizes sorted ascending: w_i ∝ 1 + (m−1)(N−i)/(N−1)."""
    if n == 1:
        return torch.ones(1)
    w = torch.tensor([1 + (m - 1) * (n - i) / (n - 1) for i in range(1, n + 1)], dtype=torch.float64)
    return w / w.sum()


def size_config(tsn: TrainableSupernet, size: float, knobs: list[str]) -> SubnetConfig:
    """The nested subnet of relative size P: allocated widths, and ranks / depth scaled by P."""
    if size >= 1.0:
        return SubnetConfig()
    cfg = SubnetConfig()
    if "ranks" in knobs:
        for t in tsn.spec.types:
            fr = t.factor_rank  # a size scales the factors' rank; the exact source option is not a nested size
            cfg.ranks[t.name] = min((r for r in t.rank_options if fr >= r >= size * fr), default=fr)
    if "widths" in knobs and tsn.spec.widths.get("allocations"):
        cfg.widths = dict(tsn.spec.widths["allocations"][f"{size:.2f}"])
    if "depth" in knobs and tsn.spec.depth.get("options"):
        L = tsn.spec.depth["full"]
        cfg.depth = min((d for d in tsn.spec.depth["options"] if d >= size * L), default=L)
    return cfg


def refresh_widths(tsn: TrainableSupernet, calib: torch.Tensor, sizes: list[float], samples: int, p0: float,
                   seed: int) -> None:
    """OFA-Diffusion's importance → channel orders → allocation per size, on the current weights."""
    fresh = tsn.adapter.width_section(tsn.dense_module(), calib, sizes=sizes, samples=samples, p0=p0, seed=seed)
    w = dict(tsn.spec.widths)
    w.update({k: fresh[k] for k in ("criterion", "importance", "orders", "allocations")})
    tsn.spec.widths = w
    tsn.invalidate()


@torch.no_grad()
def refresh_reconstruction_error(sn: Supernet) -> None:
    """Re-measure each type's rank-prefix error (training moved it): against the source weights where the
    type keeps them (a converted supernet), else against its own full-rank stack."""
    from fine_deploy.supernet.core import source_name
    from fine_deploy.supernet.cp import SharedFactors, prefix_errors

    for t in sn.types:
        U, V = (sn.tensors[n] for n in basis_names(t.name))
        S = torch.stack([sn.tensors[f"sigma.{m['name']}"] for m in t.matrices])
        f = SharedFactors(U, V, S)
        ranks = [r for r in t.rank_options if not t.is_source(r)]
        ref = (torch.stack([sn.tensors[source_name(m["name"])] for m in t.matrices]) if t.source_top
               else f.reconstruct())
        errs = prefix_errors(ref, f, ranks)
        t.reconstruction_error = {str(r): float(e) for r, e in zip(ranks, errs, strict=True)}
        if t.source_top:
            t.reconstruction_error[str(t.max_rank)] = 0.0


def initial_supernet(recipe: Recipe) -> Supernet:
    from fine_deploy.supernet.convert import model_to_supernet

    torch.manual_seed(recipe.seed)
    model = adapter_for(recipe.backbone).build(dict(recipe.config)).eval()
    prov = {"source": "fine-deploy train", "recipe_name": recipe.name}
    # training starts from random weights, so fitting them (ALS) would buy nothing: keep the SVD start
    return model_to_supernet(model, max_rank=recipe.max_rank, als_iters=0, provenance=prov)


def recipe_data(recipe: Recipe) -> tuple[ImageSet, ImageSet]:
    cfg = recipe.config
    res = cfg.get("sample_size")
    data = load_images(recipe.data.get("source", "digits"), int(res), int(cfg.get("in_channels", 1)))
    return split(data, float(recipe.data.get("heldout_fraction", 0.15)), recipe.seed)


def _settings(recipe: Recipe) -> LoopSettings:
    dropout = recipe.cfg_dropout if adapter_for(recipe.backbone).conditioning == "class" else 0.0
    return LoopSettings(recipe.batch_size, recipe.lr, recipe.total_steps, recipe.seed, recipe.warmup_steps,
                        recipe.grad_clip, dropout)


def _save_checkpoint(ckpt: Path, tsn: TrainableSupernet, optimizer, names: list[str], state: LoopState,
                     recipe: Recipe, processes: int, ema: Ema | None) -> None:
    from safetensors.torch import save_file

    tensors, rest = optimizer_tensors(optimizer, names)
    sn = tsn.to_supernet()
    with atomic_directory(ckpt) as tmp:
        sn.save(tmp / "supernet")
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        if ema is not None:
            save_file(ema.tensors(names), str(tmp / EMA_FILE))
        atomic_write_json(tmp / TRAINER_FILE, {
            "schema": TRAINER_SCHEMA, "step": state.step, "losses": state.losses, "recipe": recipe.to_json(),
            "optimizer": rest, "processes": processes, "ema_updates": ema.updates if ema is not None else None,
        })


def _load_checkpoint(ckpt: Path) -> tuple[Supernet, dict[str, torch.Tensor], dict[str, Any]]:
    return load_checkpoint(ckpt, None, "training")


def train(
    recipe: str | Path | Recipe,
    output: str | Path,
    *,
    steps: int | None = None,
    resume: bool = False,
    evaluate: bool = True,
) -> Supernet | None:
    """Train a supernet per `recipe`, write it to `output`; returns it on the main process (None elsewhere)."""
    t0 = time.time()
    output = Path(output)
    ckpt = checkpoint_dir(output)
    if resume:
        sn, opt_tensors, meta = _load_checkpoint(ckpt)
        recipe = Recipe.from_json(meta["recipe"], str(ckpt / TRAINER_FILE))
        state = LoopState(int(meta["step"]), list(meta["losses"]))
    else:
        recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        opt_tensors, meta, state = None, None, LoopState()
    if steps is not None and steps != recipe.total_steps:
        recipe = recipe.with_steps(steps)
    if state.step > recipe.total_steps:
        raise FineDeployError(f"the checkpoint is at step {state.step}, past --steps {recipe.total_steps}; "
                              "give more steps or train without --resume")
    train_set, heldout = recipe_data(recipe)
    accelerator = make_accelerator()
    if not resume:
        sn = initial_supernet(recipe)
    tsn = TrainableSupernet(sn, recipe.scheduler).to(accelerator.device)
    names = [n for n, _ in tsn.named_parameters()]
    params = list(tsn.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if opt_tensors is not None:
        load_optimizer_tensors(optimizer, names, opt_tensors, meta["optimizer"])
    model, optimizer = accelerator.prepare(tsn, optimizer)
    settings = _settings(recipe)
    ema = Ema(params, recipe.ema) if recipe.ema else None
    if ema is not None and resume:
        from safetensors.torch import load_file

        if not (ckpt / EMA_FILE).is_file():
            raise FineDeployError(f"--resume: {ckpt} has no {EMA_FILE} but the recipe keeps an EMA; "
                                  "run without --resume")
        ema.load(names, load_file(str(ckpt / EMA_FILE)), int(meta.get("ema_updates") or 0))

    def checkpoint(st: LoopState) -> None:
        if accelerator.is_main_process:
            _save_checkpoint(ckpt, tsn, optimizer, names, st, recipe, accelerator.num_processes, ema)
        accelerator.wait_for_everyone()

    ofa = dict(recipe.ofa)
    sizes = sorted(float(p) for p in ofa.get("sizes", [1.0]))
    weights = size_weights(len(sizes), float(ofa.get("m", 3.0)))
    start = 0
    for i, stage in enumerate(recipe.stages):
        end = start + stage.steps
        if state.step < end and stage.steps > 0:
            if state.step == start and i > 0:
                # a new stage: re-sort basis columns by importance; the old Adam moments no longer fit them.
                # The stage starts from the averaged weights (the better model), and the average restarts
                # from the reordered ones, whose columns no longer line up with the old average.
                if ema is not None:
                    ema.copy_to_params()
                tsn.reorder_ranks()
                optimizer.state.clear()
                if ema is not None:
                    ema.restart()
            choose = None
            if stage.mode == "ofa":
                knobs = list(ofa.get("knobs", []))
                if "widths" in knobs and state.step == start:
                    refresh_widths(tsn, train_set.images, sizes, int(ofa.get("importance_samples", 16)),
                                   float(ofa.get("p0", 0.25)), recipe.seed)

                def choose(step: int, knobs=knobs) -> SubnetConfig:
                    k = int(torch.multinomial(weights, 1, generator=size_generator(settings, step)))
                    return size_config(tsn, sizes[k], knobs)

            run_steps(accelerator, model, optimizer, tsn, train_set, settings, state, end, params=params,
                      choose_config=choose, on_checkpoint=checkpoint, checkpoint_every=recipe.checkpoint_every,
                      label=f"{stage.mode} stage {i + 1}/{len(recipe.stages)}", ema=ema)
        start = end
    checkpoint(state)  # the live weights and their average: what a resume to more steps continues from
    if ema is not None:  # the average is what ships
        ema.copy_to_params()
    if recipe.stages[-1].mode == "fine":
        tsn.reorder_ranks()
    if not accelerator.is_main_process:
        return None
    out = tsn.to_supernet()
    tsn.eval()
    prov: dict[str, Any] = {
        "source": "fine-deploy train", "trained": True, "recipe_name": recipe.name, "recipe": recipe.to_json(),
        "steps": state.step, "processes": accelerator.num_processes, "wall_s": round(time.time() - t0, 1),
        "final_train_loss": round(sum(state.losses[-50:]) / max(1, len(state.losses[-50:])), 6),
        "loss_curve": loss_curve(state.losses),
        "data": {"train": len(train_set), "heldout": len(heldout), "source": recipe.data.get("source", "digits")},
        "torch": torch.__version__,
    }
    refresh_reconstruction_error(out)
    if evaluate:
        from fine_deploy.train.metrics import heldout_loss, quality
        from fine_deploy.train.sensitivity import measure_sensitivity

        prov["heldout_loss"] = round(heldout_loss(tsn, heldout, draws=recipe.heldout_draws), 6)
        out.spec.sensitivity = measure_sensitivity(tsn, heldout, draws=recipe.heldout_draws)
        m = recipe.metric
        if int(m.get("samples", 0)) > 0 and recipe.data.get("source", "digits") == "digits":
            full = load_images("digits", int(recipe.config["sample_size"]), 1)
            sweep = m.get("guidance_sweep") if tsn.class_conditional else None
            runs = [quality(tsn, full, samples=int(m["samples"]), steps=int(m.get("sample_steps", 50)),
                            guidance_scale=float(g), seed=recipe.seed)
                    for g in (sweep or [m.get("guidance_scale", 1.0)])]
            # the sampling default is measured, not guessed: the most recognisable samples, then the closest
            best = max(runs, key=lambda q: (q.get("class_accuracy", 0.0), -q["frechet_distance"]))
            prov["metric"] = dict(best)
            if sweep:
                prov["metric"]["guidance_sweep"] = [
                    {k: q.get(k) for k in ("guidance_scale", "class_accuracy", "frechet_distance")} for q in runs]
                prov["guidance_scale"] = best["guidance_scale"]  # what `sample` and `export` use (default_guidance)
    out.spec.provenance = prov
    out.save(output)
    return out


def loss_curve(losses: list[float], points: int = 50) -> list[list[float]]:
    """[step, mean loss of the window ending there] at about `points` places along the run."""
    if not losses:
        return []
    w = max(1, len(losses) // points)
    return [[i + w, round(sum(losses[i:i + w]) / len(losses[i:i + w]), 6)] for i in range(0, len(losses), w)]
