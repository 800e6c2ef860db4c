"""Report renderers: markdown (pull-request comment), JSON, JUnit XML (CI test tabs)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from fine_deploy.bench.report import Report
from fine_deploy.bench.stats import Comparison
from fine_deploy.fileio import canonical_json

MARK = {
    "regressed": "🔴 regressed",
    "improved": "🟢 improved",
    "unchanged": "⚪ unchanged",
    "inconclusive": "🟡 inconclusive",
}


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _time(c: Comparison, x: float) -> str:
    return _num(x * 1e3, ".3f") + " ms"  # raw medians; the ratio column carries any normalisation


def render(rep: Report, fmt: str) -> str:
    return {"md": render_markdown, "json": render_json, "junit": render_junit}[fmt](rep)


def render_json(rep: Report) -> str:
    return canonical_json(rep.to_dict())


def render_markdown(rep: Report) -> str:
    counts = {v: sum(c.verdict == v for c in rep.comparisons) for v in MARK}
    head = ("❌ latency regression" if rep.regressed else
            "🟡 undecided: measure again" if rep.inconclusive else "✅ no latency regression")
    unit = "CPU ms" if rep.metric == "cpu" else "ms"
    lines = [
        f"### fine-deploy bench report: {head}",
        "",
        f"Threshold ±{rep.threshold:.0%} · α = {rep.alpha} · β = {rep.beta} · "
        + " · ".join(f"{n} {v}" for v, n in counts.items() if n)
        + (" · normalised by the calibration GEMM" if rep.normalized else "")
        + (" · metric: process CPU time per run" if rep.metric == "cpu" else ""),
        "",
        f"How it decided: {rep.decided_by()}",
        "",
        f"| model | baseline ({unit}) | current ({unit}) | ratio | 95% CI | p | verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in rep.comparisons:
        ci = f"[{_num(c.ci_low, '.3f')}, {_num(c.ci_high, '.3f')}]"
        lines.append(
            f"| {c.name} | {_time(c, c.baseline_median)} | {_time(c, c.current_median)} | "
            f"{_num(c.ratio, '.3f')} | {ci} | {_num(c.p_value, '.2g')} | {MARK[c.verdict]} |"
        )
    lines.append("")
    for c in rep.comparisons:
        lines.append(f"- **{c.name}**: {c.reason} ({c.method}, n = {c.n_baseline}/{c.n_current})")
    for name in rep.missing:
        lines.append(f"- **{name}**: in the baseline only (not benchmarked now)")
    for name in rep.new:
        lines.append(f"- **{name}**: new, no baseline")
    for note in rep.notes:
        lines.append(f"- note: {note}")
    b, cur = rep.baseline, rep.current
    lines += [
        "",
        f"<sub>baseline `{b['path']}` ({b['created']}, {b['cpu_model']}) · current `{cur['path']}` "
        f"({cur['created']}, {cur['cpu_model']}) · 95% CI: ±1.96 se of the log ratio · exit 0 ok, 1 regressed, "
        "3 undecided</sub>",
        "",
    ]
    return "\n".join(lines)


def render_junit(rep: Report) -> str:
    failures = sum(c.verdict == "regressed" for c in rep.comparisons)
    suite = ET.Element(
        "testsuite",
        name="fine-deploy latency",
        tests=str(len(rep.comparisons) + len(rep.missing)),
        failures=str(failures),
        errors="0",
        skipped=str(len(rep.missing)),
        timestamp=rep.created,
    )
    for c in rep.comparisons:
        case = ET.SubElement(
            suite,
            "testcase",
            classname="fine-deploy.bench",
            name=c.name,
            time=f"{c.current_median:.6f}",
        )
        summary = f"{c.verdict}: ratio {_num(c.ratio, '.3f')} [{_num(c.ci_low, '.3f')}, {_num(c.ci_high, '.3f')}]"
        if c.verdict == "regressed":
            failure = ET.SubElement(case, "failure", message=summary, type="LatencyRegression")
            failure.text = c.reason
        how = c.decided_by or {}
        ET.SubElement(case, "system-out").text = (
            f"{summary}; {c.reason}; decided by: {how.get('mode')}, {how.get('metric')}, normaliser "
            f"{how.get('normaliser')}, noise {how.get('noise')}, runs {how.get('runs')}"
        )
    for name in rep.missing:
        case = ET.SubElement(suite, "testcase", classname="fine-deploy.bench", name=name)
        ET.SubElement(case, "skipped", message="in the baseline only; not benchmarked in this run")
    props = ET.Element("properties")
    ET.SubElement(props, "property", name="decided_by", value=rep.decided_by())
    ET.SubElement(props, "property", name="exit_code", value=str(rep.exit_code))
    suite.insert(0, props)
    root = ET.Element("testsuites", name="fine-deploy report", tests=suite.get("tests"), failures=str(failures))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
