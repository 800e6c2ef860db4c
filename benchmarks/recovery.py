"""Recovery study (issue 19): a dense model converted to a supernet, then distilled from itself, against
per-layer SVD of the same model with the same recovery steps.

1. teacher: a dense DiT at the dit-digits recipe's configuration (class-conditional, 6 layers, width 64),
   trained on scikit-learn digits with the plain ε-prediction loss through the project's training loop
   (accelerate), saved as diffusers folders (transformer/ + scheduler/);
2. `convert` with --max-rank 64 = min(m1, m2): convert's own cap at published sizes (the digits types are
   small enough that convert would otherwise fit them exactly, so the cap is set to what it is there);
3. FINE: `recover` (= `fine-deploy train --from-supernet S --teacher DIR --data digits`) for N steps;
4. per-layer SVD: every typed weight W_l = P_l·diag(s_l)·Q_lᵀ, trained (P, s, Q) with the same distillation
   loss, data, steps, learning rate, batch and nested-size sampling (OFA weights over sizes, a size keeping
   that fraction of each method's largest rank);
5. for each parameter budget (fraction of the dense typed weights, each method at the largest rank that fits):
   relative output MSE vs the dense original on fixed noisy held-out digits, before and after recovery.

Writes benchmarks/results/recovery.json (git commit, input hashes, arguments) and recovery.png.

    OMP_NUM_THREADS=2 nice python benchmarks/recovery.py --teacher-steps 1500 --steps 400
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from provenance import provenance  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

from fine_deploy.fileio import atomic_write_json, sha256_file  # noqa: E402
from fine_deploy.supernet.core import SubnetConfig, Supernet  # noqa: E402
from fine_deploy.train.data import split  # noqa: E402
from fine_deploy.train.loop import LoopSettings, LoopState, make_accelerator, run_steps, size_generator  # noqa: E402
from fine_deploy.train.pretrain import recipe_data, size_weights  # noqa: E402
from fine_deploy.train.recipe import load_recipe  # noqa: E402
from fine_deploy.train.recover import SIZES, distill_error, recover  # noqa: E402

BUDGETS = (0.05, 0.1, 0.15, 0.2)  # fraction of the dense typed weights' parameters




class Dense(nn.Module):
    """A stock diffusers DiT under the training loop's interface (ε-prediction loss)."""

    def __init__(self, model: nn.Module, scheduler: dict, adapter, spec_config: dict) -> None:
        from diffusers import DDPMScheduler

        super().__init__()
        self.model = model
        self.noise_scheduler = DDPMScheduler(**scheduler)
        self.adapter, self.config = adapter, spec_config
        self.spec = type("Spec", (), {"config": spec_config})()
        self.class_conditional = True
        self.active = None

    def forward(self, x0, noise, t, labels=None):
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        return F.mse_loss(self.model(noisy, timestep=t, class_labels=labels).sample, noise)


class PerLayerSVD(nn.Module):
    """Every typed weight of a dense model as its own SVD factors (P_l, s_l, Q_l), truncated to a prefix."""

    def __init__(self, teacher: nn.Module, sn: Supernet, kmax: dict[str, int], scheduler: dict) -> None:
        import copy

        from diffusers import DDPMScheduler

        super().__init__()
        self.model = copy.deepcopy(teacher)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.teacher = teacher
        self.noise_scheduler = DDPMScheduler(**scheduler)
        self.adapter, self.spec = sn.adapter, sn.spec
        self.class_conditional = True
        self.active: float = 1.0
        self.P, self.s, self.Q = nn.ParameterDict(), nn.ParameterDict(), nn.ParameterDict()
        self.parts: dict[str, list[tuple[str, int, int]]] = {}
        self.kmax = {}
        for t in sn.types:
            for m in t.matrices:
                W = torch.cat([self.model.get_submodule(p["module"]).weight.detach()
                               .reshape(p["rows"][1] - p["rows"][0], -1) for p in m["parts"]])
                P, s, Qh = torch.linalg.svd(W.double(), full_matrices=False)
                k = kmax[t.name]
                key = m["name"].replace(".", "__")
                self.P[key], self.s[key] = nn.Parameter(P[:, :k].float()), nn.Parameter(s[:k].float())
                self.Q[key] = nn.Parameter(Qh[:k].T.float().contiguous())
                self.parts[key] = [(p["module"], *p["rows"]) for p in m["parts"]]
                self.kmax[key] = k

    def params_at(self, ranks: dict[str, int]) -> dict[str, torch.Tensor]:
        out = {}
        for key, parts in self.parts.items():
            k = ranks[key]
            W = (self.P[key][:, :k] * self.s[key][:k]) @ self.Q[key][:, :k].T
            for module, a, b in parts:
                out[f"{module}.weight"] = W[a:b]
        return out

    def ranks_at(self, size: float) -> dict[str, int]:
        return {key: max(1, math.ceil(size * k)) for key, k in self.kmax.items()}

    def predict(self, noisy, t, labels, ranks):
        return functional_call(self.model, self.params_at(ranks), args=(),
                               kwargs={"hidden_states": noisy, "timestep": t, "class_labels": labels}).sample

    def forward(self, x0, noise, t, labels=None):
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        with torch.no_grad():
            target = self.teacher(noisy, timestep=t, class_labels=labels).sample
        return F.mse_loss(self.predict(noisy, t, labels, self.ranks_at(self.active)), target)


@torch.no_grad()
def svd_error(mod: PerLayerSVD, data, ranks: dict[str, int], draws: int = 2, seed: int = 4321) -> float:
    """distill_error's metric (same fixed noise, timesteps and held-out images) for the SVD model."""
    g = torch.Generator().manual_seed(seed)
    T = mod.noise_scheduler.config.num_train_timesteps
    x0 = data.images.repeat(draws, 1, 1, 1)
    labels = data.labels.repeat(draws)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, T, (len(x0),), generator=g)
    num = den = 0.0
    for i in range(0, len(x0), 256):
        sl = slice(i, i + 256)
        noisy = mod.noise_scheduler.add_noise(x0[sl], noise[sl], t[sl])
        y_t = mod.teacher(noisy, timestep=t[sl], class_labels=labels[sl]).sample.double()
        y_s = mod.predict(noisy, t[sl], labels[sl], ranks).double()
        num += float(((y_s - y_t) ** 2).sum())
        den += float((y_t**2).sum())
    return num / den


def budget_ranks(sn: Supernet, budget: float) -> tuple[dict[str, int], dict[str, int]]:
    """Per type, the largest FINE rank option and per-layer SVD rank whose parameters fit `budget`·dense."""
    fine, svd = {}, {}
    for t in sn.types:
        L, m1, m2 = t.layers, t.m1, t.m2
        cap = budget * L * m1 * m2
        opts = [r for r in t.rank_options if not t.is_source(r) and r * (m1 + m2) + L * r <= cap]
        fine[t.name] = max(opts) if opts else min(t.rank_options)
        svd[t.name] = max(1, int(cap // (L * (m1 + m2 + 1))))
    return fine, svd


def train_teacher(recipe, steps: int, out: Path, seed: int) -> tuple[nn.Module, dict]:
    from fine_deploy.backbones import adapter_for
    from fine_deploy.supernet.schedule import Schedule, write_scheduler

    torch.manual_seed(seed)
    ad = adapter_for(recipe.backbone)
    model = ad.build(dict(recipe.config)).train(False)
    train_set, _ = recipe_data(recipe)
    mod = Dense(model, recipe.scheduler, ad, dict(recipe.config))
    acc = make_accelerator()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    m, opt = acc.prepare(mod, opt)
    settings = LoopSettings(recipe.batch_size, recipe.lr, steps, seed, recipe.warmup_steps, recipe.grad_clip,
                            recipe.cfg_dropout)
    state = run_steps(acc, m, opt, mod, train_set, settings, LoopState(), steps, params=params,
                      label="dense teacher (ε loss)")
    model.eval()
    model.save_pretrained(out / "transformer")
    from diffusers import DDPMScheduler

    full = {k: v for k, v in DDPMScheduler(**recipe.scheduler).config.items() if not k.startswith("_")}
    write_scheduler(out, Schedule(full, f"recipe {recipe.name}"))
    return model, {"steps": steps, "final_loss": sum(state.losses[-50:]) / 50}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-steps", type=int, default=1500)
    ap.add_argument("--steps", type=int, default=400, help="recovery steps, both methods")
    ap.add_argument("--max-rank", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="scratch folder (a teacher already there is reused)")
    ap.add_argument("--json", default="benchmarks/results/recovery.json")
    ap.add_argument("--png", default="benchmarks/results/recovery.png")
    args = ap.parse_args()
    t_start = time.time()
    torch.set_num_threads(1)  # a shared 2-core host: 2 threads spin-wait far slower than 1
    work = Path(args.work or tempfile.mkdtemp(prefix="fine-deploy-recovery-"))
    recipe = load_recipe("dit-digits")
    teacher_dir = work / "teacher"
    if (teacher_dir / "transformer" / "config.json").is_file():
        from diffusers import DiTTransformer2DModel

        teacher = DiTTransformer2DModel.from_pretrained(str(teacher_dir / "transformer")).eval()
        tinfo = json.loads((work / "teacher.json").read_text())
    else:
        t0 = time.time()
        teacher, tinfo = train_teacher(recipe, args.teacher_steps, teacher_dir, args.seed)
        tinfo["wall_s"] = round(time.time() - t0, 1)
        (work / "teacher.json").write_text(json.dumps(tinfo))
    for p in teacher.parameters():
        p.requires_grad_(False)

    from fine_deploy.supernet.convert import convert

    t0 = time.time()
    sn = convert(teacher_dir / "transformer", work / "sn", max_rank=args.max_rank)
    convert_s = time.time() - t0
    # the evaluation images: the digits held-out split that recover() also holds out (same seed, same fraction)
    from fine_deploy.train.data import load_images

    _, heldout = split(load_images("digits", 16, 1), 0.15, args.seed)
    t0 = time.time()
    rec = recover(work / "sn", teacher_dir / "transformer", work / "sn-recovered", data="digits", steps=args.steps,
                  lr=args.lr, batch_size=args.batch_size, seed=args.seed, checkpoint_every=0)
    fine_s = time.time() - t0
    t0 = time.time()  # the same recovery, data-free: on the teacher's own DDIM samples
    rec_free = recover(work / "sn", teacher_dir / "transformer", work / "sn-recovered-datafree", data=None,
                       steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed, checkpoint_every=0)
    free_s = time.time() - t0

    from fine_deploy.train.engine import TrainableSupernet
    from fine_deploy.train.recover import teacher_schedule

    sched = teacher_schedule(sn, teacher_dir / "transformer")
    before_t, after_t = TrainableSupernet(sn, sched).eval(), TrainableSupernet(rec, sched).eval()
    free_t = TrainableSupernet(rec_free, sched).eval()

    # per-layer SVD: the same largest budget's rank is its largest size; the same recovery
    _, svd_max = budget_ranks(sn, max(BUDGETS))
    svd = PerLayerSVD(teacher, sn, svd_max, sched)
    svd_params = [*svd.P.values(), *svd.s.values(), *svd.Q.values()]
    rows = []
    key_of = {m["name"].replace(".", "__"): t.name for t in sn.types for m in t.matrices}

    def svd_ranks(ranks_by_type: dict[str, int]) -> dict[str, int]:
        return {key: ranks_by_type[key_of[key]] for key in svd.parts}

    before_svd = {b: svd_error(svd, heldout, svd_ranks(budget_ranks(sn, b)[1])) for b in BUDGETS}
    t0 = time.time()
    acc = make_accelerator()
    opt = torch.optim.AdamW(svd_params, lr=args.lr, weight_decay=0.0)
    m, opt = acc.prepare(svd, opt)
    settings = LoopSettings(args.batch_size, args.lr, args.steps, args.seed, warmup_steps=min(50, args.steps // 10),
                            grad_clip=1.0)
    weights = size_weights(len(SIZES), 3.0)
    train_set, _ = split(load_images("digits", 16, 1), 0.15, args.seed)
    svd_state = run_steps(acc, m, opt, svd, train_set, settings, LoopState(), args.steps, params=svd_params,
                          choose_config=lambda s: SIZES[int(torch.multinomial(weights, 1,
                                                                               generator=size_generator(settings, s)))],
                          label="per-layer SVD recovery (same loss, data, steps)")
    svd_s = time.time() - t0
    svd.eval()
    typed_dense = sum(t.layers * t.m1 * t.m2 for t in sn.types)
    for b in BUDGETS:
        fr, sr = budget_ranks(sn, b)
        cfg = SubnetConfig(ranks=fr)
        fine_params = sum(t.params_at(fr[t.name])["shared_basis"] for t in sn.types)
        svd_p = sum(t.layers * sr[t.name] * (t.m1 + t.m2 + 1) for t in sn.types)
        rows.append({
            "budget": b, "fine_ranks": fr, "svd_ranks": sr,
            "fine_params_fraction": round(fine_params / typed_dense, 4),
            "svd_params_fraction": round(svd_p / typed_dense, 4),
            "fine_before": distill_error(before_t, teacher, heldout, cfg),
            "fine_after": distill_error(after_t, teacher, heldout, cfg),
            "fine_after_datafree": distill_error(free_t, teacher, heldout, cfg),
            "svd_before": before_svd[b],
            "svd_after": svd_error(svd, heldout, svd_ranks(sr)),
        })
    conv0, conv1 = sn.spec.conversion, rec.spec.conversion
    weights = teacher_dir / "transformer" / "diffusion_pytorch_model.safetensors"
    inputs = {"teacher_weights_sha256": sha256_file(weights),
              "recipe_sha256": hashlib.sha256(json.dumps(recipe.to_json(), sort_keys=True).encode()).hexdigest(),
              "digits_sha256": hashlib.sha256(load_images("digits", 16, 1).images.numpy().tobytes()).hexdigest()}
    prov = provenance(args, {"converted": sn, "recovered": rec, "recovered_datafree": rec_free}, **inputs)
    record = {
        "schema": 1, "benchmark": "recovery", "provenance": prov, "git_commit": prov["git_commit"],
        "args": prov["args"], "inputs": inputs,
        "command": "python benchmarks/recovery.py " + " ".join(sys.argv[1:]),
        "metric": "relative output MSE vs the dense teacher, fixed noisy held-out digits (270 images x 2 draws)",
        "teacher": tinfo,
        "conversion": {"before": {"factors_only_rel_mse": conv0["factors_only"]["rel_mse"],
                                  "full_model_rel_mse": conv0["full_model"]["rel_mse"],
                                  "types": {k: v["output"]["rel_mse"] for k, v in conv0["types"].items()}},
                       "after": {"factors_only_rel_mse": conv1["factors_only"]["rel_mse"],
                                 "full_model_rel_mse": conv1["full_model"]["rel_mse"],
                                 "types": {k: v["output"]["rel_mse"] for k, v in conv1["types"].items()}},
                       "inputs": conv0["inputs"]},
        "recovery": {"fine": rec.spec.provenance["recovery"], "fine_datafree": rec_free.spec.provenance["recovery"],
                     "svd_loss_curve": svd_state.losses[::10]},
        "budgets": rows,
        "wall_s": {"convert": round(convert_s, 1), "fine_recovery": round(fine_s, 1),
                   "fine_recovery_datafree": round(free_s, 1), "svd_recovery": round(svd_s, 1),
                   "total": round(time.time() - t_start, 1)},
        "protocol": "2-core shared CPU host, torch 2 threads; both methods: AdamW, same lr/batch/steps/data/sizes",
    }
    atomic_write_json(Path(args.json), record)
    plot(record, Path(args.png))
    print_table(record)


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["budgets"]
    x = [100 * r["budget"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style, color, label in (("fine_before", "o--", "C0", "FINE converted"),
                                     ("fine_after", "o-", "C0", "FINE recovered"),
                                     ("fine_after_datafree", "^:", "C2", "FINE recovered, data-free"),
                                     ("svd_before", "s--", "C3", "per-layer SVD"),
                                     ("svd_after", "s-", "C3", "per-layer SVD recovered")):
        a.semilogy(x, [r[key] for r in rows], style, color=color, label=label)
    a.set_xlabel("typed-weight parameters (% of dense)")
    a.set_ylabel("rel. output MSE vs dense original")
    a.set_title(f"{record['args']['steps']} recovery steps, same data and loss")
    a.legend()
    curve = record["recovery"]["fine"]["loss_curve"]
    b.semilogy([c[0] for c in curve], [c[1] for c in curve], color="C0", label="FINE recovery (window mean)")
    sv = record["recovery"]["svd_loss_curve"]
    b.semilogy([10 * i for i in range(len(sv))], sv, color="C3", label="per-layer SVD recovery (every 10th step)",
               alpha=0.7)
    b.set_xlabel("step")
    b.set_ylabel("distillation loss (sampled size)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = record["conversion"]
    Console(width=140).print(
        "conversion error (factors only, rel. output MSE vs the dense model): "
        f"{c['before']['factors_only_rel_mse']:.4g} "
        f"before recovery -> {c['after']['factors_only_rel_mse']:.4g} after {record['args']['steps']} steps; "
        f"full model (exact top options) {c['after']['full_model_rel_mse']:.2g}")
    tab = Table(title="rel. output MSE vs the dense original per parameter budget")
    for col in ("budget", "FINE params", "FINE before", "FINE after", "FINE after (data-free)", "SVD params",
                "SVD before", "SVD after"):
        tab.add_column(col, justify="right")
    for r in record["budgets"]:
        tab.add_row(f"{100 * r['budget']:.0f}%", f"{100 * r['fine_params_fraction']:.1f}%", f"{r['fine_before']:.4g}",
                    f"{r['fine_after']:.4g}", f"{r['fine_after_datafree']:.4g}",
                    f"{100 * r['svd_params_fraction']:.1f}%",
                    f"{r['svd_before']:.4g}",
                    f"{r['svd_after']:.4g}")
    Console(width=140).print(tab)


if __name__ == "__main__":
    main()
