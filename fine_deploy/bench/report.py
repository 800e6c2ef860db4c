"""``fine-deploy report``: compare a current bench.json against a baseline, per model."""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fine_deploy.bench.decide import ALPHA, BETA, Band, band, decide, robust_location
from fine_deploy.bench.noise import (
    METRIC_NAMES,
    MIN_HISTORY,
    QUANTILE,
    default_noise,
    history_values,
    learn_noise,
    pair_se,
    run_value,
    samples_of,
)
from fine_deploy.bench.schema import BenchResult, ModelResult, load_bench
from fine_deploy.bench.stats import MIN_SAMPLES, Comparison
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_write_bytes

FORMATS = ("md", "json", "junit")
METRICS = ("auto", "wall", "cpu")
INCONCLUSIVE_FIX = (
    "give more A/A history (--history) or bench both artifacts together: "
    "fine-deploy bench BASELINE CURRENT --until-decided --json both.json, then report on both.json::NAME"
)
# exit codes of `report`: 0 no regression and every model decided, 1 a regression, 3 undecided (2: bad input)
EXIT_OK, EXIT_REGRESSED, EXIT_INCONCLUSIVE = 0, 1, 3
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
    metric: str = "auto"
    beta: float = BETA
    history: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the baseline, not in the current run
    new: list[str] = field(default_factory=list)  # in the current run only
    notes: list[str] = field(default_factory=list)
    created: str = ""
    schema: int = REPORT_SCHEMA
    kind: str = "fine-deploy/report"

    @property
    def regressed(self) -> bool:
        return any(c.verdict == "regressed" for c in self.comparisons)

    @property
    def inconclusive(self) -> bool:
        return any(c.verdict == "inconclusive" for c in self.comparisons)

    @property
    def exit_code(self) -> int:
        """1 on a regression, else 3 when a model is undecided, else 0."""
        if self.regressed:
            return EXIT_REGRESSED
        return EXIT_INCONCLUSIVE if self.inconclusive else EXIT_OK

    def decided_by(self) -> str:
        """One line: how the verdicts were reached (metric, normaliser, noise band, runs)."""
        parts = []
        for c in self.comparisons:
            h = c.decided_by or {}
            z = h.get("band", {})
            zone = f"regressed at ≥ ×{z['regressed_above']:.3f}" if z else ""
            if z and z["unchanged_low"] <= z["unchanged_high"]:
                zone += f", unchanged within ×{z['unchanged_low']:.3f}–{z['unchanged_high']:.3f}"
            elif z:
                zone += ", unchanged unreachable at this noise"
            runs = "/".join(str(r) for r in h.get("runs", []))
            who = f"{c.name}: " if len(self.comparisons) > 1 else ""
            parts.append(
                f"{who}{h.get('mode')} · metric {h.get('metric')} ({h.get('estimator')}) · normaliser "
                f"{h.get('normaliser')} · noise {h.get('noise')} · band {zone} · runs {runs} · {h.get('rule')}"
            )
        return "; ".join(parts)

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
            "beta": self.beta,
            "history": self.history,
            "regressed": self.regressed,
            "inconclusive": self.inconclusive,
            "exit_code": self.exit_code,
            "decided_by": self.decided_by(),
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


def _metric_for(metric: str, b: ModelResult, c: ModelResult) -> str:
    """``auto``: process CPU time where both sides have it (CPU backends), else wall time."""
    if metric != "auto":
        return metric
    return "cpu" if b.cpu_samples_s and c.cpu_samples_s else "wall"


def _paired(b: ModelResult, c: ModelResult, metric: str, threshold: float, name: str,
            alpha: float, beta: float) -> Comparison:
    """Both sides timed in the same interleaved rounds: the per-round log ratio cancels the machine's drift,
    so no between-run noise enters; its median and the MAD-based error go to the SPRT rule."""
    bs, cs = np.asarray(samples_of(b, metric)), np.asarray(samples_of(c, metric))
    lr = np.log(cs / bs)
    x, se = robust_location(lr)
    verdict = decide(x, se, threshold, alpha, beta) if lr.size >= MIN_SAMPLES else "inconclusive"
    zone = band(se, threshold, alpha, beta)
    how = {
        "mode": "same run, paired rounds",
        "metric": METRIC_NAMES[metric],
        "estimator": "median of per-round ratios",
        "normaliser": "none needed (both sides in the same rounds)",
        "noise": f"within-run only: se {se:.2%} of the log ratio",
        "se": se,
        "band": asdict(zone),
        "runs": [int(bs.size), int(cs.size)],
        "rule": f"Wald SPRT 0 vs ±{threshold:.0%}, α={alpha}, β={beta}",
    }
    return _comparison(name, verdict, x, se, bs, cs, threshold, "paired", False, how, zone, alpha, beta)


def _cross_run(base: Selection, b: ModelResult, cur: Selection, c: ModelResult, metric: str, threshold: float,
               name: str, alpha: float, beta: float, history: list[BenchResult], normalize: bool) -> Comparison:
    """Separate runs: each side's log p10 (scaled by the calibration^β), compared with the between-run noise
    of this platform (fine_deploy.bench.noise) instead of the within-run spread."""
    rb, rc = run_value(base.result, b, metric), run_value(cur.result, c, metric)
    same_machine = base.result.machine.get("id") == cur.result.machine.get("id")
    values = history_values(history, b.name, b.sha256, metric) if history else []
    if len(values) >= MIN_HISTORY:
        noise = learn_noise(values, metric, elasticity=1.0 if normalize else None)
    else:  # no history for this model (another model of a multi-model file may have some): say so
        noise = default_noise(metric, same_machine, elasticity=1.0 if normalize else None)
        if history:
            noise = replace(noise, source=f"{noise.source}; --history holds {len(values)} run(s) of {b.name}, "
                                          f"{MIN_HISTORY} needed")
    x = noise.value(rc) - noise.value(rb)
    se = pair_se(noise, rb, rc)
    verdict = decide(x, se, threshold, alpha, beta)
    zone = band(se, threshold, alpha, beta)
    normaliser = (
        f"calibration kernel {METRIC_NAMES[metric]}^{noise.elasticity:.2f}" if noise.elasticity else "none (β = 0)"
    )
    how = {
        "mode": "separate runs",
        "metric": METRIC_NAMES[metric],
        "estimator": f"p{QUANTILE} per run",
        "normaliser": normaliser,
        "noise": f"sd {noise.sd:.2%} per run, {noise.source}",
        "noise_model": noise.to_dict(),
        "se": se,
        "band": asdict(zone),
        "runs": [rb.n, rc.n],
        "rule": f"Wald SPRT 0 vs ±{threshold:.0%}, α={alpha}, β={beta}",
    }
    bs, cs = np.asarray(samples_of(b, metric)), np.asarray(samples_of(c, metric))
    return _comparison(name, verdict, x, se, bs, cs, threshold, "separate runs", normalize, how, zone, alpha, beta)


def _comparison(name: str, verdict: str, x: float, se: float, bs: np.ndarray, cs: np.ndarray, threshold: float,
                method: str, normalized: bool, how: dict[str, Any], zone: Band, alpha: float,
                beta: float) -> Comparison:
    from scipy.stats import norm

    ratio = math.exp(x)
    p = float(2 * norm.sf(abs(x) / se)) if se > 0 else float("nan")
    pct = f"{(ratio - 1) * 100:+.1f}%"
    odds = (1 - beta) / alpha
    if verdict == "regressed":
        reason = (f"{pct}, at or above ×{zone.regressed_above:.3f}: a {threshold:.0%} slowdown is "
                  f"{odds:.0f}x likelier than none")
    elif verdict == "improved":
        reason = (f"{pct}, at or below ×{zone.improved_below:.3f}: a {threshold:.0%} speed-up is "
                  f"{odds:.0f}x likelier than none")
    elif verdict == "unchanged":
        reason = (f"{pct}, within ×{zone.unchanged_low:.3f}–{zone.unchanged_high:.3f}: no change is "
                  f"{(1 - alpha) / beta:.0f}x likelier than ±{threshold:.0%}")
    else:
        reason = f"{pct} with se {se:.1%}: the noise cannot tell 0 from ±{threshold:.0%}; {INCONCLUSIVE_FIX}"
    return Comparison(
        name=name,
        verdict=verdict,
        ratio=ratio,
        ci_low=math.exp(x - 1.96 * se),
        ci_high=math.exp(x + 1.96 * se),
        p_value=p,
        baseline_median=float(np.median(bs)),
        current_median=float(np.median(cs)),
        n_baseline=int(bs.size),
        n_current=int(cs.size),
        threshold=threshold,
        reason=reason,
        method=method,
        normalized=normalized,
        decided_by=how,
    )


def build_report(
    baseline: str | Path,
    current: str | Path,
    threshold: float | str = 0.05,
    *,
    normalize: bool = False,
    alpha: float = ALPHA,
    beta: float = BETA,
    seed: int = 0,
    metric: str = "auto",
    history: list[str | Path] | None = None,
) -> Report:
    """Compare every model of ``current`` with the same-named model of ``baseline``.

    ``FILE::MODEL`` selects one model on a side (e.g. two models of one interleaved run). Models timed in
    the same interleaved run are compared round by round (paired); models from separate runs are compared
    through the between-run noise model (fine_deploy.bench.noise), learned from ``history`` (bench files of
    separate runs of the baseline artifact, "A/A history") or a conservative default. ``metric``: ``auto``
    (process CPU time where both sides have it, else wall time), ``cpu`` or ``wall``. ``normalize`` divides
    by the calibration kernel (β = 1) instead of the learned β. The verdict is the SPRT rule of
    fine_deploy.bench.decide.
    """
    if metric not in METRICS:
        raise FineDeployError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    t = parse_threshold(threshold)
    base, cur = _select(baseline), _select(current)
    hist = [_select(h).result for h in _history_files(history or [])]
    pairs, missing, new = _pairs(base, cur)
    notes: list[str] = []
    if normalize and (base.result.calibration is None or cur.result.calibration is None):
        raise FineDeployError(
            "--normalize needs the calibration kernel in both files; re-run bench without --no-calibrate"
        )
    same_run = base.result.run_id == cur.result.run_id
    if not same_run and base.result.machine.get("id") != cur.result.machine.get("id"):
        notes.append(
            "baseline and current come from different machines or runtime versions "
            f"({base.result.machine.get('id')} vs {cur.result.machine.get('id')}); times are scaled by the "
            "calibration kernel"
        )
    for key in ("threads", "spinning", "batch", "steps"):
        bv, cv = getattr(base.result.settings, key), getattr(cur.result.settings, key)
        if bv != cv:
            notes.append(f"settings differ: {key} {bv} (baseline) vs {cv} (current)")
    comparisons = []
    used: set[str] = set()
    for b, c in pairs:
        m = _metric_for(metric, b, c)
        used.add(m)
        if m == "cpu" and (not b.cpu_samples_s or not c.cpu_samples_s):
            raise FineDeployError(
                f"{c.name} has no CPU-time samples (a GPU backend or an older bench file); use --metric wall"
            )
        if b.input_shapes != c.input_shapes:
            notes.append(f"{c.name}: input shapes differ ({b.input_shapes} vs {c.input_shapes})")
        name = c.name if b.name == c.name else f"{b.name} → {c.name}"
        paired = (same_run and base.result.settings.run_order == "interleaved"
                  and len(samples_of(b, m)) == len(samples_of(c, m)))
        if paired:
            comparisons.append(_paired(b, c, m, t, name, alpha, beta))
        else:
            comparisons.append(_cross_run(base, b, cur, c, m, t, name, alpha, beta, hist, normalize))
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
        metric=used.pop() if len(used) == 1 else ("mixed" if used else metric),
        beta=beta,
        history=[str(h) for h in _history_files(history or [])],
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _history_files(history: list[str | Path]) -> list[Path]:
    """``--history`` entries: bench files, or folders whose *.json are bench files."""
    out: list[Path] = []
    for h in history:
        p = Path(h)
        if p.is_dir():
            found = sorted(p.glob("*.json"))
            if not found:
                raise FineDeployError(f"--history {p} holds no .json bench files; bench the baseline artifact "
                                      "in separate runs with --json into it")
            out.extend(found)
        else:
            out.append(p)
    return out


def report(
    baseline: str | Path,
    current: str | Path,
    threshold: float | str = 0.05,
    fmt: str = "md",
    output: str | Path | None = None,
    plot: str | Path | None = None,
    normalize: bool = False,
    alpha: float = ALPHA,
    metric: str = "auto",
    history: list[str | Path] | None = None,
    beta: float = BETA,
) -> Report:
    """Build the report, write it to ``output`` (or stdout) in ``fmt``, and the plot to ``plot``.

    The caller exits with ``Report.exit_code``: 0, 1 on a regression, 3 when undecided.
    """
    from fine_deploy.validate import check_probability, output_file

    if fmt not in FORMATS:
        raise FineDeployError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    alpha = check_probability(alpha, "--alpha")
    beta = check_probability(beta, "--beta")
    output_file(output, "-o", f"report.{'xml' if fmt == 'junit' else fmt}")
    output_file(plot, "--plot", "report.png")
    rep = build_report(baseline, current, threshold, normalize=normalize, alpha=alpha, beta=beta, metric=metric,
                       history=history)
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
