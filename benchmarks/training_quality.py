"""FINE vs its baselines at ~50% of the dense model's parameters and an equal retraining budget.

(a) FINE: the shared-basis supernet trained for N steps, at ranks that fit the budget, + σ-only retraining
(b) per-layer SVD: a dense DiT trained for the same N steps, each weight truncated to its own top-r SVD
    (r chosen for the budget), + the same retraining on the singular values only
(c) magnitude pruning: the same dense DiT, channels pruned by L2 magnitude with torch-pruning's pruning
    functions (MLP hidden, per-head attention dims, per-block conditioning width; one keep fraction chosen
    for the budget), + the same number of retraining steps on all remaining weights (pruning has no σ)
(d) random initialisation: the FINE subnet shape with random factors, + the same σ-only retraining

Scored on the held-out denoising loss (fixed noise/timesteps) and the Fréchet distance in the
features of fine-deploy's digits classifier (FID-style, NOT Inception FID). Prints a table and writes
JSON. `--ddp-check` instead compares 1-process and 2-process (accelerate/torchrun, gloo) loss curves.

    OMP_NUM_THREADS=1 python benchmarks/training_quality.py --steps 400 --retrain-steps 150 \
        --json benchmarks/results/training_quality.json
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from provenance import provenance
from torch import nn
from torch.func import functional_call

from fine_deploy.fileio import atomic_write_json
from fine_deploy.sample.loop import sample_model
from fine_deploy.supernet.core import SubnetConfig
from fine_deploy.train.data import fraction, load_images
from fine_deploy.train.engine import TrainableSupernet, sigma_only
from fine_deploy.train.loop import LoopSettings, LoopState, make_accelerator, run_steps
from fine_deploy.train.metrics import features, frechet_distance, load_classifier
from fine_deploy.train.pretrain import initial_supernet, recipe_data
from fine_deploy.train.recipe import Stage, load_recipe


class Denoiser(nn.Module):
    """A stock diffusers DiT whose weights may be re-parametrised (SVD factors) — the loop's interface."""

    def __init__(self, model: nn.Module, scheduler_cfg: dict, spec) -> None:
        from diffusers import DDPMScheduler

        super().__init__()
        self.model = model
        self.spec = spec
        self.noise_scheduler = DDPMScheduler(**scheduler_cfg)
        self.class_conditional = True
        self.factors = nn.ParameterDict()  # name -> trainable singular values (per-layer SVD baseline)
        self.fixed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.active = None

    def svd_truncate(self, names: list[str], keep: float) -> None:
        for n in names:
            W = self.model.get_parameter(n).detach()
            P, s, Qh = torch.linalg.svd(W, full_matrices=False)
            r = max(1, int(round(keep * min(W.shape))))
            self.fixed[n] = (P[:, :r].contiguous(), Qh[:r].contiguous())
            self.factors[n.replace(".", "__")] = nn.Parameter(s[:r].clone())

    def params(self) -> dict[str, torch.Tensor]:
        out = dict(self.model.named_parameters())
        for n, (P, Qh) in self.fixed.items():
            out[n] = (P * self.factors[n.replace(".", "__")]) @ Qh
        return out

    def predict(self, noisy, t, labels, config=None):
        kw = {"hidden_states": noisy, "timestep": t, "class_labels": labels}
        return functional_call(self.model, self.params(), args=(), kwargs=kw).sample

    def forward(self, x0, noise, t, labels=None):
        return F.mse_loss(self.predict(self.noise_scheduler.add_noise(x0, noise, t), t, labels), noise)

    @torch.no_grad()
    def dense_module(self, config=None):
        m = copy.deepcopy(self.model)
        for n, (_P, _Qh) in self.fixed.items():
            m.get_parameter(n).copy_(self.params()[n])
        return m.eval()

    def n_params(self) -> int:
        n = sum(p.numel() for p in self.model.parameters())
        for name, (P, Qh) in self.fixed.items():
            n += P.numel() + Qh.numel() + P.shape[1] - self.model.get_parameter(name).numel()
        return n


def factorised_names(sn) -> list[str]:
    return [f"{p['module']}.weight" for t in sn.types for m in t.matrices for p in m["parts"]]


def prune_channels(model: nn.Module, keep: float) -> None:
    """L2-magnitude channel pruning of every DiT block, surgery by torch-pruning's pruning functions."""
    import torch_pruning as tp

    def drop(scores: torch.Tensor, k: int) -> list[int]:
        return sorted(torch.argsort(scores, descending=True)[k:].tolist())

    for blk in model.transformer_blocks:
        fc1, fc2 = blk.ff.net[0].proj, blk.ff.net[2]
        s = fc1.weight.pow(2).sum(1) + fc2.weight.pow(2).sum(0)
        idx = drop(s, max(1, round(keep * len(s))))
        tp.prune_linear_out_channels(fc1, idx)
        tp.prune_linear_in_channels(fc2, idx)
        a = blk.attn1
        heads, inner = a.heads, a.to_q.out_features
        hd = inner // heads
        s = (a.to_q.weight.pow(2).sum(1) + a.to_k.weight.pow(2).sum(1) + a.to_v.weight.pow(2).sum(1)
             + a.to_out[0].weight.pow(2).sum(0)).reshape(heads, hd).sum(0)  # one score per within-head offset
        off = drop(s, max(1, round(keep * hd)))
        idx = [h * hd + o for h in range(heads) for o in off]
        for lin in (a.to_q, a.to_k, a.to_v):
            tp.prune_linear_out_channels(lin, idx)
        tp.prune_linear_in_channels(a.to_out[0], idx)
        e = blk.norm1.emb
        lin2, table, ada = e.timestep_embedder.linear_2, e.class_embedder.embedding_table, blk.norm1.linear
        s = lin2.weight.pow(2).sum(1) + table.weight.pow(2).sum(0) + ada.weight.pow(2).sum(0)
        idx = drop(s, max(1, round(keep * len(s))))
        tp.prune_linear_out_channels(lin2, idx)
        tp.prune_embedding_out_channels(table, idx)
        tp.prune_linear_in_channels(ada, idx)
        if blk is model.transformer_blocks[0]:  # DiT's output layer reuses block 0's conditioning
            tp.prune_linear_in_channels(model.proj_out_1, idx)


def solve_keep(n_at, target: int, lo: float = 0.01, hi: float = 1.0) -> float:
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if n_at(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda k: abs(n_at(k) - target))  # ranks/channels are integers: nearest count


def train(acc, mod, data, settings, steps, params, label):
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    m, opt = acc.prepare(mod, opt)
    s = LoopSettings(**{**settings.__dict__, "total_steps": steps})
    return run_steps(acc, m, opt, mod, data, s, LoopState(), steps, params=params, label=label)


@torch.no_grad()
def evaluate(mod, heldout, real, clf, args, config=None) -> dict:
    from fine_deploy.train.metrics import heldout_loss

    mod.eval()
    loss = heldout_loss(mod, heldout, config, draws=2)
    labels = torch.arange(args.samples) % 10
    imgs = sample_model(mod.dense_module(config), mod.noise_scheduler.config, args.samples, steps=args.sample_steps,
                        labels=labels, guidance=args.guidance)
    fd = frechet_distance(features(imgs, clf), features(real.images, clf))
    acc = float((clf(imgs).argmax(1) == labels).float().mean())
    return {"heldout_loss": round(loss, 5), "frechet_distance": round(fd, 3), "class_accuracy": round(acc, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="dit-digits")
    ap.add_argument("--steps", type=int, default=400, help="pre-training steps of FINE and of the dense model")
    ap.add_argument("--retrain-steps", type=int, default=150)
    ap.add_argument("--retrain-fraction", type=float, default=0.1)
    ap.add_argument("--retrain-lr", type=float, default=5e-3)
    ap.add_argument("--target", type=float, default=0.5, help="parameter budget as a fraction of the dense model")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/training_quality.json"))
    args = ap.parse_args()
    t0 = time.time()
    recipe = load_recipe(args.recipe)
    recipe.stages = [Stage("fine", args.steps)]
    train_set, heldout = recipe_data(recipe)
    real = load_images("digits", int(recipe.config["sample_size"]), 1)
    retrain_data = fraction(train_set, args.retrain_fraction, 0)
    clf = load_classifier()
    acc = make_accelerator()
    base = LoopSettings(recipe.batch_size, recipe.lr, args.steps, recipe.seed, recipe.warmup_steps, recipe.grad_clip,
                        recipe.cfg_dropout)
    rs = LoopSettings(32, args.retrain_lr, args.retrain_steps, 1, 10, 1.0, recipe.cfg_dropout)
    sn0 = initial_supernet(recipe)
    dense_total = sum(v.numel() for k, v in sn0.tensors.items() if k.startswith("dense.")) + sum(
        t.params_at(1)["dense"] for t in sn0.types)
    target = int(args.target * dense_total)
    rows: dict[str, dict] = {}

    # (a) FINE
    fine = TrainableSupernet(sn0, recipe.scheduler)
    train(acc, fine, train_set, base, args.steps, list(fine.parameters()), "FINE pre-training")
    fine.reorder_ranks()
    other = dense_total - sum(t.params_at(1)["dense"] for t in sn0.types)

    def fine_params(k: float) -> int:
        return other + sum(t.params_at(max(1, round(k * t.max_rank)))["shared_basis"] for t in sn0.types)

    k_a = 1.0 if fine_params(1.0) <= target else solve_keep(fine_params, target)
    cfg_a = SubnetConfig(ranks={t.name: max(1, round(k_a * t.max_rank)) for t in sn0.types})
    rand = copy.deepcopy(fine)  # the shape of (a) for (d), weights re-drawn below
    fine_full = evaluate(fine, heldout, real, clf, args)
    train(acc, fine, retrain_data, rs, args.retrain_steps, sigma_only(fine), "(a) σ-only retraining")
    rows["a_fine_sigma_retrain"] = {"params": fine_params(k_a), "ranks": cfg_a.ranks,
                                    **evaluate(fine, heldout, real, clf, args, cfg_a)}

    # dense model, same budget
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(recipe.seed)
    dense = Denoiser(DiTTransformer2DModel(**recipe.config), recipe.scheduler, sn0.spec)
    train(acc, dense, train_set, base, args.steps, list(dense.parameters()), "dense pre-training")
    rows["dense_full"] = {"params": dense_total, **evaluate(dense, heldout, real, clf, args)}

    # (b) per-layer SVD
    names = factorised_names(sn0)
    shapes = {n: tuple(dense.model.get_parameter(n).shape) for n in names}

    def svd_params(k: float) -> int:
        return other + sum(max(1, round(k * min(s))) * (sum(s) + 1) for s in shapes.values())

    k_b = solve_keep(svd_params, target)
    svd = Denoiser(copy.deepcopy(dense.model), recipe.scheduler, sn0.spec)
    svd.svd_truncate(names, k_b)
    for p in svd.model.parameters():
        p.requires_grad_(False)
    before_b = evaluate(svd, heldout, real, clf, args)
    train(acc, svd, retrain_data, rs, args.retrain_steps, list(svd.factors.values()), "(b) σ-only retraining")
    rows["b_per_layer_svd_sigma_retrain"] = {"params": svd.n_params(), "keep_rank_fraction": round(k_b, 3),
                                             "before_retrain": before_b, **evaluate(svd, heldout, real, clf, args)}

    # (c) magnitude pruning
    def pruned_params(k: float) -> int:
        m = copy.deepcopy(dense.model)
        prune_channels(m, k)
        return sum(p.numel() for p in m.parameters())

    k_c = solve_keep(pruned_params, target)
    pm = copy.deepcopy(dense.model)
    prune_channels(pm, k_c)
    pr = Denoiser(pm, recipe.scheduler, sn0.spec)
    before_c = evaluate(pr, heldout, real, clf, args)
    train(acc, pr, retrain_data, rs, args.retrain_steps, list(pr.parameters()), "(c) retraining (all weights)")
    rows["c_magnitude_prune_retrain"] = {"params": sum(p.numel() for p in pm.parameters()),
                                         "keep_channel_fraction": round(k_c, 3), "before_retrain": before_c,
                                         **evaluate(pr, heldout, real, clf, args)}

    # (d) random init of (a)'s shape
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in rand.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * p.std().clamp_min(1e-3) + (p.mean() if p.numel() > 1 else 0))
    train(acc, rand, retrain_data, rs, args.retrain_steps, sigma_only(rand), "(d) σ-only retraining")
    rows["d_random_init_sigma_retrain"] = {"params": fine_params(k_a),
                                           **evaluate(rand, heldout, real, clf, args, cfg_a)}

    result = {
        # every model here is trained in this process from the recipe: no saved supernet to hash
        "schema": 1, "benchmark": "training_quality", "provenance": provenance(args, None, recipe=recipe.to_json()),
        "recipe": args.recipe, "pretrain_steps": args.steps,
        "retrain": {"steps": args.retrain_steps, "data_fraction": args.retrain_fraction, "lr": args.retrain_lr,
                    "images": len(retrain_data)},
        "dense_params": dense_total, "target_params": target, "fine_full_before_retrain": fine_full,
        "rows": rows, "metric_note": "Fréchet distance in fine-deploy's digits-classifier features, not Inception FID",
        "wall_s": round(time.time() - t0, 1), "threads": torch.get_num_threads(),
    }
    atomic_write_json(args.json, result)
    print(f"\n{'method':34s} {'params':>9s} {'%dense':>7s} {'heldout':>9s} {'FD':>8s} {'cls acc':>8s}")
    for k, r in rows.items():
        print(f"{k:34s} {r['params']:9d} {100 * r['params'] / dense_total:6.1f}% {r['heldout_loss']:9.5f} "
              f"{r['frechet_distance']:8.3f} {r['class_accuracy']:8.3f}")
    print(f"wrote {args.json} ({result['wall_s']} s)")
    if not math.isfinite(rows["a_fine_sigma_retrain"]["heldout_loss"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
