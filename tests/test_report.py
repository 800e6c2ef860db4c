"""`report`: verdicts on synthetic samples, the three formats, the plot and the exit codes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fine_deploy.bench.report import build_report, parse_threshold, report
from fine_deploy.bench.schema import BenchResult, BenchSettings, Calibration, ModelResult
from fine_deploy.bench.stats import compare, summarize
from fine_deploy.cli import app
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_write_json

RNG = np.random.default_rng(42)


def _samples(median: float, n: int = 30, cv: float = 0.02) -> np.ndarray:
    return median * (1 + cv * np.abs(RNG.standard_normal(n)))


def _bench_file(
    path: Path,
    models: dict[str, np.ndarray],
    *,
    run_id: str = "r1",
    machine: str = "m1",
    cal: float = 1e-3,
    order: str = "interleaved",
) -> Path:
    def model(name: str, s: np.ndarray) -> ModelResult:
        st = summarize(s)
        return ModelResult(
            name=name,
            path=f"{name}.onnx",
            sha256=None,
            format="onnx",
            backend="onnxruntime-cpu",
            providers=["CPUExecutionProvider"],
            session={},
            input_shapes={"x": [1, 8]},
            samples_s=[float(x) for x in s],
            stats=st,
            throughput_per_s=1 / st["median"],
            per_image_s=st["median"],
            memory={"rss_increase_bytes": None},
        )

    settings = BenchSettings(
        runs=len(next(iter(models.values()))),
        warmup=1,
        steps=1,
        batch=1,
        threads=1,
        spinning=False,
        backend="auto",
        run_order=order,
        order_detail="",
        estimator="median",
        timer="perf_counter",
    )
    r = BenchResult(
        created="2026-01-01T00:00:00+00:00",
        run_id=run_id,
        machine={"id": machine, "cpu_model": "test cpu"},
        settings=settings,
        calibration=Calibration(kernel="gemm", flops=1.0, samples_s=[cal] * 5, median_s=cal, session={}),
        models=[model(k, v) for k, v in models.items()],
    )
    atomic_write_json(path, r.to_dict())
    return path


def test_clear_cases_get_the_right_verdict() -> None:
    base = _samples(0.010)
    assert compare(base, _samples(0.012)).verdict == "regressed"
    assert compare(base, _samples(0.008)).verdict == "improved"
    same = compare(base, _samples(0.010))
    assert same.verdict == "unchanged" and 0.95 < same.ci_low <= same.ratio <= same.ci_high < 1.05
    # paired rounds: a common drift cancels out
    drift = np.linspace(1.0, 1.5, 30)
    p = compare(0.01 * drift, 0.0115 * drift, paired=True)
    assert p.verdict == "regressed" and p.method == "paired" and p.ratio == pytest.approx(1.15)
    assert (
        compare(0.01 * drift, 0.01 * drift * (1 + 0.001 * RNG.standard_normal(30)), paired=True).verdict == "unchanged"
    )


def test_tiny_or_noisy_samples_are_inconclusive() -> None:
    tiny = compare([0.010, 0.011, 0.010], [0.013, 0.014, 0.013])
    assert tiny.verdict == "inconclusive" and "too few samples" in tiny.reason
    assert tiny.to_dict()["ci_low"] is None  # no NaN in JSON
    noisy = compare(_samples(0.010, 8, cv=0.6), _samples(0.0106, 8, cv=0.6))
    assert noisy.verdict == "inconclusive"
    # 5% threshold: a significant but small 2% change is unchanged, not regressed
    small = compare(_samples(0.010, 200, 0.005), _samples(0.0102, 200, 0.005))
    assert small.p_value < 0.05 and small.verdict == "unchanged"


def test_threshold_parsing() -> None:
    assert parse_threshold("5%") == pytest.approx(0.05)
    assert parse_threshold("7.5") == pytest.approx(0.075)
    assert parse_threshold(0.1) == pytest.approx(0.1)
    for bad in ("five", "0", "150%", "-5%"):
        with pytest.raises(FineDeployError):
            parse_threshold(bad)


def test_report_formats_and_exit_codes(tmp_path: Path) -> None:
    base = _bench_file(
        tmp_path / "base.json", {"unet": _samples(0.010), "vae": _samples(0.020), "old": _samples(1)}, run_id="a"
    )
    cur = _bench_file(
        tmp_path / "cur.json", {"unet": _samples(0.013), "vae": _samples(0.020), "new": _samples(1)}, run_id="b"
    )
    rep = build_report(base, cur, "5%")
    verdicts = {c.name: c.verdict for c in rep.comparisons}
    # separate runs without A/A history: the default between-run noise (1.5% per run) cannot call a 5% band
    # "unchanged", only a clear +30% "regressed"
    assert verdicts == {"unet": "regressed", "vae": "inconclusive"} and rep.regressed and rep.exit_code == 1
    assert rep.missing == ["old"] and rep.new == ["new"]
    assert all(c.method == "separate runs" for c in rep.comparisons)

    md = tmp_path / "r.md"
    report(base, cur, fmt="md", output=md)
    text = md.read_text()
    assert "| unet |" in text and "regressed" in text and "latency regression" in text

    js = tmp_path / "r.json"
    report(base, cur, fmt="json", output=js)
    data = json.loads(js.read_text())
    assert data["schema"] == 1 and data["regressed"] is True and len(data["comparisons"]) == 2
    assert data["exit_code"] == 1 and "p10 per run" in data["decided_by"] and "default" in data["decided_by"]

    xml = tmp_path / "r.xml"
    report(base, cur, fmt="junit", output=xml)
    root = ET.parse(xml).getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("tests") == "3"
    failed = [tc.get("name") for tc in suite.iter("testcase") if tc.find("failure") is not None]
    assert failed == ["unet"]

    runner = CliRunner()
    res = runner.invoke(app, ["report", "--baseline", str(base), "--current", str(cur)])
    assert res.exit_code == 1 and "unet" in res.output
    ok = runner.invoke(app, ["report", "--baseline", str(base), "--current", str(base), "--format", "json"])
    assert ok.exit_code == 0 and json.loads(ok.output)["regressed"] is False
    bad = runner.invoke(app, ["report", "--baseline", str(base), "--current", str(tmp_path / "none.json")])
    assert bad.exit_code == 2 and "does not exist" in bad.output


def test_same_run_selectors_are_paired_and_plot(tmp_path: Path) -> None:
    drift = np.linspace(1, 2, 20)
    run = _bench_file(tmp_path / "run.json", {"a": 0.01 * drift, "a#2": 0.01 * drift * 1.001, "b": 0.0112 * drift})
    aa = build_report(f"{run}::a", f"{run}::a#2")
    assert [(c.name, c.method, c.verdict) for c in aa.comparisons] == [("a → a#2", "paired", "unchanged")]
    png = tmp_path / "dist.png"
    ab = report(f"{run}::a", f"{run}::b", plot=png, output=tmp_path / "ab.md")
    assert ab.regressed and ab.comparisons[0].ratio == pytest.approx(1.12)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FineDeployError, match="has no model 'c'"):
        build_report(f"{run}::a", f"{run}::c")


def test_normalize_by_calibration_across_machines(tmp_path: Path) -> None:
    fast = _bench_file(tmp_path / "fast.json", {"unet": _samples(0.010)}, run_id="x", machine="m1", cal=1e-3)
    slow = _bench_file(tmp_path / "slow.json", {"unet": _samples(0.020)}, run_id="y", machine="m2", cal=2e-3)
    # across machines the default noise model divides by the calibration kernel (β = 1): not a regression
    raw = build_report(fast, slow)
    assert not raw.regressed and any("different machines" in n for n in raw.notes)
    assert raw.comparisons[0].ratio == pytest.approx(1.0, abs=0.03)
    same = _bench_file(tmp_path / "same.json", {"unet": _samples(0.020)}, run_id="z", machine="m1", cal=2e-3)
    assert build_report(fast, same).regressed  # one machine: β = 0, twice the time is twice the time
    norm = build_report(fast, same, normalize=True)
    assert not norm.regressed and norm.comparisons[0].normalized


def test_bad_files(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(FineDeployError, match="not valid JSON"):
        build_report(tmp_path / "x.json", tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"schema": 1, "kind": "other"}')
    with pytest.raises(FineDeployError, match="not a fine-deploy bench result"):
        build_report(tmp_path / "y.json", tmp_path / "y.json")
    good = _bench_file(tmp_path / "g.json", {"a": _samples(0.01)})
    d = json.loads(good.read_text())
    d["schema"] = 9
    (tmp_path / "z.json").write_text(json.dumps(d))
    with pytest.raises(FineDeployError, match="bench result schema 9 is not supported"):
        build_report(good, tmp_path / "z.json")
    d["schema"] = 1
    d["models"][0]["samples_s"] = [0.0, -1.0]
    (tmp_path / "w.json").write_text(json.dumps(d))
    with pytest.raises(FineDeployError, match="no positive timing samples"):
        build_report(good, tmp_path / "w.json")
    with pytest.raises(FineDeployError, match="unknown report format"):
        report(good, good, fmt="html")


def test_cpu_metric(tmp_path: Path) -> None:
    run = _bench_file(tmp_path / "run.json", {"a": _samples(0.01), "b": _samples(0.01)})
    d = json.loads(run.read_text())
    d["models"][0]["cpu_samples_s"] = list(_samples(0.008))
    d["models"][1]["cpu_samples_s"] = list(_samples(0.0096))
    run.write_text(json.dumps(d))
    wall = build_report(f"{run}::a", f"{run}::b", metric="wall")
    cpu = build_report(f"{run}::a", f"{run}::b")  # auto: CPU time where both sides have it
    assert wall.comparisons[0].verdict != "regressed"
    assert cpu.metric == "cpu" and cpu.comparisons[0].verdict == "regressed"
    report(f"{run}::a", f"{run}::b", metric="cpu", output=tmp_path / "c.md")
    assert "CPU ms" in (tmp_path / "c.md").read_text()
    d["models"][1]["cpu_samples_s"] = None
    run.write_text(json.dumps(d))
    with pytest.raises(FineDeployError, match="no CPU-time samples"):
        build_report(f"{run}::a", f"{run}::b", metric="cpu")
    with pytest.raises(FineDeployError, match="unknown metric"):
        build_report(run, run, metric="gpu")
