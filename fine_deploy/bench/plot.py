"""The distributions behind a report, baseline next to current, with the decision band, as one PNG.

The band is drawn on the current side, around where the baseline would put it: the baseline's reference
(p10 for separate runs, median for paired rounds) times the decision zones' ratios (fine_deploy.bench.decide),
so a reader sees whether the current run landed in "unchanged", "inconclusive" or "regressed"."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fine_deploy.bench.report import Report, _select
from fine_deploy.fileio import atomic_write_bytes

COLORS = {"regressed": "#d62728", "improved": "#2ca02c", "unchanged": "#7f7f7f", "inconclusive": "#bcbd22"}


def plot_report(rep: Report, baseline: str | Path, current: str | Path, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on CI runners
    import matplotlib.pyplot as plt

    base, cur = _select(baseline), _select(current)
    n = len(rep.comparisons)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 0.8, 3.6), squeeze=False)
    for ax, c in zip(axes[0], rep.comparisons, strict=True):
        bname, _, cname = c.name.partition(" → ")
        cname = cname or bname
        cpu = rep.metric == "cpu"
        key = "cpu_samples_s" if cpu else "samples_s"
        bs = np.asarray(getattr(base.result.model(bname), key)) * 1e3
        cs = np.asarray(getattr(cur.result.model(cname), key)) * 1e3
        parts = ax.violinplot([bs, cs], showmedians=True)
        for body, color in zip(parts["bodies"], ("#1f77b4", COLORS[c.verdict]), strict=True):
            body.set_facecolor(color)
        zone = (c.decided_by or {}).get("band")
        if zone:
            ref = float(np.percentile(bs, 10) if c.method != "paired" else np.median(bs))
            x0, x1 = 1.6, 2.4
            if zone["unchanged_low"] <= zone["unchanged_high"]:
                ax.fill_between([x0, x1], ref * zone["unchanged_low"], ref * zone["unchanged_high"],
                                color=COLORS["unchanged"], alpha=0.25, label="unchanged")
            ax.hlines(ref * zone["regressed_above"], x0, x1, colors=COLORS["regressed"], linestyles="--",
                      label="regressed above")
            ax.hlines(ref * zone["improved_below"], x0, x1, colors=COLORS["improved"], linestyles="--",
                      label="improved below")
            ax.plot([2.0], [ref * c.ratio], marker="D", color="k", label="current (as a ratio)")
            ax.legend(fontsize=6, loc="upper left")
        ax.set_xticks([1, 2], ["baseline", "current"])
        ax.set_ylabel("CPU ms per run" if cpu else "ms per run")
        ax.set_title(f"{c.name}\n×{c.ratio:.3f} {c.verdict} (±{c.threshold:.0%})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
