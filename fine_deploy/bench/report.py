"""``fine-deploy report``: compare a current bench.json against a baseline, per model."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fine_deploy.bench.schema import BenchResult, ModelResult, load_bench
from fine_deploy.bench.stats import Comparison, compare
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_write_bytes

FORMATS = ("md", "json", "junit")
METRICS = ("wall", "cpu")
REPORT_SCHEMA = 1


def parse_threshold(value: float | str) -> float:
    """``"5%"``, ``"5"`` (percent when above 1) or ``0.05`` -> 0.05."""
    text = str(value).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%?)", text)
    if not m:
        raise FineDeployError(f"--threshold {text!r} is not a percentage; write e.g. --threshold 5%")
    x = float(m.group(1))
    t = x / 100 if m.group(2) or x >= 1 else x
    if not 0 < t < 1:
        raise FineDeployError(f"--threshold {text} must lie between 0% and 100%")
    return t


@dataclass
class Selection:
    """A bench file, and optionally one model in it (``bench.json::model``)."""

    path: Path
    result: BenchResult
    model: str | None


def _select(spec: str | Path) -> Selection:
    text = str(spec)
    path, model = (text.rsplit("::", 1) + [None])[:2] if "::" in text else (text, None)
    result = load_bench(path)
    if model is not None and model not in {m.name for m in result.models}:
        names = ", ".join(m.name for m in result.models)
        raise FineDeployError(f"{path} has no model {model!r}; it has: {names}")
    return Selection(Path(path), result, model)


@dataclass
class Report:
    baseline: dict[str, Any]
    current: dict[str, Any]
    threshold: float
    alpha: float
    normalized: bool
    comparisons: list[Comparison]
    metric: str = "wall"
    missing: list[str] = field(default_factory=list)  # in the baseline, not in the current run
    new: list[str] = field(default_factory=list)  # in the current run only
    notes: list[str] = field(default_factory=list)
    created: str = ""
    schema: int = REPORT_SCHEMA
    kind: str = "fine-deploy/report"

    @property
    def regressed(self) -> bool:
        return any(c.verdict == "regressed" for c in self.comparisons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "kind": self.kind,
            "created": self.created,
            "baseline": self.baseline,
            "current": self.current,
            "threshold": self.threshold,
            "alpha": self.alpha,
            "normalized": self.normalized,
            "metric": self.metric,
            "regressed": self.regressed,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "missing": self.missing,
            "new": self.new,
            "notes": self.notes,
        }


def _pairs(base: Selection, cur: Selection) -> tuple[list[tuple[ModelResult, ModelResult]], list[str], list[str]]:
    if base.model or cur.model:
        b = base.result.model(base.model) if base.model else None
        c = cur.result.model(cur.model) if cur.model else None
        if b is None or c is None:
            one = base.result.models if b is None else cur.result.models
            if len(one) != 1:
                raise FineDeployError(
                    "select a model on both sides (bench.json::NAME) when one side names a model and the "
                    "other file holds several"
                )
            b, c = b or one[0], c or one[0]
        return [(b, c)], [], []
    cur_by = {m.name: m for m in cur.result.models}
    base_by = {m.name: m for m in base.result.models}
    pairs = [(m, cur_by[m.name]) for m in base.result.models if m.name in cur_by]
    if not pairs and len(base.result.models) == 1 and len(cur.result.models) == 1:
        pairs = [(base.result.models[0], cur.result.models[0])]
        return pairs, [], []
    if not pairs:
        raise FineDeployError(f"{base.path} and {cur.path} share no model name; select one pair as bench.json::NAME")
    missing = [n for n in base_by if n not in cur_by]
    new = [n for n in cur_by if n not in base_by]
    return pairs, missing, new


def _side(sel: Selection) -> dict[str, Any]:
    r = sel.result
    return {
        "path": str(sel.path),
        "model": sel.model,
        "run_id": r.run_id,
        "created": r.created,
        "machine_id": r.machine.get("id"),
        "cpu_model": r.machine.get("cpu_model"),
        "calibration_median_s": r.calibration.median_s if r.calibration else None,
        "run_order": r.settings.run_order,
        "threads": r.settings.threads,
        "spinning": r.settings.spinning,
    }


def build_report(
    baseline: str | Path,
    current: str | Path,
    threshold: float | str = 0.05,
    *,
    normalize: bool = False,
    alpha: float = 0.05,
    seed: int = 0,
    metric: str = "wall",
) -> Report:
    """Compare every model of ``current`` with the same-named model of ``baseline``.

    ``FILE::MODEL`` selects one model on a side (e.g. two models of one interleaved run). Models
    timed in the same interleaved run are compared round by round (paired); otherwise the
    samples are compared as two independent sets. ``normalize`` divides every sample by its
    run's calibration-GEMM median first, for runs from different machines. ``metric="cpu"``
    compares process CPU time per run instead of wall time (CPU backends): on a runner shared
    with other jobs it still sees the model's own work.
    """
    if metric not in METRICS:
        raise FineDeployError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if metric == "cpu" and normalize:
        raise FineDeployError("--normalize scales wall time by the calibration GEMM; use it with --metric wall")
    t = parse_threshold(threshold)
    base, cur = _select(baseline), _select(current)
    pairs, missing, new = _pairs(base, cur)
    notes: list[str] = []
    if normalize and (base.result.calibration is None or cur.result.calibration is None):
        raise FineDeployError(
            "--normalize needs the calibration kernel in both files; re-run bench without --no-calibrate"
        )
    same_run = base.result.run_id == cur.result.run_id
    if not normalize and not same_run and base.result.machine.get("id") != cur.result.machine.get("id"):
        notes.append(
            "baseline and current come from different machines or runtime versions "
            f"({base.result.machine.get('id')} vs {cur.result.machine.get('id')}); consider --normalize"
        )
    for key in ("threads", "spinning", "batch", "steps"):
        bv, cv = getattr(base.result.settings, key), getattr(cur.result.settings, key)
        if bv != cv:
            notes.append(f"settings differ: {key} {bv} (baseline) vs {cv} (current)")
    comparisons = []
    for i, (b, c) in enumerate(pairs):
        if metric == "cpu":
            if not b.cpu_samples_s or not c.cpu_samples_s:
                raise FineDeployError(
                    f"{c.name} has no CPU-time samples (a GPU backend or an older bench file); use --metric wall"
                )
            bs, cs = np.asarray(b.cpu_samples_s), np.asarray(c.cpu_samples_s)
        else:
            bs, cs = np.asarray(b.samples_s), np.asarray(c.samples_s)
        if b.input_shapes != c.input_shapes:
            notes.append(f"{c.name}: input shapes differ ({b.input_shapes} vs {c.input_shapes})")
        if normalize:
            bs = bs / base.result.calibration.median_s
            cs = cs / cur.result.calibration.median_s
        paired = same_run and base.result.settings.run_order == "interleaved" and bs.size == cs.size
        name = c.name if b.name == c.name else f"{b.name} → {c.name}"
        comparisons.append(
            compare(
                bs,
                cs,
                name=name,
                threshold=t,
                alpha=alpha,
                seed=seed + i,
                normalized=normalize,
                paired=paired,
            )
        )
    return Report(
        baseline=_side(base),
        current=_side(cur),
        threshold=t,
        alpha=alpha,
        normalized=normalize,
        comparisons=comparisons,
        missing=missing,
        new=new,
        notes=notes,
        metric=metric,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def report(
    baseline: str | Path,
    current: str | Path,
    threshold: float | str = 0.05,
    fmt: str = "md",
    output: str | Path | None = None,
    plot: str | Path | None = None,
    normalize: bool = False,
    alpha: float = 0.05,
    metric: str = "wall",
) -> Report:
    """Build the report, write it to ``output`` (or stdout) in ``fmt``, and the plot to ``plot``.

    The caller exits 1 when ``Report.regressed``.
    """
    from fine_deploy.validate import check_probability, output_file

    if fmt not in FORMATS:
        raise FineDeployError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    alpha = check_probability(alpha, "--alpha")
    output_file(output, "-o", f"report.{'xml' if fmt == 'junit' else fmt}")
    output_file(plot, "--plot", "report.png")
    rep = build_report(baseline, current, threshold, normalize=normalize, alpha=alpha, metric=metric)
    from fine_deploy.bench.render import render

    text = render(rep, fmt)
    if plot is not None:
        from fine_deploy.bench.plot import plot_report

        plot_report(rep, baseline, current, plot)
    if output is not None:
        atomic_write_bytes(output, text.encode())
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return rep
