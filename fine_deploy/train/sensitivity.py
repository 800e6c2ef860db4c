"""The sensitivity table: the measured held-out loss increase of each knob value, other knobs full.

Layout (fine_deploy/supernet/spec.py, `sensitivity`), read by the planner:
{"metric": "heldout_denoising_loss", "baseline": float, "proxy": false,
 "ranks": {type: {str(r): increase}}, "widths": {knob: {str(w): increase}}, "depth": {str(d): increase}}
Each value is measured alone (one knob changed, the others at full size); the planner adds them up,
which is the usual first-order (separable) assumption of OFA / NAS look-up tables.
"""

from __future__ import annotations

from typing import Any

from rich.progress import Progress

from fine_deploy.supernet.core import SubnetConfig
from fine_deploy.train.data import ImageSet
from fine_deploy.train.metrics import heldout_loss


def measure_sensitivity(tsn, heldout: ImageSet, *, draws: int = 2, seed: int = 1234) -> dict[str, Any]:
    spec = tsn.spec
    jobs: list[tuple[str, str, str, SubnetConfig]] = []
    for t in spec.types:
        for r in t.rank_options:
            if r != t.max_rank:
                jobs.append(("ranks", t.name, str(r), SubnetConfig(ranks={t.name: r})))
    for knob, values in (spec.widths.get("knobs") or {}).items():
        for w in values:
            if w != max(values):
                jobs.append(("widths", knob, str(w), SubnetConfig(widths={knob: w})))
    for d in spec.depth.get("options") or []:
        if d != spec.depth.get("full"):
            jobs.append(("depth", "", str(d), SubnetConfig(depth=d)))
    base = heldout_loss(tsn, heldout, draws=draws, seed=seed)
    table: dict[str, Any] = {"metric": "heldout_denoising_loss", "baseline": round(base, 6), "proxy": False,
                             "ranks": {t.name: {str(t.max_rank): 0.0} for t in spec.types},
                             "widths": {k: {str(max(v)): 0.0} for k, v in (spec.widths.get("knobs") or {}).items()},
                             "depth": {str(spec.depth["full"]): 0.0} if spec.depth.get("full") else {},
                             "heldout_images": len(heldout), "draws": draws, "seed": seed}
    with Progress(transient=True) as progress:
        task = progress.add_task("sensitivity", total=len(jobs))
        for section, name, value, cfg in jobs:
            inc = heldout_loss(tsn, heldout, cfg, draws=draws, seed=seed) - base
            (table[section].setdefault(name, {}) if name else table[section])[value] = round(inc, 6)
            progress.advance(task)
    return table
