"""The one training loop behind `train` and `retrain`, run by accelerate (1 process, or DDP under
`accelerate launch`).

Every random draw of step s (batch indices, noise, timesteps, dropped labels, the sampled size) comes
from a generator seeded by (seed, s) and is drawn for the *global* batch; each process then takes its
contiguous shard. So one process and N processes see the same examples at every step (the loss curves
match up to float summation order), and a resumed run continues exactly where it stopped without
saving any RNG state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fine_deploy.errors import FineDeployError
from fine_deploy.supernet.core import SubnetConfig
from fine_deploy.train.data import ImageSet


@dataclass
class LoopSettings:
    batch_size: int
    lr: float
    total_steps: int
    seed: int
    warmup_steps: int = 0
    grad_clip: float = 1.0
    cfg_dropout: float = 0.0
    min_lr_ratio: float = 0.1


@dataclass
class LoopState:
    step: int = 0
    losses: list[float] = field(default_factory=list)


def make_accelerator():
    try:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs
    except ImportError:
        raise FineDeployError("training needs accelerate; install it with `pip install fine-deploy[train]`") from None
    # Depth-sampled subnets leave the σ of skipped blocks out of the graph, so DDP must expect that.
    # cpu=True without CUDA: accelerate only picks its gloo MULTI_CPU mode when told it is on CPU, and
    # its multi-process launcher (torchrun) does not say so, so N processes would each train alone.
    return Accelerator(cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def lr_at(s: LoopSettings, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio·lr at the last step."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    span = max(1, s.total_steps - s.warmup_steps)
    p = min(1.0, (step - s.warmup_steps) / span)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def draw_batch(tsn, data: ImageSet, s: LoopSettings, step: int) -> tuple[torch.Tensor, ...]:
    """The global batch of one step: (x0, noise, t, labels | None), identical on every process."""
    g = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
    B = s.batch_size
    idx = torch.randint(0, len(data), (B,), generator=g)
    x0 = data.images[idx]
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, tsn.noise_scheduler.config.num_train_timesteps, (B,), generator=g)
    drop = torch.rand(B, generator=g) < s.cfg_dropout
    labels = None
    if tsn.class_conditional:
        null = tsn.adapter.num_classes(tsn.spec.config)  # the null class row of the label embedding
        labels = torch.full((B,), null, dtype=torch.long) if data.labels is None else data.labels[idx].clone()
        labels[drop] = null  # our own label dropout: diffusers' would draw from the global RNG per process
    return x0, noise, t, labels


class Ema:
    """An exponential moving average of parameters (the weights a diffusion model samples best with).

    Its decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so the average is not dominated by
    the random initialisation in a short run.
    """

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise FineDeployError(f"EMA decay {decay} must lie strictly between 0 and 1 (e.g. 0.999)")
        self.params, self.decay, self.updates = list(params), float(decay), 0
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.shadow, self.params, strict=True):
            e.lerp_(p.detach(), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """Make the live parameters the average (then the average restarts from them)."""
        for e, p in zip(self.shadow, self.params, strict=True):
            p.copy_(e)

    @torch.no_grad()
    def restart(self) -> None:
        """Start the average again from the live parameters (after they were changed in place, e.g. reordered)."""
        for e, p in zip(self.shadow, self.params, strict=True):
            e.copy_(p.detach())

    def tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        return {n: e.detach().cpu().contiguous() for n, e in zip(names, self.shadow, strict=True)}

    @torch.no_grad()
    def load(self, names: list[str], tensors: dict[str, torch.Tensor], updates: int) -> None:
        missing = [n for n in names if n not in tensors]
        if missing:
            raise FineDeployError(f"checkpoint EMA lacks parameter {missing[0]!r}; start without --resume")
        for n, e in zip(names, self.shadow, strict=True):
            e.copy_(tensors[n])
        self.updates = int(updates)


def size_generator(s: LoopSettings, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(s.seed * 1_000_003 + step + 7_919)


def run_steps(
    accelerator,
    model,
    optimizer,
    tsn,
    data: ImageSet,
    s: LoopSettings,
    state: LoopState,
    until: int,
    *,
    params: list[torch.nn.Parameter],
    choose_config: Callable[[int], SubnetConfig] | None = None,
    on_checkpoint: Callable[[LoopState], None] | None = None,
    checkpoint_every: int = 0,
    label: str = "training",
    ema: Ema | None = None,
) -> LoopState:
    """Train from state.step up to `until` (exclusive); `model` is the accelerate-prepared `tsn`; `ema`, when
    given, is updated after every optimizer step."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    n = accelerator.num_processes
    if s.batch_size % n:
        raise FineDeployError(f"batch size {s.batch_size} does not split over {n} processes; pick a multiple of {n}")
    shard = slice(accelerator.process_index * s.batch_size // n, (accelerator.process_index + 1) * s.batch_size // n)
    dev = accelerator.device
    model.train(False)  # no dropout / label-drop inside diffusers: all randomness comes from draw_batch
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn())
    with Progress(*cols, disable=not accelerator.is_main_process) as progress:
        task = progress.add_task(label, total=until, completed=state.step, loss="-")
        while state.step < until:
            step = state.step
            x0, noise, t, labels = draw_batch(tsn, data, s, step)
            tsn.active = choose_config(step) if choose_config else SubnetConfig()
            for gr in optimizer.param_groups:
                gr["lr"] = lr_at(s, step)
            loss = model(x0[shard].to(dev), noise[shard].to(dev), t[shard].to(dev),
                         None if labels is None else labels[shard].to(dev))
            accelerator.backward(loss)
            if s.grad_clip:
                accelerator.clip_grad_norm_(params, s.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            mean = float(accelerator.reduce(loss.detach(), reduction="mean"))
            if not math.isfinite(mean):
                raise FineDeployError(f"{label}: loss became {mean} at step {step}; lower the learning rate")
            state.losses.append(mean)
            state.step += 1
            window = state.losses[-20:]
            progress.update(task, completed=state.step, loss=f"{sum(window) / len(window):.4f}")
            if not progress.console.is_terminal and accelerator.is_main_process and state.step % 25 == 0:
                # logs (nohup, CI) get a plain line now and then instead of a bar they cannot show
                progress.console.print(f"{label}: step {state.step}/{until} loss {sum(window) / len(window):.4f}")
            if on_checkpoint and checkpoint_every and state.step % checkpoint_every == 0 and state.step < until:
                on_checkpoint(state)
    return state


def optimizer_tensors(optimizer, names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An Adam(W) state as safetensors-ready tensors (keyed by parameter name) + JSON-able rest."""
    sd = optimizer.state_dict()
    tensors = {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{names[i]}::{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer_tensors(optimizer, names: list[str], tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    pos = {n: i for i, n in enumerate(names)}
    for key, v in tensors.items():
        name, _, k = key.rpartition("::")
        if name not in pos:
            raise FineDeployError(f"checkpoint optimizer state names unknown parameter {name!r}; "
                                  "start without --resume")
        state.setdefault(pos[name], {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
