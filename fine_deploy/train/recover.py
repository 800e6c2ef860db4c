"""`fine-deploy train --from-supernet S --teacher DIR`: recovery training of a converted supernet by
distilling the dense model it came from.

Conversion fits shared factors to the source weights (a least-squares fit in weight space); what a user
keeps is the model's *function*. Recovery trains the factors (U_t, V_t and every σ_l) so that each nested
subnet's output matches the teacher's on the same noisy input: loss = ||f_sub(x_t, t, c) − f_teacher(x_t, t, c)||²,
with one nested size P per step drawn with OFA-Diffusion's weights w_i ∝ 1 + (m−1)(N−i)/(N−1) (smaller sizes
more often) — a size sets every type's rank to the nearest option ≥ P·factor rank, and the widths to the
supernet's allocation for P where it has one. Dense parameters (biases, norms, embeddings) and the
exact top options (the source weights) stay frozen: the full plan remains the teacher bit for bit.

x_t comes from the user's images (`--data`, noised by the forward process at random t), or, data-free, from
the teacher's own samples: DDIM trajectories of the teacher from pure noise give x_0, which is re-noised at
random t each step, so the student sees the states the teacher's sampler visits.

The loop is the one of `train` / `retrain` (accelerate; resumable: `<OUTPUT>.ckpt/` every
`checkpoint_every` steps, `--resume` continues exactly). Afterwards the conversion record and the
sensitivity table of the result are re-measured against the teacher.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_directory, atomic_write_json
from fine_deploy.supernet.core import SubnetConfig, Supernet
from fine_deploy.train.checkpoint import OPTIMIZER_FILE, TRAINER_FILE, TRAINER_SCHEMA, load_checkpoint
from fine_deploy.train.data import ImageSet, load_images, split
from fine_deploy.train.engine import TrainableSupernet
from fine_deploy.train.loop import (
    LoopSettings,
    LoopState,
    load_optimizer_tensors,
    make_accelerator,
    optimizer_tensors,
    run_steps,
    size_generator,
)

SIZES = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


class Distiller(nn.Module):
    """The student supernet and its frozen teacher; forward() is the distillation loss of the active subnet."""

    def __init__(self, tsn: TrainableSupernet, teacher: nn.Module) -> None:
        super().__init__()
        self.tsn = tsn
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def forward(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        tsn = self.tsn
        noisy = tsn.noise_scheduler.add_noise(x0, noise, t)
        with torch.no_grad():
            target = self.teacher(**tsn.model_inputs(noisy, t, labels)).sample
        return F.mse_loss(tsn.predict(noisy, t, labels).float(), target.float())


def factor_config(sn_spec, size: float) -> SubnetConfig:
    """The nested subnet of relative size P over the factors: ranks ≥ P·factor rank, allocated widths.

    P = 1 is every type at its factor rank, not the exact source option (there is nothing to learn there)."""
    cfg = SubnetConfig()
    for t in sn_spec.types:
        fr = t.factor_rank
        cfg.ranks[t.name] = min((r for r in t.rank_options if fr >= r >= size * fr), default=fr)
    alloc = (sn_spec.widths.get("allocations") or {}).get(f"{size:.2f}")
    if alloc and size < 1.0:
        cfg.widths = dict(alloc)
    return cfg


def load_teacher(sn: Supernet, teacher: str | Path) -> nn.Module:
    """The dense source model; refused when its weights are not the ones the supernet was converted from."""
    from fine_deploy.supernet.convert import load_diffusers_model, source_weights_sha256

    path = Path(teacher)
    want = sn.spec.provenance.get("source_weights_sha256")
    model = load_diffusers_model(path)
    if type(model).__name__ != sn.spec.backbone:
        raise FineDeployError(f"--teacher {path} is a {type(model).__name__}; the supernet is a {sn.spec.backbone}")
    got = source_weights_sha256(path)
    if want and got is not None and got != want:
        raise FineDeployError(f"--teacher {path}: its weights are not the ones the supernet was converted from "
                              f"(sha256 differs from {want[:12]}); pass the original model folder")
    return model.float().eval()


def teacher_schedule(sn: Supernet, teacher: Path) -> dict[str, Any]:
    """The teacher's noise schedule: a pipeline's scheduler/ beside its denoiser folder, else the supernet's."""
    from fine_deploy.supernet.schedule import SCHEDULER_DIR, SCHEDULER_FILE, read_scheduler, training_schedule

    if (teacher.parent / SCHEDULER_DIR / SCHEDULER_FILE).is_file():
        cfg = read_scheduler(teacher.parent)
        cfg.pop("_class_name", None)
        return cfg
    return dict(training_schedule(sn).config)


@torch.no_grad()
def teacher_samples(teacher: nn.Module, sn: Supernet, schedule: dict[str, Any], n: int, *, steps: int,
                    seed: int) -> ImageSet:
    """Data-free training images: x_0 at the end of `n` DDIM trajectories of the teacher (class-balanced)."""
    from fine_deploy.sample.loop import sample_model

    n_cls = sn.adapter.num_classes(sn.spec.config)
    labels = torch.arange(n) % n_cls if n_cls else None
    images = []
    for i in range(0, n, 64):  # bounded memory at published sizes
        lab = None if labels is None else labels[i:i + 64]
        images.append(sample_model(teacher, schedule, min(64, n - i), steps=steps, labels=lab, seed=seed + i))
    x = torch.cat(images).clamp(-1, 1)
    return ImageSet(x, labels, n_cls or 0, "teacher-samples")


@torch.no_grad()
def distill_error(tsn: TrainableSupernet, teacher: nn.Module, data: ImageSet, config: SubnetConfig, *,
                  draws: int = 2, seed: int = 4321, batch: int = 256) -> float:
    """Relative output MSE of a subnet vs the teacher on fixed noisy held-out inputs (the recovery metric)."""
    from fine_deploy.train.metrics import fixed_noisy_batches

    num = den = 0.0
    for noisy, t, lab, _ in fixed_noisy_batches(tsn, data, draws=draws, seed=seed, batch=batch):
        y_t = teacher(**tsn.model_inputs(noisy, t, lab)).sample.double()
        y_s = tsn.predict(noisy, t, lab, config).double()
        num += float(((y_s - y_t) ** 2).sum())
        den += float((y_t**2).sum())
    return num / max(den, 1e-300)


def _checkpoint_dir(output: Path) -> Path:
    return output.parent / f"{output.name}.ckpt"


def _save_checkpoint(ckpt: Path, tsn: TrainableSupernet, optimizer, names: list[str], state: LoopState,
                     settings: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors, rest = optimizer_tensors(optimizer, names)
    with atomic_directory(ckpt) as tmp:
        tsn.to_supernet().save(tmp / "supernet")
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        atomic_write_json(tmp / TRAINER_FILE, {"schema": TRAINER_SCHEMA, "kind": "recovery", "step": state.step,
                                               "losses": state.losses, "settings": settings, "optimizer": rest})


def _load_checkpoint(ckpt: Path) -> tuple[Supernet, dict[str, torch.Tensor], dict[str, Any]]:
    return load_checkpoint(ckpt, "recovery", "recovery")


def recover(
    supernet: str | Path,
    teacher: str | Path,
    output: str | Path,
    *,
    data: str | Path | None = None,
    steps: int = 500,
    lr: float = 2e-3,
    batch_size: int = 32,
    seed: int = 0,
    teacher_images: int = 256,
    sample_steps: int = 25,
    checkpoint_every: int = 100,
    resume: bool = False,
    sizes: tuple[float, ...] = SIZES,
    m: float = 3.0,
    evaluate: bool = True,
) -> Supernet | None:
    """Distil `teacher` into the factors of the converted `supernet`; write the result to `output`."""
    from fine_deploy.train.pretrain import loss_curve, refresh_reconstruction_error, size_weights

    t0 = time.time()
    output, teacher = Path(output), Path(teacher)
    from fine_deploy.validate import output_dir

    output_dir(output)
    if steps < 1:
        raise FineDeployError(f"--steps {steps}: recovery needs at least 1 step")
    parent = Supernet.load(supernet)
    if parent.spec.provenance.get("source") != "diffusers":
        raise FineDeployError(f"{supernet} was not converted from a diffusers model (it was trained); recovery "
                              "distils a converted supernet from its source — use `fine-deploy retrain` instead")
    tmodel = load_teacher(parent, teacher)
    ckpt = _checkpoint_dir(output)
    settings = {"supernet": str(supernet), "parent_sha256": parent.content_hash, "teacher": str(teacher.resolve()),
                "data": str(data) if data is not None else None, "steps": steps, "lr": lr, "batch_size": batch_size,
                "seed": seed, "teacher_images": teacher_images, "sample_steps": sample_steps,
                "sizes": list(sizes), "m": m}
    if resume:
        sn, opt_tensors, meta = _load_checkpoint(ckpt)
        if meta["settings"]["parent_sha256"] != parent.content_hash:
            raise FineDeployError(f"{ckpt} continues the recovery of another supernet; run without --resume")
        settings = {**meta["settings"], "steps": steps}
        state = LoopState(int(meta["step"]), list(meta["losses"]))
    else:
        sn, opt_tensors, meta, state = parent, None, None, LoopState()
    if state.step > steps:
        raise FineDeployError(f"the checkpoint is at step {state.step}, past --steps {steps}; give more steps")

    schedule = teacher_schedule(parent, teacher)
    cfg = parent.spec.config
    if data is not None:
        images = load_images(data, int(cfg["sample_size"]), int(cfg.get("in_channels", 1)))
        source = str(data)
    else:  # data-free: the teacher's own sampling trajectories (deterministic in the seed, so a resume re-makes them)
        images = teacher_samples(tmodel, parent, schedule, teacher_images, steps=sample_steps, seed=seed)
        source = f"teacher samples ({teacher_images} DDIM-{sample_steps} trajectories)"
    train_set, heldout = split(images, 0.15, seed)

    accelerator = make_accelerator()
    tsn = TrainableSupernet(sn, schedule).to(accelerator.device)
    for p in tsn.dense.parameters():  # the dense parameters serve the exact top option too: frozen
        p.requires_grad_(False)
    trained = [*(("bases." + k, p) for k, p in tsn.bases.items()), *(("sigmas." + k, p) for k, p in tsn.sigmas.items())]
    names, params = [n for n, _ in trained], [p for _, p in trained]  # aligned: the optimizer state is keyed by name
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if opt_tensors is not None:
        load_optimizer_tensors(optimizer, names, opt_tensors, meta["optimizer"])
    distiller = Distiller(tsn, tmodel.to(accelerator.device))
    model, optimizer = accelerator.prepare(distiller, optimizer)
    weights = size_weights(len(sizes), m)
    loop = LoopSettings(batch_size, lr, steps, seed, warmup_steps=min(50, steps // 10), grad_clip=1.0)

    def choose(step: int) -> SubnetConfig:
        k = int(torch.multinomial(weights, 1, generator=size_generator(loop, step)))
        return factor_config(tsn.spec, sorted(sizes)[k])

    def checkpoint(st: LoopState) -> None:
        if accelerator.is_main_process:
            _save_checkpoint(ckpt, tsn, optimizer, names, st, settings)
        accelerator.wait_for_everyone()

    ref_sizes = sorted({min(sizes), 0.5, 1.0} & set(sizes)) or [max(sizes)]
    before = ({f"{p:.3f}": distill_error(tsn, tmodel, heldout, factor_config(tsn.spec, p)) for p in ref_sizes}
              if evaluate else {})
    run_steps(accelerator, model, optimizer, tsn, train_set, loop, state, steps, params=params, choose_config=choose,
              on_checkpoint=checkpoint, checkpoint_every=checkpoint_every, label="recovery (distilling the teacher)")
    checkpoint(state)
    if not accelerator.is_main_process:
        return None
    tsn.eval()
    tsn.reorder_ranks()  # training moved energy between columns; the rank knob keeps the best prefixes
    after = ({f"{p:.3f}": distill_error(tsn, tmodel, heldout, factor_config(tsn.spec, p)) for p in ref_sizes}
             if evaluate else {})
    out = tsn.to_supernet()
    refresh_reconstruction_error(out)
    out.spec.provenance = {
        **parent.spec.provenance, "recovered": True,
        "recovery": {"parent": {"path": str(supernet), "sha256": parent.content_hash},
                     "teacher": str(teacher.resolve()), "data": source, "train_images": len(train_set),
                     "steps": state.step, "lr": lr, "batch_size": batch_size, "seed": seed,
                     "sizes": list(sizes), "m": m,
                     "trained": "U, V, sigma (dense parameters and source weights frozen)",
                     "heldout_rel_mse_before": before, "heldout_rel_mse_after": after,
                     "loss_curve": loss_curve(state.losses), "processes": accelerator.num_processes,
                     "wall_s": round(time.time() - t0, 1)},
    }
    if evaluate:
        from fine_deploy.planner.sensitivity import proxy_sensitivity
        from fine_deploy.supernet.fidelity import conversion_record

        out.spec.conversion = conversion_record(out, tmodel, progress=False)
        table = proxy_sensitivity(out, progress=False)
        table["measured_by"] = "recovery training, against the teacher"
        out.spec.sensitivity = table if table.get("reference") == "source" else {}
    elif out.spec.conversion:  # the source weights did not move, the factors did: say what the figures describe
        out.spec.conversion = {**out.spec.conversion, "measured": "before recovery (run with --no-evaluate)"}
        out.spec.sensitivity = {}
    out.save(output)
    return out
