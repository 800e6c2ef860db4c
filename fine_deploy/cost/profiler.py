"""`fine-deploy profile`: measure what each layer choice costs on this machine's runtime.

For every distinct layer shape x kernel form x rank, a one-layer ONNX graph is timed next to the
empty graph of the same input, interleaved round by round (fine_deploy.runtime.timing); the
difference is what the layer adds to a run. Random whole chains of those layers, timed end to
end, then refit every layer's cost as it is inside a model plus the fixed overhead (fit_in_model),
and the roofline is fitted to the measurements so that shapes the LUT lacks are still estimated.
The LUT is saved after every shape: an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fine_deploy.cost.graphs import (
    LayerChoice,
    build_chain,
    build_identity,
    dims_key,
    input_dims,
    output_dims,
    square_layer,
)
from fine_deploy.cost.lut import Lut, LutEntry, load_lut, lut_path
from fine_deploy.cost.predictor import boundary_seconds
from fine_deploy.cost.profiles import load_profile, profiles_dir
from fine_deploy.cost.roofline import fit_roofline
from fine_deploy.cost.shapes import (
    LayerShape,
    activation_elems,
    default_ranks,
    default_shapes,
    distinct,
    form_macs,
    form_weight_elems,
)
from fine_deploy.cost.subnets import random_chain
from fine_deploy.errors import FineDeployError
from fine_deploy.runtime.timing import Protocol, Timing, measure_interleaved, session_runner

ONNX_BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")


def layer_choices(shape: LayerShape, ranks: list[int] | None = None) -> list[LayerChoice]:
    """Dense plus low-rank and shared-basis at every rank option of one shape (None: quarters)."""
    out = [LayerChoice(shape)]
    for r in default_ranks(shape) if ranks is None else ranks:
        out += [LayerChoice(shape, "low_rank", r), LayerChoice(shape, "shared_basis", r)]
    return out


def entry_for(choice: LayerChoice, timing: Timing, empty: Timing, boundaries: dict[str, float]) -> LutEntry:
    own, shared = form_weight_elems(choice.shape, choice.form, choice.rank)
    single = max(0.0, timing.seconds - empty.seconds - boundary_seconds([choice], boundaries))
    return LutEntry(
        shape=choice.shape,
        form=choice.form,
        rank=choice.rank,
        macs=form_macs(choice.shape, choice.form, choice.rank),
        weight_bytes=4 * (own + shared),
        activation_bytes=4 * sum(activation_elems(choice.shape, choice.form, choice.rank)),
        seconds=single,
        raw_s=timing.seconds,
        median_s=timing.median_s,
        single_s=single,
    )


class Timer:
    """Opens models on one backend with the protocol's session options and times them interleaved.

    Timings are not rescaled by a reference graph timed in every group (an earlier version was): on the
    quiet host the reference's own group-to-group noise (+-4%, and up to 1.8x between small and
    large groups) exceeded the drift it was meant to correct.
    """

    def __init__(self, backend: str, protocol: Protocol, workdir: Path) -> None:
        self.backend, self.protocol, self.workdir = backend, protocol, workdir
        self.count = 0
        self.description: dict[str, Any] = {}

    @contextmanager
    def sessions(self, models: list[onnx.ModelProto]) -> Iterator[list[Callable[[int], np.ndarray]]]:
        from fine_deploy.runtime import SessionOptions, open_session

        opts = SessionOptions(threads=self.protocol.threads, spinning=self.protocol.spinning)
        with ExitStack() as stack:
            runners = []
            for model in models:
                self.count += 1
                path = self.workdir / f"m{self.count}.onnx"
                onnx.save(model, path)
                sess = stack.enter_context(open_session(path, opts, self.backend))
                if not self.description:
                    d = sess.describe()
                    self.description = {k: d[k] for k in ("backend", "providers", "versions", "options")}
                feeds = sess.make_feeds()
                runners.append(session_runner(sess, feeds, self.protocol.clock))
            yield runners

    def time(self, models: list[onnx.ModelProto], seed: int = 0) -> list[Timing]:
        """Time `models` interleaved round by round (fine_deploy.runtime.timing)."""
        with self.sessions(models) as runners:
            return measure_interleaved(runners, self.protocol, seed=seed)


def _choose_backend(runtime: str | None, device_runtime: str, device: str = "host") -> str:
    from fine_deploy.runtime import available_backends

    usable = available_backends()
    if runtime is None and device != "host" and not usable.get(device_runtime):
        raise FineDeployError(
            f"{device} runs {device_runtime}, which is not usable on this machine: run the profiler on the "
            "device itself, or pass --runtime to measure this machine under that name"
        )
    backend = runtime or (device_runtime if usable.get(device_runtime) else "onnxruntime-cpu")
    if backend not in ONNX_BACKENDS:
        raise FineDeployError(
            f"the profiler builds ONNX layer graphs, which {backend} cannot run; "
            f"pass --runtime with one of {', '.join(ONNX_BACKENDS)}"
        )
    if not usable.get(backend):
        have = ", ".join(k for k, v in usable.items() if v) or "none"
        raise FineDeployError(
            f"runtime {backend} is not usable on this machine (usable: {have}); pick another --runtime"
        )
    return backend


def _resumable(path: Path, lut: Lut) -> Lut | None:
    """Entries of an earlier run at `path` measured the same way on the same machine and runtime."""
    if not path.exists():
        return None
    try:
        old = load_lut(path)
    except FineDeployError:
        return None  # unreadable or another schema: measure afresh (it is replaced atomically)
    same = (
        old.fingerprint.get("id") == lut.fingerprint.get("id")
        and old.protocol == lut.protocol
        and old.runtime_versions == lut.runtime_versions
        and old.runtime == lut.runtime
    )
    return old if same else None


def measure_boundaries(timer: Timer, shapes: list[LayerShape], seed: int = 0) -> dict[str, float]:
    """Per activation tensor: what being a model's input and output costs beyond the empty graph.

    With a cheap square layer S on that tensor, t([S]) = empty + boundary + c and t([S, S]) =
    empty + boundary + 2c (inside a model S pays no boundary), so boundary = 2 t([S]) - t([S, S]) - empty.
    Runtimes pay real work there: ONNX Runtime's CPU convs reorder NCHW <-> NCHWc at a model's edges
    but not between two convs, which made one-layer timings overstate in-model costs by ~15%.
    """
    tensors: dict[str, list[int]] = {}
    for s in shapes:
        for dims in (input_dims(s), output_dims(s)):
            tensors.setdefault(dims_key(dims), dims)
    out = {}
    for i, (key, dims) in enumerate(sorted(tensors.items())):
        sq = LayerChoice(square_layer(dims))
        empty, one, two = timer.time([build_identity(sq.shape), build_chain([sq]), build_chain([sq, sq])], seed=i)
        out[key] = max(0.0, 2 * one.seconds - two.seconds - empty.seconds)
    return out


RIDGE = 0.01  # weight of "stay near the one-layer estimate" against the chains' relative errors


def fit_in_model(
    timer: Timer,
    lut: Lut,
    shapes: list[LayerShape],
    chains: int,
    seed: int = 0,
    ranks: dict[str, list[int]] | None = None,
    ridge: float = RIDGE,
) -> dict[str, Any]:
    """Time `chains` random chains of `shapes` whole and refit the LUT on them (fit_costs)."""
    rng = random.Random(seed)
    pool = [random_chain(shapes, rng, ranks=ranks) for _ in range(chains)]
    seconds = [t.seconds for t in timer.time([build_chain(c, seed=i) for i, c in enumerate(pool)], seed=seed)]
    return {**fit_costs(lut, pool, seconds, ridge), "seed": seed}


def fit_costs(lut: Lut, chains: list[list[LayerChoice]], seconds: list[float], ridge: float = RIDGE) -> dict[str, Any]:
    """Refit every entry's `seconds` and the fixed overhead on whole chains timed at `seconds`.

    A one-layer graph misjudges what its layer adds inside a model by about a microsecond (measured
    on this host: a 16x64x64 MatMul adds 3.7 us per layer to a chain of them but 2.65 us by
    one-layer differencing; an fc1+fc2 pair 13.5 us against 14.6 us), which summed over a dozen
    tiny layers put only 59% of random subnets within 10%. Solving  t = empty + boundaries + fixed
    + sum of costs  by least relative squares over the chains, with a ridge pulling each cost
    towards its one-layer estimate (so that a choice seen in few chains keeps it), put 99-100% of
    held-out subnets within 10% with 200-400 chains. Costs stay >= 0.
    """
    from scipy.optimize import lsq_linear

    y = np.asarray(seconds, dtype=float)
    keep = y > 0  # the thread clock can read 0 for a sub-tick graph: no relative error to fit
    chains, y = [c for c, k in zip(chains, keep, strict=True) if k], y[keep]
    keys = sorted(lut.entries)
    column = {k: i for i, k in enumerate(keys)}
    prior = np.array([e.single_s if e.single_s is not None else e.seconds for e in (lut.entries[k] for k in keys)])
    x = np.zeros((len(chains), len(keys) + 1))
    x[:, -1] = 1.0  # the fixed overhead
    for i, c in enumerate(chains):
        for layer in c:
            if layer.key() not in column:
                raise FineDeployError(f"chain layer {layer.key()} has no LUT entry to fit; profile its shape first")
            x[i, column[layer.key()]] += 1
    base = np.array([lut.empty_run_s + boundary_seconds(c, lut.boundaries) for c in chains])
    # a floor on the ridge's scale: an entry measured at ~0 must not pin its cost to exactly 0
    scale = np.maximum(prior, 0.1 * float(np.median(prior)) + 1e-9)
    reg = np.hstack([np.diag(np.sqrt(ridge) / scale), np.zeros((len(keys), 1))])
    a = np.vstack([x / y[:, None], reg])
    b = np.concatenate([(y - base) / y, np.sqrt(ridge) * prior / scale])
    lower = np.r_[np.zeros(len(keys)), -np.inf]
    sol = lsq_linear(a, b, bounds=(lower, np.full(len(keys) + 1, np.inf))).x
    cost, fixed = sol[:-1], float(sol[-1])
    for k, c in zip(keys, cost, strict=True):
        lut.entries[k] = dataclasses.replace(lut.entries[k], seconds=float(c))

    def median_error(costs: np.ndarray, fixed_s: float) -> float | None:
        pred = base + fixed_s + x[:, :-1] @ costs
        return float(np.median(np.abs(pred / y - 1))) if len(y) else None

    one_layer_fixed = float(np.median(y - base - x[:, :-1] @ prior)) if len(y) else 0.0
    return {
        "fixed_s": fixed,
        "subnets": len(chains),
        "ridge": ridge,
        "median_abs_rel_error": median_error(cost, fixed),
        "one_layer_median_abs_rel_error": median_error(prior, one_layer_fixed),
    }


def profile(
    device: str = "host",
    output: str | os.PathLike | None = None,
    *,
    shapes: list[LayerShape] | None = None,
    ranks: dict[str, list[int]] | None = None,
    runtime: str | None = None,
    protocol: Protocol | None = None,
    calibration_subnets: int | None = None,
    resume: bool = True,
    profiles: str | os.PathLike | None = None,
    show_progress: bool = True,
) -> Lut:
    """Measure the LUT of `device` on this machine and write it.

    The default output is <user cache>/measured/<device>-<runtime>.json (fine_deploy.paths); `shapes` defaults to the
    built-in tiny supernet's layers and `ranks` (per shape key) to quarters of the full rank.
    `calibration_subnets` random chains refit the costs in context (fit_in_model); None means
    twice the number of layer choices, at least 100.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from fine_deploy.runtime import machine_fingerprint
    from fine_deploy.runtime.backends import runtime_versions

    directory = profiles_dir(profiles)
    prof = load_profile(device, directory)
    backend = _choose_backend(runtime, prof.runtime, prof.name)
    protocol = protocol or Protocol(clock="thread" if backend == "onnxruntime-cpu" else "wall")
    if protocol.clock == "thread" and backend != "onnxruntime-cpu":
        raise FineDeployError(
            f"the thread clock cannot time {backend} (work runs off the calling thread); use clock=wall"
        )
    shapes = list(shapes) if shapes is not None else default_shapes()
    if not shapes:
        raise FineDeployError("no layer shapes to profile; give at least one LayerShape")
    path = Path(output) if output is not None else lut_path(prof.name, backend)
    lut = Lut(
        device=prof.name,
        runtime=backend,
        fingerprint=machine_fingerprint(),
        runtime_versions=runtime_versions(),
        session={},
        protocol=protocol.to_dict(),
        empty_run_s=0.0,
    )
    old = _resumable(path, lut) if resume else None
    done: dict[str, LutEntry] = dict(old.entries) if old else {}
    lut.boundaries = dict(old.boundaries) if old else {}
    plan = [(s, layer_choices(s, (ranks or {}).get(s.key()))) for s in distinct(shapes)]
    total = sum(len(c) for _, c in plan)
    if calibration_subnets is None:
        calibration_subnets = max(100, 2 * total)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with (
        tempfile.TemporaryDirectory(prefix="fine-deploy-profile-") as tmp,
        Progress(*columns, disable=not show_progress, transient=True) as bar,
    ):
        timer = Timer(backend, protocol, Path(tmp))
        task = bar.add_task(f"profiling {prof.name} on {backend}", total=total + calibration_subnets)
        empties = []
        if not lut.boundaries:
            lut.boundaries = measure_boundaries(timer, distinct(shapes))
        for i, (shape, choices) in enumerate(plan):
            todo = [c for c in choices if c.key() not in done]
            bar.advance(task, len(choices) - len(todo))
            # the empty graph is timed with every shape, so that every entry subtracts a fresh one
            models = [build_identity(shape)] + [build_chain([c], seed=i) for c in todo]
            timings = timer.time(models, seed=i)
            empties.append(timings[0].seconds)
            for c, t in zip(todo, timings[1:], strict=False):
                done[c.key()] = entry_for(c, t, timings[0], lut.boundaries)
            bar.advance(task, len(todo))
            lut.entries = dict(done)
            lut.session = timer.description
            lut.empty_run_s = float(np.min(empties))
            lut.save(path)
        lut.entries = {c.key(): done[c.key()] for _, cs in plan for c in cs}
        if calibration_subnets:
            lut.calibration = fit_in_model(timer, lut, shapes, calibration_subnets, ranks=ranks)
        bar.advance(task, calibration_subnets)
    lut.roofline = fit_roofline(list(lut.entries.values())).to_dict()
    lut.complete = True
    lut.save(path)
    return lut
