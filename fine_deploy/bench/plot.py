"""The distributions behind a report, baseline next to current, as one PNG."""

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
        bs = np.asarray(base.result.model(bname).samples_s) * 1e3
        cs = np.asarray(cur.result.model(cname).samples_s) * 1e3
        parts = ax.violinplot([bs, cs], showmedians=True)
        for body, color in zip(parts["bodies"], ("#1f77b4", COLORS[c.verdict]), strict=True):
            body.set_facecolor(color)
        ax.set_xticks([1, 2], ["baseline", "current"])
        ax.set_ylabel("ms per run")
        ax.set_title(f"{c.name}\n×{c.ratio:.3f} {c.verdict}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
