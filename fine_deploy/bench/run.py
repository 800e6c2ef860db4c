"""``fine-deploy bench``: time exported artifacts, several at once, interleaved run by run."""

from __future__ import annotations

import datetime as _dt
import re
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fine_deploy.bench.platform_metric import cross_run_metric
from fine_deploy.bench.schema import BenchResult, BenchSettings, Calibration, ModelResult
from fine_deploy.bench.stats import ESTIMATOR, summarize
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_write_json, sha256_file
from fine_deploy.runtime import (
    Artifact,
    Session,
    SessionOptions,
    machine_fingerprint,
    open_session,
    resolve_artifact,
)

ORDERS = ("interleaved", "sequential")
ORDER_DETAIL = {
    "interleaved": "each round times every model once (and the calibration kernel), "
    "alternating forward and reverse order (ABBA), so slow drifts of the machine hit all models alike",
    "sequential": "all runs of one model, then all runs of the next",
}
TIMER = (
    "time.perf_counter around one Session.run (TensorRT: enqueue + synchronize), one sample per run; "
    "CPU backends also record time.process_time (cpu_samples_s)"
)
# A cold core read a 17 us graph 1.4x slower than one busy for 2 s (fine_deploy.runtime.timing); loading the
# sessions keeps the core busy too, so 1 s on top is enough and keeps a short bench short.
SPINUP_S = 1.0
_SHAPE = re.compile(r"^([^=\s]+)=(\d+(?:x\d+)*)$")


def parse_shapes(specs: Sequence[str] | Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    """``["latent=1x4x16x16", "t=1"]`` -> ``{"latent": (1, 4, 16, 16), "t": (1,)}``."""
    if not specs:
        return {}
    if isinstance(specs, Mapping):
        return {k: tuple(int(d) for d in v) for k, v in specs.items()}
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        m = _SHAPE.match(spec.strip())
        if not m:
            raise FineDeployError(f"--shape {spec!r} is not NAME=DxDx...; write e.g. --shape sample=1x4x16x16")
        out[m.group(1)] = tuple(int(d) for d in m.group(2).split("x"))
    return out


def plan_prediction(artifact: Artifact) -> dict[str, Any] | None:
    """The latency the plan behind an exported artifact promised (from its manifest), or None."""
    manifest = artifact.manifest or {}
    pr = (manifest.get("plan") or {}).get("predicted") or {}
    if not isinstance(pr.get("latency_s"), (int, float)):
        return None
    proto = (pr.get("cost_model") or {}).get("latency_protocol") or {}
    mem = (pr.get("cost_model") or {}).get("memory_model") or {}
    device = ((manifest.get("plan") or {}).get("profile") or {}).get("resolved")
    parts = pr.get("memory_parts") or {}
    # bench's ΔRSS leaves the runtime's one-time set-up out: compared with the plan's memory less the runtime's own
    model_bytes = sum(parts.values()) - parts.get("runtime_overhead", 0.0) if parts else None
    return {"latency_s": float(pr["latency_s"]), "device": device, "calibrated": bool(proto.get("calibrated")),
            "threads": proto.get("threads"), "block": (proto.get("protocol") or {}).get("runs_per_round"),
            "protocol": proto.get("description"), "memory_bytes": model_bytes,
            "memory_calibrated": bool(mem.get("calibrated"))}


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names: the artifact's directory or file stem, suffixed when repeated."""
    names: list[str] = []
    for p in paths:
        base = p.name if p.is_dir() else p.stem  # an export folder's name may hold dots ("e1.2ms")
        name, k = base, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


class _Entry:
    def __init__(self, name: str, path: Path, session: Session, feeds: dict[str, np.ndarray], memory: dict) -> None:
        self.name, self.path, self.session, self.feeds, self.memory = name, path, session, feeds, memory
        self.samples: list[float] = []
        self.cpu_samples: list[float] = []

    def time_once(self) -> None:
        # Process CPU time beside wall time: other processes preempting us inflate wall time but not
        # the CPU time we consume, so on a shared CI runner CPU time still shows a +10% graph.
        c0 = time.process_time()
        self.samples.append(float(self.session.time_runs(self.feeds, 1)[0]))
        self.cpu_samples.append(time.process_time() - c0)


UNTIL_DECIDED_BUDGET_S = 300.0
CHECK_EVERY = 20  # rounds between looks at the paired verdict


class _Stop:
    """The sequential stop of ``bench --until-decided``: look at the paired verdict every CHECK_EVERY rounds.

    The look uses Wald's boundaries (fine_deploy.bench.decide), which keep their error rates (approximately)
    under repeated looks; the same rule in ``report`` on the two models of the written file gives the same verdict.
    """

    def __init__(self, threshold: float, budget_s: float, min_rounds: int) -> None:
        self.threshold, self.budget_s, self.min_rounds = threshold, budget_s, min_rounds
        self.verdict, self.rounds, self.seconds, self.looks = "inconclusive", 0, 0.0, 0

    def done(self, entries: list[_Entry], rounds: int, elapsed: float) -> bool:
        if rounds < self.min_rounds or rounds % CHECK_EVERY and elapsed < self.budget_s:
            return False
        from fine_deploy.bench.decide import decide, robust_location

        base, cur = entries
        cpu = base.session.backend == "onnxruntime-cpu"
        b = np.asarray(base.cpu_samples if cpu else base.samples)
        c = np.asarray(cur.cpu_samples if cpu else cur.samples)
        x, se = robust_location(np.log(c / b))
        self.verdict, self.rounds, self.seconds = decide(x, se, self.threshold), rounds, elapsed
        self.looks += 1
        return self.verdict != "inconclusive" or elapsed >= self.budget_s

    def record(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "verdict": self.verdict, "rounds": self.rounds,
                "seconds": round(self.seconds, 3), "looks": self.looks, "budget_s": self.budget_s,
                "check_every": CHECK_EVERY}


def _progress(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=True,
    )


def bench(
    paths: Sequence[str | Path],
    runs: int = 30,
    json_path: str | Path | None = None,
    *,
    steps: int = 1,
    shapes: Sequence[str] | Mapping[str, Sequence[int]] | None = None,
    threads: int | None = None,
    batch: int = 1,
    warmup: int = 5,
    time_budget_s: float | None = None,
    order: str = "interleaved",
    spinning: bool = False,
    backend: str = "auto",
    calibrate: bool = True,
    labels: Sequence[str] | None = None,
    progress: bool = True,
    show: bool = True,
    spinup_s: float = SPINUP_S,
    measure_mem: bool = True,
    until_decided: bool = False,
    threshold: float | str = 0.05,
    block: int | None = None,
) -> BenchResult:
    """Benchmark every artifact in ``paths`` in one process and write ``json_path`` (bench.json).

    Each model is loaded and warmed up, then timed ``runs`` times (or for ``time_budget_s``
    seconds, at least 5 rounds) in ``order``; the calibration GEMM is timed in every round.
    Inputs come from the artifact's declared shapes, ``shapes`` overriding by input name.
    Timing starts after ``spinup_s`` busy seconds (a cold core reads slower); memory is measured
    per artifact in a fresh process (``fine_deploy.runtime.rss``), so the order does not matter.

    ``block`` consecutive runs of each model make one turn of an interleaved round (``runs`` is rounded up to
    whole rounds). Artifacts exported from plans are measured as their plans promised (their protocol's
    threads and block) unless ``threads`` / ``block`` are given.

    ``until_decided`` (two artifacts: baseline, current): rounds go on, interleaved, until the paired
    verdict at ``threshold`` (fine_deploy.bench.decide) is regressed, improved or unchanged, or the time
    budget (``time_budget_s``, default 300 s) runs out; ``runs`` is then the minimum.
    """
    if not paths:
        raise FineDeployError("no artifact given; pass one or more export directories or model files")
    if order not in ORDERS:
        raise FineDeployError(f"unknown run order {order!r}; use one of {', '.join(ORDERS)}")
    if runs < 1 or warmup < 0 or steps < 1 or batch < 1 or (threads is not None and threads < 1):
        raise FineDeployError("--runs, --steps, --batch and --threads must be positive and --warmup >= 0")
    if block is not None and block < 1:
        raise FineDeployError(f"--block {block}: give a positive number of consecutive runs per turn")
    if time_budget_s is not None and time_budget_s <= 0:
        raise FineDeployError("--time-budget must be a positive number of seconds")
    if spinup_s < 0:
        raise FineDeployError("--spin-up must be a number of seconds >= 0")
    stop = None
    if until_decided:
        if len(paths) != 2 or order != "interleaved":
            raise FineDeployError(
                "--until-decided compares two artifacts, baseline then current, interleaved; give exactly two"
            )
        from fine_deploy.bench.report import parse_threshold

        stop = _Stop(parse_threshold(threshold), time_budget_s or UNTIL_DECIDED_BUDGET_S, max(runs, CHECK_EVERY))
    from fine_deploy.validate import output_file

    output_file(json_path, "--json", "bench.json")  # refused before measuring, not after
    overrides = parse_shapes(shapes)
    resolved = [Path(p) for p in paths]
    artifacts = [resolve_artifact(p) for p in resolved]  # fail on a bad path before loading the others
    names = list(labels) if labels else _labels(resolved)
    if len(names) != len(resolved) or len(set(names)) != len(names):
        raise FineDeployError("labels must be unique, one per artifact")
    unused = set(overrides)
    predictions = [plan_prediction(a) for a in artifacts]
    planned = {p["threads"] for p in predictions if p is not None and p["threads"]}
    from_plans = len(planned) == 1 and all(predictions)
    if threads is None and from_plans:
        threads = planned.pop()  # measure what the plans promised, as they promised it
    if block is None:
        blocks = {p["block"] for p in predictions if p is not None and p.get("block")}
        block = blocks.pop() if from_plans and len(blocks) == 1 else 1
    options = SessionOptions(threads=threads, spinning=spinning)

    # Memory first, each artifact in a fresh process of its own (fine_deploy.runtime.rss): ΔRSS must not
    # depend on which artifact was loaded before.
    from fine_deploy.runtime.rss import ISOLATION
    from fine_deploy.runtime.rss import session_memory as measure_memory

    memories, memory_errors = [], []
    for path in resolved:
        memory, error = measure_memory(path, options, backend, overrides, batch, warmup) if measure_mem else (
            {"rss_increase_bytes": None, "peak_rss_increase_bytes": None, "device_peak_bytes": None}, None)
        memories.append(memory)
        if error is not None:  # said after timing: a model that fails here fails below with the clear error
            memory_errors.append(f"fine-deploy: warning: memory of {path} not measured ({error})")

    entries: list[_Entry] = []
    for name, path, memory in zip(names, resolved, memories, strict=True):
        session = open_session(path, options, backend, shapes=overrides or None)
        mine = {k: v for k, v in overrides.items() if k in {s.name for s in session.inputs}}
        unused -= set(mine)
        feeds = session.make_feeds(mine, batch=batch, seed=0)
        try:
            session.run(feeds)  # the first run allocates and compiles
        except FineDeployError:
            raise
        except Exception as e:  # the model itself refuses these inputs (e.g. class labels out of range)
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:160]
            raise FineDeployError(
                f"{path} fails on random inputs ({first}); bench its export directory, whose manifest.json "
                "declares the input ranges, or pass --shape for dynamic inputs"
            ) from None
        for _ in range(max(warmup, 1) - 1):
            session.run(feeds)
        if memory.get("device_peak_bytes") is None and hasattr(session, "peak_device_memory"):
            memory = {**memory, "device_peak_bytes": session.peak_device_memory()}
        entries.append(_Entry(name, path, session, feeds, memory))
    if unused:
        raise FineDeployError(f"--shape names input(s) {', '.join(sorted(unused))} that no benchmarked model has")

    from fine_deploy.bench.calibration import CalibrationKernel

    cal = CalibrationKernel(options) if calibrate else None
    if cal is not None:
        for _ in range(max(warmup, 1)):
            cal.time_once()
    cal_samples: list[float] = []
    cal_cpu: list[float] = []

    def time_calibration() -> None:
        wall, cpu = cal.time_once()
        cal_samples.append(wall)
        cal_cpu.append(cpu)

    from fine_deploy.runtime.timing import spin_up

    spin_up(spinup_s)

    max_rounds = -(-runs // block) if time_budget_s is None and stop is None else 1_000_000
    start = time.perf_counter()
    with _progress(progress) as bar:
        total = max_rounds if time_budget_s is None else None
        task = bar.add_task("benchmarking", total=total)
        if order == "interleaved":
            r = 0
            while r < max_rounds:
                seq = entries if r % 2 == 0 else entries[::-1]
                for e in seq:
                    for _ in range(block):
                        e.time_once()
                if cal is not None:
                    for _ in range(block):
                        time_calibration()
                r += 1
                bar.advance(task)
                if stop is not None:
                    if stop.done(entries, r, time.perf_counter() - start):
                        break
                elif time_budget_s is not None and r >= 5 and time.perf_counter() - start >= time_budget_s:
                    break
        else:
            per_model = None if time_budget_s is None else time_budget_s / len(entries)
            for e in entries:
                t0 = time.perf_counter()
                while len(e.samples) < max_rounds:
                    e.time_once()
                    if cal is not None:
                        time_calibration()
                    if per_model is not None and len(e.samples) >= 5 and time.perf_counter() - t0 >= per_model:
                        break
                bar.advance(task, len(e.samples) / len(entries))

    models = []
    for e, art, pred in zip(entries, artifacts, predictions, strict=True):
        st = summarize(e.samples)
        if pred is not None:
            pred = {**pred, "measured_over_predicted": st["median"] / pred["latency_s"]}
            rss = e.memory.get("rss_increase_bytes")
            if pred.get("memory_bytes") and rss is not None:
                pred["measured_over_predicted_memory"] = rss / pred["memory_bytes"]
        models.append(
            ModelResult(
                name=e.name,
                path=str(e.path),
                sha256=sha256_file(e.session.model_path) if e.session.model_path.is_file() else None,
                format=art.format,
                precision=art.precision,
                backend=e.session.backend,
                providers=list(e.session.providers),
                session=e.session.describe(),
                input_shapes={k: list(v.shape) for k, v in e.feeds.items()},
                samples_s=e.samples,
                cpu_samples_s=e.cpu_samples if e.session.backend == "onnxruntime-cpu" else None,
                stats=st,
                throughput_per_s=batch / st["median"],
                per_image_s=st["median"] * steps / batch,
                memory=e.memory,
                predicted=pred,
            )
        )
        e.session.close()
    calibration = None
    if cal is not None:
        from fine_deploy.bench import calibration as calmod

        calibration = Calibration(
            kernel=calmod.KERNEL,
            flops=calmod.FLOPS,
            samples_s=cal_samples,
            median_s=float(np.median(cal_samples)),
            session=cal.describe(),
            cpu_samples_s=cal_cpu,
        )
    result = BenchResult(
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        run_id=uuid.uuid4().hex,
        machine=machine_fingerprint(),
        settings=BenchSettings(
            runs=len(entries[0].samples),
            warmup=max(warmup, 1),
            steps=steps,
            batch=batch,
            threads=threads,
            spinning=spinning,
            backend=backend,
            run_order=order,
            order_detail=ORDER_DETAIL[order],
            estimator=ESTIMATOR,
            timer=TIMER,
            time_budget_s=time_budget_s,
            spinup_s=spinup_s,
            until_decided=stop.record() if stop is not None else None,
            block=block,
            memory_isolation=ISOLATION if measure_mem else None,
            cross_run_metric=cross_run_metric(entries[0].session.backend, threads),
        ),
        calibration=calibration,
        models=models,
    )
    if show:
        print_bench(result)
        for line in memory_errors:
            print(line, file=sys.stderr)
    if json_path is not None:
        try:
            atomic_write_json(json_path, result.to_dict())
        except OSError as e:  # checked before measuring, yet it failed (disk full, removed folder...)
            from fine_deploy.paths import cache_dir

            kept = atomic_write_json(cache_dir() / "bench" / f"bench-{result.run_id}.json", result.to_dict())
            raise FineDeployError(
                f"--json {json_path} could not be written ({e.strerror or e}); the measurements were kept in "
                f"{kept}: copy them from there"
            ) from None
    return result


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f}"


def print_bench(result: BenchResult) -> None:
    """The rich table of a bench result (stdout)."""
    from rich.table import Table

    from fine_deploy.console import wide_console

    s = result.settings
    table = Table(
        title=f"fine-deploy bench · {s.runs} runs {s.run_order} · batch {s.batch} · steps {s.steps}",
        caption=_caption(result),
    )
    for col in (
        "model",
        "backend",
        "median ms",
        "mean ms",
        "std ms",
        "p90 ms",
        "p99 ms",
        "min ms",
        "img/s",
        f"s/img@{s.steps}",
        "ΔRSS MiB",
    ):
        table.add_column(col, justify="left" if col in ("model", "backend") else "right")
    for m in result.models:
        st = m.stats
        rss = m.memory.get("rss_increase_bytes")
        table.add_row(
            m.name,
            ",".join(p.replace("ExecutionProvider", "") for p in m.providers),
            _ms(st["median"]),
            _ms(st["mean"]),
            _ms(st["std"]),
            _ms(st["p90"]),
            _ms(st["p99"]),
            _ms(st["min"]),
            f"{m.throughput_per_s:.1f}",
            f"{m.per_image_s:.4f}",
            f"{rss / 2**20:.1f}" if rss is not None else "-",
        )
    console = wide_console(width=160)
    console.print(table)
    for m in result.models:
        if m.predicted:
            p = m.predicted
            how = p["protocol"] if p["calibrated"] else "uncalibrated layer sum: run `fine-deploy profile --supernet`"
            if p.get("device") not in (None, "host"):  # planned for another device: not a promise about this one
                how = f"for {p['device']}, not this machine"
            console.print(f"{m.name}: plan predicted {_ms(p['latency_s'])} ms ({how}); measured median "
                          f"{_ms(m.stats['median'])} ms = {p['measured_over_predicted']:.2f}x")
            if p.get("measured_over_predicted_memory") is not None:
                mhow = ("fit of measured ΔRSS" if p["memory_calibrated"] else
                        "bare tensor bytes: run `fine-deploy profile --supernet` to measure what the runtime holds")
                if p.get("device") not in (None, "host"):
                    mhow = f"for {p['device']}, not this machine"
                console.print(f"{m.name}: plan predicted memory {p['memory_bytes'] / 2**20:.1f} MiB beside the "
                              f"runtime's own ({mhow}); measured ΔRSS "
                              f"{m.memory['rss_increase_bytes'] / 2**20:.1f} MiB = "
                              f"{p['measured_over_predicted_memory']:.2f}x")


def _caption(result: BenchResult) -> str:
    m = result.machine
    threads = result.settings.threads or "default"
    cal = f" · calibration GEMM {_ms(result.calibration.median_s)} ms" if result.calibration else ""
    spin = "on" if result.settings.spinning else "off"
    return f"{m.get('cpu_model')} · {m.get('usable_cores')} cores · threads {threads} · spinning {spin}{cal}"
