"""Quality at equal MEASURED latency (issue 18): FINE vs per-layer SVD, OFA width, scratch and torch-pruning.

Does a FINE subnet beat per-layer SVD, OFA width pruning, training from scratch and magnitude pruning when all
of them run equally fast?

Base model: a trained class-conditional DiT supernet (the shipped default, or `--supernet PATH`).
1. The full model is planned (no latency budget) and exported by the product, and timed by
   `export.calibrate.time_artifacts` (runtime.timing.PREDICTION: what `bench` measures by default). The
   budgets are `--fractions` of that time.
2. Per budget B, the best subnet each method offers at measured latency <= B:
   fine           the planner's plan at --latency B (host LUT from `profile`, calibrated end to end), exported
                  and timed; measured > B re-plans at B·(B/measured) (at most 3 tries); then σ-only retraining
                  as `fine-deploy retrain` does it (restrict_depth, sigma_only, retrain_settings)
   svd            the dense full model, each factorised weight replaced by its own truncated SVD at rank
                  fraction k, run as two Linear layers (x·Qᵀ, then ·(P·diag s)ᵀ) where that is cheaper than
                  one; the singular values retrained (σ only, like FINE)
   ofa_width      OFA-Diffusion's importance-ordered channels: per-channel Taylor importance |w·∂L/∂w| of the
                  denoising loss for the groups `prune_channels` cuts (MLP hidden, within-head attention dims,
                  conditioning width), the top fraction k kept; all weights retrained
   scratch        fine's architecture (depth, ranks, kernel forms) with diffusers' own random init of a fresh
                  module of that depth, factorised like the recipe starts; all weights trained
   torch_pruning  the same channel groups cut by L2 magnitude with torch-pruning; all weights retrained
   The 1-D knob methods (svd, ofa_width, torch_pruning) are exported over `--grid` and timed in one interleaved
   call; per budget the largest k whose measured latency <= B is taken.
   Every method: the same `--steps` optimizer steps, the same data (the recipe's train split), batch and seed;
   σ-only methods at `--sigma-lr`, all-weight methods at the recipe's lr.
3. Every final model (the full one too) is exported again and timed in ONE interleaved call.
4. Quality: held-out denoising loss (fixed draws), Fréchet distance in the shipped digits classifier's features
   (NOT Inception FID) and class accuracy of `--samples` DDIM samples at the model's default guidance.

    OMP_NUM_THREADS=1 python benchmarks/quality_at_latency.py [--supernet PATH] [--fractions 0.75,0.6,0.5] \\
        [--steps 300] [--samples 300] [--work DIR] [--json benchmarks/results/quality_at_latency.json]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from provenance import provenance  # noqa: E402

METHODS = ("fine", "svd", "ofa_width", "scratch", "torch_pruning")
KNOB_METHODS = ("svd", "ofa_width", "torch_pruning")
SIGMA_ONLY = ("fine", "svd")
SLACK = 0.1  # FINE re-plans while its pick measures more than this far under the budget
GRID = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
METRIC_NOTE = "digits-classifier Fréchet distance, not Inception FID"
WIDTH_NOTE = ("the product's DiT supernet has no width knob: ofa_width (OFA-Diffusion's importance-ordered channels) "
              "is built by this benchmark on the dense model, with the channel groups torch_pruning cuts")
DEFAULT_JSON = HERE / "results" / "quality_at_latency.json"


# --- models the training loop can drive ----------------------------------------------------------------------


class Denoiser(nn.Module):
    """A stock diffusers backbone (dense, SVD-factored or channel-pruned) with the interface the training loop,
    heldout_loss and sampling use (the one TrainableSupernet offers): forward = ε-prediction loss."""

    def __init__(self, model: nn.Module, sn) -> None:
        from diffusers import DDPMScheduler

        super().__init__()
        self.model = model
        self.spec = sn.spec
        self.adapter = sn.adapter
        rec = dict((sn.spec.provenance or {}).get("recipe") or {})
        self.noise_scheduler = DDPMScheduler(**(rec.get("scheduler") or {"num_train_timesteps": 1000}))
        self.class_conditional = bool(sn.adapter.num_classes(sn.spec.config))
        self.active = None

    def predict(self, noisy, t, labels, config=None):
        from fine_deploy.train.engine import model_inputs

        return self.model(**model_inputs(self.adapter, self.spec.config, noisy, t, labels)).sample

    def forward(self, x0, noise, t, labels=None):
        return F.mse_loss(self.predict(self.noise_scheduler.add_noise(x0, noise, t), t, labels).float(), noise.float())

    def dense_module(self, config=None) -> nn.Module:
        return self.model.eval()


class LowRankLinear(nn.Module):
    """A Linear's truncated SVD  W ≈ P·diag(s)·Qh  with trainable singular values s. Run as two Linear layers
    (x·Qhᵀ, then ·(P·diag s)ᵀ) where that costs fewer multiply-adds than one, else as one Linear of the product."""

    def __init__(self, lin: nn.Linear, keep: float) -> None:
        super().__init__()
        W = lin.weight.detach().float()
        P, s, Qh = torch.linalg.svd(W, full_matrices=False)
        out_f, in_f = W.shape
        r = max(1, round(keep * min(W.shape)))
        self.rank = r
        self.split = r * (in_f + out_f) < in_f * out_f
        self.register_buffer("P", P[:, :r].contiguous())
        self.register_buffer("Qh", Qh[:r].contiguous())
        self.s = nn.Parameter(s[:r].clone())
        self.bias = None if lin.bias is None else nn.Parameter(lin.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split:
            return F.linear(F.linear(x, self.Qh), self.P * self.s, self.bias)
        return F.linear(x, (self.P * self.s) @ self.Qh, self.bias)


def factorised_names(sn) -> list[str]:
    """Module paths of the supernet's factorised weights in its dense full model."""
    return [p["module"] for t in sn.types for m in t.matrices for p in m["parts"]]


def svd_truncate(model: nn.Module, modules: list[str], keep: float) -> list[nn.Parameter]:
    """Swap every named Linear for its LowRankLinear at rank fraction `keep` (in place); the trainable s's."""
    out = []
    for name in modules:
        parent, _, leaf = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        lr = LowRankLinear(getattr(holder, leaf), keep)
        setattr(holder, leaf, lr)
        out.append(lr.s)
    return out


def prune_channels(model: nn.Module, keep: float,
                   score: Callable[[torch.Tensor], torch.Tensor] = lambda w: w.detach().pow(2)) -> None:
    """Channel pruning of every DiT block (in place), surgery by torch-pruning's pruning functions: MLP hidden,
    within-head attention dims (the same offsets in every head), per-block conditioning width. A channel's
    importance is the sum of `score(weight)` over its weights: L2 magnitude by default."""
    import torch_pruning as tp

    def drop(scores: torch.Tensor, k: int) -> list[int]:
        return sorted(torch.argsort(scores, descending=True)[k:].tolist())

    for blk in model.transformer_blocks:
        fc1, fc2 = blk.ff.net[0].proj, blk.ff.net[2]
        s = score(fc1.weight).sum(1) + score(fc2.weight).sum(0)
        idx = drop(s, max(1, round(keep * len(s))))
        tp.prune_linear_out_channels(fc1, idx)
        tp.prune_linear_in_channels(fc2, idx)
        a = blk.attn1
        heads, inner = a.heads, a.to_q.out_features
        hd = inner // heads
        s = (score(a.to_q.weight).sum(1) + score(a.to_k.weight).sum(1) + score(a.to_v.weight).sum(1)
             + score(a.to_out[0].weight).sum(0)).reshape(heads, hd).sum(0)  # one score per within-head offset
        off = drop(s, max(1, round(keep * hd)))
        idx = [h * hd + o for h in range(heads) for o in off]
        for lin in (a.to_q, a.to_k, a.to_v):
            tp.prune_linear_out_channels(lin, idx)
        tp.prune_linear_in_channels(a.to_out[0], idx)
        e = blk.norm1.emb
        lin2, table, ada = e.timestep_embedder.linear_2, e.class_embedder.embedding_table, blk.norm1.linear
        s = score(lin2.weight).sum(1) + score(table.weight).sum(0) + score(ada.weight).sum(0)
        idx = drop(s, max(1, round(keep * len(s))))
        tp.prune_linear_out_channels(lin2, idx)
        tp.prune_embedding_out_channels(table, idx)
        tp.prune_linear_in_channels(ada, idx)
        if blk is model.transformer_blocks[0]:  # DiT's output layer reuses block 0's conditioning
            tp.prune_linear_in_channels(model.proj_out_1, idx)


def taylor_importance(den: Denoiser, data, settings, batches: int = 4) -> dict[str, torch.Tensor]:
    """OFA-Diffusion's per-weight importance |w·∂L/∂w| of the denoising loss, summed over `batches` batches
    (drawn as the training loop draws them); keyed by the backbone's parameter names."""
    from fine_deploy.train.loop import draw_batch

    params = dict(den.model.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(batches):
        x0, noise, t, labels = draw_batch(den, data, settings, 10_000 + i)
        den.zero_grad(set_to_none=True)
        den(x0, noise, t, labels).backward()
        for n, p in params.items():
            if p.grad is not None:
                acc[n] += (p.detach() * p.grad).abs()
    den.zero_grad(set_to_none=True)
    return acc


def knob_model(method: str, dense: nn.Module, k: float, names: list[str],
               taylor: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, list[nn.Parameter]]:
    """(a copy of `dense` cut by `method` at knob k, the parameters retraining trains)."""
    m = copy.deepcopy(dense)
    if method == "svd":
        for p in m.parameters():
            p.requires_grad_(False)
        return m, svd_truncate(m, names, k)
    if method == "ofa_width":
        by_id = {id(p): taylor[n] for n, p in m.named_parameters()}
        prune_channels(m, k, score=lambda w: by_id[id(w)])
    elif method == "torch_pruning":
        prune_channels(m, k)
    else:
        raise ValueError(method)
    params = list(m.parameters())
    for p in params:
        p.requires_grad_(True)
    return m, params


def knob_value(model: nn.Module, method: str) -> dict[str, Any]:
    """What a knob model kept, for the JSON."""
    if method == "svd":
        lrs = [m for m in model.modules() if isinstance(m, LowRankLinear)]
        return {"split_layers": sum(m.split for m in lrs), "layers": len(lrs),
                "ranks": sorted({m.rank for m in lrs})}
    return {"params": sum(p.numel() for p in model.parameters())}


def choose_knob(grid: list[float], measured: list[float], budget: float) -> float | None:
    """The largest grid value whose measured latency is within `budget` (None: none is)."""
    ok = [k for k, m in zip(grid, measured, strict=True) if m <= budget]
    return max(ok) if ok else None


# --- export and timing ---------------------------------------------------------------------------------------


def export_module(model: nn.Module, sn, out: Path) -> Path:
    """`fine_deploy.export.api.export_module`: a baseline's ONNX, exported and checked as `fine-deploy export` does."""
    from fine_deploy.export.api import export_module as export

    export(model, sn, out, note="a baseline module of benchmarks/quality_at_latency.py, not a plan's subnet")
    return out


def time_dirs(dirs: list[Path]) -> list[float]:
    """Seconds per run of each export, all interleaved in one call (the PREDICTION protocol `bench` uses)."""
    from fine_deploy.export.calibrate import time_artifacts

    return time_artifacts([Path(d) for d in dirs])


def relative_timer(full_dir: Path, full_s: float,
                   timer: Callable[[list[Path]], list[float]] = time_dirs) -> Callable[[list[Path]], list[float]]:
    """A timer that runs the full model's export in the same interleaved call as `dirs` and returns each export's
    time x full_s / the full model's time in that call: interleaving many models (caches the others filled) and the
    load of the moment slow every model alike (the full model read 983 us alone, 1.1 ms among 36 exports), so
    a budget stated as a fraction of the full model is checked as that ratio."""

    def timed(dirs: list[Path]) -> list[float]:
        t = timer([full_dir, *dirs])
        timed.calls.append({"exports": len(dirs) + 1, "full_model_s": t[0]})
        return [x * full_s / t[0] for x in t[1:]]

    timed.calls = []
    return timed


# --- FINE: the planner at a measured budget ------------------------------------------------------------------


@dataclass
class FinePick:
    budget_s: float
    ok: bool
    plan: Path | None = None
    export: Path | None = None
    measured_s: float | None = None
    tries: list[dict[str, Any]] = field(default_factory=list)
    why: str | None = None


def plan_at(supernet: str | Path | None, latency_s: float | None, out: Path, mem: str = "2GB"):
    """The product's plan (host device, measured LUT) at `latency_s` (None: no latency budget), written to `out`."""
    from fine_deploy.planner.plan import plan

    return plan("host", mem, latency=None if latency_s is None else f"{latency_s * 1e6:.3f}us",
                supernet=supernet, output=out, show=False)


def export_plan(plan_path: Path, out: Path, supernet: str | Path | None = None) -> Path:
    from fine_deploy.export import export

    export(plan_path, "onnx", out, supernet=supernet)
    return out


def fine_picks(supernet: str | Path | None, budgets: list[float], work: Path, tries: int = 3,
               progress: Callable[[str], None] = lambda _s: None,
               timer: Callable[[list[Path]], list[float]] = time_dirs, slack: float = SLACK) -> list[FinePick]:
    """Per budget, the planner's subnet whose export measures within it: plan at B, export, time (all pending
    budgets interleaved in one call per round); measured m over B, or under B by more than `slack` (the knob
    methods take the largest size that fits, so FINE may use its slack too), re-plans at asked·B/m; at most
    `tries` plans. The pick is the within-budget plan that measured slowest; none: infeasible, with the reason."""
    from fine_deploy.errors import FineDeployError

    picks = [FinePick(b, False) for b in budgets]
    target = list(budgets)
    active = set(range(len(picks)))
    for attempt in range(tries):
        pending = []
        for i in sorted(active):
            p = picks[i]
            path, d = work / f"fine_plan{i}_{attempt}.json", work / f"fine{i}_{attempt}"
            progress(f"fine: plan at {target[i] * 1e6:.0f} us (budget {p.budget_s * 1e6:.0f} us, try {attempt + 1})")
            try:
                pl = plan_at(supernet, target[i], path)
            except FineDeployError as e:
                if not p.ok:
                    p.why = f"planner: {e}"
                active.discard(i)
                continue
            if p.tries and pl.subnet == p.tries[-1]["subnet"]:  # the planner gives the same subnet: nothing to gain
                active.discard(i)
                continue
            export_plan(path, d, supernet)
            p.tries.append({"asked_s": target[i], "predicted_s": pl.predicted.get("latency_s"), "subnet": pl.subnet})
            pending.append((i, path, d))
        if not pending:
            break
        measured = timer([d for _, _, d in pending])
        for (i, path, d), m in zip(pending, measured, strict=True):
            p = picks[i]
            p.tries[-1]["measured_s"] = m
            if m <= p.budget_s and (p.measured_s is None or m > p.measured_s):
                p.ok, p.plan, p.export, p.measured_s, p.why = True, path, d, m, None
            if not p.ok:
                p.why = f"measured {m * 1e6:.0f} us > budget after {len(p.tries)} plan(s)"
            if p.ok and p.measured_s >= (1 - slack) * p.budget_s:
                active.discard(i)
            else:
                target[i] = target[i] * p.budget_s / m
    return picks


# --- training ------------------------------------------------------------------------------------------------


@dataclass
class Training:
    """What every method shares: data, batch, steps, seed; the σ and all-weight learning rates."""

    train_set: Any
    heldout: Any
    steps: int
    batch_size: int
    seed: int
    sigma_lr: float
    lr: float
    cfg_dropout: float

    def settings(self, lr: float):
        from fine_deploy.train.retrain import retrain_settings

        return retrain_settings(self.batch_size, lr, self.steps, self.seed, self.cfg_dropout)


def train_steps(mod: nn.Module, params: list[nn.Parameter], tr: Training, lr: float, label: str,
                choose_config=None):
    """`tr.steps` AdamW steps of `mod` on the shared data and batches (the product's loop); the LoopState."""
    from fine_deploy.train.loop import LoopState, make_accelerator, run_steps

    acc = make_accelerator()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model, opt = acc.prepare(mod, opt)
    s = tr.settings(lr)
    return run_steps(acc, model, opt, mod, tr.train_set, s, LoopState(), tr.steps, params=params,
                     choose_config=choose_config, label=label)


def fine_subnet(parent, plan_path: Path, fresh: bool = False):
    """(supernet restricted to the plan's depth, its config, the plan): what `fine-deploy retrain` retrains.
    With `fresh`, the same architecture with every weight drawn anew: diffusers' own init of a new module of
    that depth, factorised as the recipe's training starts (the scratch baseline)."""
    from fine_deploy.planner.schema import Plan
    from fine_deploy.supernet.convert import model_to_supernet
    from fine_deploy.supernet.core import SubnetConfig, Supernet
    from fine_deploy.train.retrain import restrict_depth

    p = Plan.load(plan_path)
    cfg = parent.validate(SubnetConfig.from_json(p.subnet))
    sub = restrict_depth(parent, cfg.depth)
    if fresh:
        torch.manual_seed(int(((parent.spec.provenance or {}).get("recipe") or {}).get("seed", 0)) + 1)
        model = sub.adapter.build(dict(sub.spec.config)).eval()
        tensors = model_to_supernet(model, max_rank=max(t.max_rank for t in sub.types), als_iters=0).tensors
        if {k: tuple(v.shape) for k, v in tensors.items()} != {k: tuple(v.shape) for k, v in sub.tensors.items()}:
            raise RuntimeError("a fresh module of the plan's depth does not factorise like the plan's subnet")
        sub = Supernet(copy.deepcopy(sub.spec), tensors)
    return sub, replace(cfg, depth=None), p


def save_with_plan(tsn, plan, out: Path) -> Path:
    """A trained TrainableSupernet saved as a supernet directory with `plan` re-pointed at it (as retrain does)."""
    from fine_deploy.train.retrain import PLAN_FILE

    sn = tsn.to_supernet()
    sn.save(out)
    p = copy.deepcopy(plan)
    p.supernet = {"path": str(out.resolve()), "sha256": sn.content_hash}
    p.save(out / PLAN_FILE)
    return out / PLAN_FILE


# --- quality --------------------------------------------------------------------------------------------------


def evaluate(mod, heldout, real, *, samples: int, sample_steps: int, guidance: float, draws: int = 2,
             config=None) -> dict[str, float]:
    """Held-out ε-MSE (fixed draws), and the digits-classifier Fréchet distance and class accuracy of samples
    (train.metrics.quality, what the model card reports)."""
    from fine_deploy.train.metrics import heldout_loss, quality

    mod.eval()
    out = {"heldout_loss": round(heldout_loss(mod, heldout, config, draws=draws), 5)}
    if samples <= 0:
        return out | {"frechet_distance": None, "class_accuracy": None}
    q = quality(mod, real, config, samples=samples, steps=sample_steps, guidance_scale=guidance)
    return out | {"frechet_distance": round(q["frechet_distance"], 3), "class_accuracy": round(q["class_accuracy"], 3)}


# --- the benchmark ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole benchmark; returns the results record (also what tests check)."""
    from fine_deploy.export.calibrate import profile_supernet
    from fine_deploy.supernet.core import SubnetConfig, load_supernet
    from fine_deploy.supernet.schedule import default_guidance
    from fine_deploy.train.data import load_images
    from fine_deploy.train.engine import TrainableSupernet, sigma_only
    from fine_deploy.train.retrain import recipe_split

    t0 = time.time()
    load = [os.getloadavg()[0]]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="quality-at-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["FINE_DEPLOY_CACHE"] = str(work / "cache")
    supernet = args.supernet  # None: the shipped default
    sn = load_supernet(supernet)
    rec = dict((sn.spec.provenance or {}).get("recipe") or {})
    fractions = [float(x) for x in str(args.fractions).split(",")]
    grid = sorted(float(x) for x in str(args.grid).split(","))
    _, (train_set, heldout) = recipe_split(sn)
    recipe_lr = float(rec.get("lr", 1e-3))
    tr = Training(train_set, heldout, args.steps, args.batch_size or int(rec.get("batch_size", 64)),
                  args.seed, args.sigma_lr, args.lr or recipe_lr,
                  float(rec.get("cfg_dropout", 0.1)) if sn.adapter.num_classes(sn.spec.config) else 0.0)
    real = load_images("digits", int(sn.spec.config["sample_size"]), 1)
    guidance = default_guidance(sn)
    qkw = {"samples": args.samples, "sample_steps": args.sample_steps, "guidance": guidance,
           "draws": int(rec.get("heldout_draws", 2))}

    # 1. the full model and the budgets
    if args.profile:
        log("profile: host LUT and end-to-end calibration")
        profile_supernet("host", supernet=supernet, points=args.calibrate_subnets)
    plan_at(supernet, None, work / "full_plan.json")
    full_dir = export_plan(work / "full_plan.json", work / "full", supernet)
    full_s = time_dirs([full_dir])[0]
    budgets = [f * full_s for f in fractions]
    log(f"full model {full_s * 1e6:.0f} us; budgets " + ", ".join(f"{b * 1e6:.0f} us" for b in budgets))

    # 2a. fine's plans at the measured budgets
    timer = relative_timer(full_dir, full_s)
    fine = fine_picks(supernet, budgets, work, tries=args.tries, progress=log, timer=timer)

    # 2b/c/e. the knob methods over the grid, timed in one interleaved call
    full_tsn = TrainableSupernet(sn, rec.get("scheduler"))
    dense = sn.subnet(SubnetConfig()).float().eval()
    names = factorised_names(sn)
    taylor = taylor_importance(Denoiser(copy.deepcopy(dense), sn), train_set, tr.settings(tr.lr),
                               batches=args.importance_batches)
    cand_dirs, cand_keys = [], []
    for method in KNOB_METHODS:
        for k in grid:
            log(f"export {method} k={k}")
            m, _ = knob_model(method, dense, k, names, taylor)
            cand_dirs.append(export_module(m, sn, work / f"grid_{method}_{k}"))
            cand_keys.append((method, k))
    log(f"timing {len(cand_dirs)} grid exports, interleaved")
    grid_measured = dict(zip(cand_keys, timer(cand_dirs), strict=True))

    # choices per budget
    choice: list[dict[str, Any]] = []
    for bi, b in enumerate(budgets):
        row = {"fine": fine[bi]}
        for method in KNOB_METHODS:
            row[method] = choose_knob(grid, [grid_measured[(method, k)] for k in grid], b)
        choice.append(row)

    # 2. retraining, the same steps for all; a model two budgets share is trained once
    trained: dict[tuple, dict[str, Any]] = {}
    final_dirs: list[Path] = [full_dir]
    step_counts: dict[str, list[int]] = {m: [] for m in METHODS}

    def finish(key, mod, params_trainable: int, state, export_dir: Path, config=None, subnet=None, extra=None):
        step_counts[key[0]].append(len(state.losses))
        trained[key] = {"mod": mod, "config": config, "dir": export_dir, "steps": len(state.losses),
                        "trainable": params_trainable, "subnet": subnet, "extra": extra or {}}
        final_dirs.append(export_dir)

    for bi, row in enumerate(choice):
        p = row["fine"]
        if p.ok:
            for method, fresh in (("fine", False), ("scratch", True)):
                sub, cfg, plan = fine_subnet(sn, p.plan, fresh)
                tsn = TrainableSupernet(sub, rec.get("scheduler"))
                if method == "fine":  # FINE's light retraining: σ only, at the σ lr
                    params, lr = sigma_only(tsn), tr.sigma_lr
                else:  # from scratch: every weight, at the recipe's lr
                    params, lr = list(tsn.parameters()), tr.lr
                    for q in params:
                        q.requires_grad_(True)
                log(f"{method}: training budget {bi}'s subnet ({'σ only' if method == 'fine' else 'all weights'})")
                st = train_steps(tsn, params, tr, lr, f"{method} (budget {bi})", choose_config=lambda _s, c=cfg: c)
                pf = save_with_plan(tsn, plan, work / f"{method}_sn{bi}")
                finish((method, bi), tsn, sum(q.numel() for q in params), st,
                       export_plan(pf, work / f"final_{method}{bi}"), cfg, subnet=plan.subnet)
        for method in KNOB_METHODS:
            k = row[method]
            if k is None or (method, k) in trained:
                continue
            m, params = knob_model(method, dense, k, names, taylor)
            den = Denoiser(m, sn)
            log(f"{method}: retraining k={k}")
            lr = tr.sigma_lr if method in SIGMA_ONLY else tr.lr
            st = train_steps(den, params, tr, lr, f"{method} k={k}")
            finish((method, k), den, sum(q.numel() for q in params), st,
                   export_module(m, sn, work / f"final_{method}_{k}"), subnet={"k": k, **knob_value(m, method)})

    lut = work / "cache" / "measured" / "host-onnxruntime-cpu.json"

    # 3. every final model timed in one interleaved call
    load.append(os.getloadavg()[0])
    log(f"timing {len(final_dirs)} final exports, interleaved")
    final_measured = dict(zip(map(str, final_dirs), time_dirs(final_dirs), strict=True))
    load.append(os.getloadavg()[0])

    # 4. quality
    log("quality of the full model")
    full_q = evaluate(full_tsn, heldout, real, **qkw)
    for key, t in trained.items():
        log(f"quality of {key[0]} {key[1]}")
        t["quality"] = evaluate(t["mod"], heldout, real, config=t["config"], **qkw)

    rows = []
    for bi, (f, b) in enumerate(zip(fractions, budgets, strict=True)):
        methods: dict[str, Any] = {}
        for method in METHODS:
            key = ("fine" if method == "fine" else "scratch", bi) if method in ("fine", "scratch") else \
                (method, choice[bi][method])
            t = trained.get(key)
            if t is None:
                why = (fine[bi].why if method in ("fine", "scratch") else
                       f"no grid value of k measures within the budget (grid {grid})")
                methods[method] = {"feasible": False, "why": why, "measured_latency_s": None,
                                   "frechet_distance": None, "heldout_loss": None, "class_accuracy": None,
                                   "subnet": None, "trainable": None, "optimizer_steps": 0}
            else:
                m_s = final_measured[str(t["dir"])]
                rel = m_s / final_measured[str(full_dir)]
                methods[method] = {"feasible": True, "measured_latency_s": m_s, "fraction_of_full": round(rel, 4),
                                   "within_budget": rel <= f,
                                   **t["quality"], "subnet": t["subnet"], "trainable": t["trainable"],
                                   "optimizer_steps": t["steps"]}
            if method in KNOB_METHODS:
                methods[method]["chosen_by"] = {"grid": grid, "grid_measured_s": [grid_measured[(method, k)]
                                                                                  for k in grid]}
            if method in ("fine", "scratch"):
                methods[method]["plan_tries"] = fine[bi].tries
                methods[method]["pick_measured_s"] = fine[bi].measured_s
            if method == "fine" and fine[bi].plan is not None:
                # what the plan told the user before retraining (the sum of single-knob increases)
                from fine_deploy.planner.schema import Plan

                methods[method]["plan_quality_estimate"] = Plan.load(fine[bi].plan).predicted["quality"].get("estimate")
        rows.append({"budget_s": b, "fraction": f, "budget_in_final_call_s": f * final_measured[str(full_dir)],
                     "methods": methods})

    result = {
        "schema": 1, "benchmark": "quality_at_latency",
        "provenance": provenance(args, supernet or "default", lut if lut.is_file() else None),
        # budgets are fractions of budget_reference_s (the full model timed alone); every choice was timed in one
        # call with the full model and scaled by it (relative_timer); measured_latency_s of every model (this one
        # too) is the final interleaved call's, and fraction_of_full compares it with the full model in that call
        "full_model": {"measured_latency_s": final_measured[str(full_dir)], "budget_reference_s": full_s, **full_q},
        "budgets": rows,
        "settings": {"optimizer": "AdamW (weight decay 0)", "optimizer_steps": tr.steps, "batch_size": tr.batch_size,
                     "seed": tr.seed, "data": f"the recipe's train split ({len(train_set)} images)",
                     "heldout_images": len(heldout), "sigma_lr": tr.sigma_lr, "all_weights_lr": tr.lr,
                     "sigma_only_methods": list(SIGMA_ONLY),
                     "all_weight_methods": [m for m in METHODS if m not in SIGMA_ONLY],
                     "schedule": "retrain_settings: warm-up min(10, steps/10), cosine to 0.1 lr, grad clip 1.0",
                     "grid": grid, "importance_batches": args.importance_batches,
                     "timing": "export.calibrate.time_artifacts, runtime.timing.PREDICTION, interleaved; every "
                               "choice timed with the full model in the call and scaled by it",
                     "timing_calls": timer.calls + [{"exports": len(final_dirs), "final": True,
                                                     "full_model_s": final_measured[str(full_dir)]}],
                     "samples": args.samples, "sampler": f"DDIM {args.sample_steps} steps", "guidance": guidance,
                     "metric_note": METRIC_NOTE, "width_note": WIDTH_NOTE, "fine_plan_tries": args.tries},
        "wall_s": round(time.time() - t0, 1), "load_average": load, "threads": torch.get_num_threads(),
    }
    result["findings"] = findings(result)
    result["step_counts"] = step_counts
    return result


def subnet_text(sub: dict[str, Any]) -> str:
    """k=0.4, or d=4 r=qkv:96,… of a plan's subnet."""
    if "k" in sub:
        return f"k={sub['k']}"
    return f"d={sub.get('depth')} r=" + ",".join(f"{t}:{r}" for t, r in (sub.get("ranks") or {}).items())


def findings(result: dict[str, Any]) -> list[str]:
    """One sentence per budget: who wins on Fréchet distance (held-out loss without samples); where FINE loses,
    why."""
    out = []
    for row in result["budgets"]:
        ms = {m: r for m, r in row["methods"].items() if r["feasible"]}
        metric = "frechet_distance" if any(r["frechet_distance"] is not None for r in ms.values()) else "heldout_loss"
        head = f"at {row['fraction']:.2f}x ({row['budget_s'] * 1e6:.0f} us)"
        if not ms:
            out.append(f"{head}: no method meets the budget")
            continue
        best = min(ms, key=lambda m: ms[m][metric])
        s = f"{head}: {best} wins on {metric} ({ms[best][metric]})"
        f = row["methods"]["fine"]
        if not f["feasible"]:
            s += f"; FINE has no subnet within it ({f['why']})"
        elif best != "fine":
            how = {"svd": "keeps every block and cuts each layer's own rank",
                   "scratch": "has FINE's very architecture but trains every weight, not σ alone"}.get(
                best, "keeps every block and cuts channels (widths the DiT supernet cannot express), training all "
                      "weights")
            s += (f"; FINE loses ({f[metric]}): its knobs are ranks and depth only, so it meets the budget with "
                  f"{subnet_text(f['subnet'])}, while {best} {how}")
        over = [m for m, r in ms.items() if not r["within_budget"]]
        if over:
            s += f" (re-timed with all final models, {', '.join(over)} read over the budget's fraction)"
        out.append(s)
    return out


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"quality at equal measured latency ({METRIC_NOTE})")
    for c in ("budget", "method", "measured", "× full", "heldout", "FD", "cls acc", "subnet", "steps"):
        t.add_column(c, justify="right" if c not in ("method", "subnet") else "left")
    fm = result["full_model"]
    t.add_row("full", "full model", f"{fm['measured_latency_s'] * 1e6:.0f} us", "1.000", str(fm["heldout_loss"]),
              str(fm["frechet_distance"]), str(fm["class_accuracy"]), "", "")
    for row in result["budgets"]:
        for m, r in row["methods"].items():
            if not r["feasible"]:
                t.add_row(f"{row['fraction']:.2f}x", m, "-", "-", "-", "-", "-", (r["why"] or "")[:60], "0")
                continue
            sub = subnet_text(r["subnet"])
            t.add_row(f"{row['fraction']:.2f}x", m, f"{r['measured_latency_s'] * 1e6:.0f} us",
                      f"{r['fraction_of_full']:.3f}" + ("" if r["within_budget"] else " (over)"),
                      str(r["heldout_loss"]), str(r["frechet_distance"]), str(r["class_accuracy"]), sub,
                      str(r["optimizer_steps"]))
    Console(width=150).print(t)
    for f in result["findings"]:
        print(f"- {f}")


def plot(result: dict[str, Any], png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    fm = result["full_model"]
    for ax, metric, label in ((axes[0], "frechet_distance", f"Fréchet distance ({METRIC_NOTE})"),
                              (axes[1], "heldout_loss", "held-out denoising loss (ε-MSE)")):
        for m in METHODS:
            pts = sorted((r["methods"][m]["fraction_of_full"], r["methods"][m][metric])
                         for r in result["budgets"]
                         if r["methods"][m]["feasible"] and r["methods"][m][metric] is not None)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=m)
        if fm[metric] is not None:
            ax.scatter([1.0], [fm[metric]], marker="*", s=180, c="k", label="full model", zorder=5)
        for r in result["budgets"]:
            ax.axvline(r["fraction"], color="0.8", lw=0.8, ls="--", zorder=0)
        ax.set_xlabel(f"measured latency / full model's ({fm['measured_latency_s'] * 1e6:.0f} us), one interleaved "
                      "call", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.set_yscale("log")  # the methods' qualities span two orders of magnitude
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"quality at equal measured latency, {result['settings']['optimizer_steps']} retraining steps each")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supernet", type=Path, default=None, help="a supernet directory (default: the shipped one)")
    # the default's fastest subnet (depth 3) measures ~0.46x its full model and the width methods' smallest grid
    # value ~0.49x: 0.35x is out of every method's reach, so the third budget sits between 0.75x and 0.5x
    ap.add_argument("--fractions", default="0.75,0.6,0.5", help="budgets as fractions of the full model's time")
    ap.add_argument("--grid", default=",".join(map(str, GRID)), help="knob values k of svd/ofa_width/torch_pruning")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of every method")
    ap.add_argument("--batch-size", type=int, default=None, help="batch of every method (default: the recipe's)")
    ap.add_argument("--sigma-lr", type=float, default=5e-3, help="lr of the σ-only methods (fine, svd)")
    ap.add_argument("--lr", type=float, default=None, help="lr of the all-weight methods (default: the recipe's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--importance-batches", type=int, default=4, help="batches of ofa_width's Taylor importance")
    ap.add_argument("--tries", type=int, default=3, help="FINE plans per budget at most")
    ap.add_argument("--calibrate-subnets", type=int, default=24, help="profile's end-to-end calibration subnets")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="plan on the host profile's roofline instead of a measured LUT (a quick check, not a result)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (exports, plans, the LUT cache)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return ap


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    args = parser().parse_args(argv)
    console = Console(stderr=True)
    result = run(args, log=lambda s: console.log(s))
    result.pop("step_counts", None)
    from fine_deploy.fileio import atomic_write_json

    atomic_write_json(args.json, result)
    png = plot(result, args.json.with_suffix(".png"))
    print_table(result)
    print(f"wrote {args.json} and {png} ({result['wall_s']} s, load average {result['load_average']})")
    fine_ok = [r["methods"]["fine"]["heldout_loss"] for r in result["budgets"] if r["methods"]["fine"]["feasible"]]
    return 0 if all(math.isfinite(x) for x in fine_ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
