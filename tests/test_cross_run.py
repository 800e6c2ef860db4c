"""Separate-run verdicts: the SPRT rule, the between-run noise model, exit 3 when undecided,
`bench --until-decided`, and ΔRSS that does not depend on the order of artifacts."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fine_deploy.bench.decide import band, decide
from fine_deploy.bench.noise import RunValue, learn_noise
from fine_deploy.bench.report import EXIT_INCONCLUSIVE, build_report
from fine_deploy.bench.run import bench
from fine_deploy.bench.schema import BenchResult, BenchSettings, Calibration, ModelResult
from fine_deploy.bench.stats import summarize
from fine_deploy.bench.synthetic import write_matmul_chain
from fine_deploy.cli import app
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_write_json


def test_sprt_rule_and_band() -> None:
    t = 0.05
    assert decide(0.0, 0.005, t) == "unchanged"
    assert decide(math.log(1.10), 0.005, t) == "regressed"
    assert decide(math.log(1.05), 0.005, t) == "regressed"
    assert decide(math.log(0.90), 0.005, t) == "improved"
    assert decide(math.log(1.025), 0.005, t) == "inconclusive"  # half-way: neither is likelier
    assert decide(0.0, 0.03, t) == "inconclusive"  # too noisy to call anything unchanged
    assert decide(float("nan"), 0.01, t) == "inconclusive"
    z = band(0.005, t)
    assert z.unchanged_low < 1 < z.unchanged_high < z.regressed_above < 1.05
    wide = band(0.012, t)
    assert wide.regressed_above > z.regressed_above and wide.unchanged_high < z.unchanged_high
    assert band(0.03, t).unchanged_low > band(0.03, t).unchanged_high  # "unchanged" unreachable


def test_noise_model_learns_the_calibration_elasticity() -> None:
    rng = np.random.default_rng(1)
    cal = rng.normal(0, 0.03, 30)  # contention moves the calibration a lot ...
    vals = [RunValue(0.3 * c + rng.normal(0, 0.003), c, 1e-4, 200) for c in cal]  # ... the model 0.3 as much
    nm = learn_noise(vals, "cpu")
    assert nm.elasticity == pytest.approx(0.3, abs=0.05)
    assert 0.003 <= nm.sd < 0.0045 and nm.history_runs == 30  # upper-bound sd, a bit above the truth
    raw = learn_noise(vals, "cpu", elasticity=0.0)
    assert raw.sd > 2 * nm.sd  # without the calibration the history looks much noisier
    with pytest.raises(FineDeployError, match="at least 3"):
        learn_noise(vals[:2], "cpu")


def _run(path: Path, name: str, scale: float, run_id: str, rng: np.random.Generator, n: int = 120) -> Path:
    """A bench file whose run has its own between-run offset, like a separate process (CPU samples)."""
    offset = math.exp(rng.normal(0, 0.003))
    cpu = scale * 0.010 * offset * (1 + 0.02 * np.abs(rng.standard_normal(n)))
    cal = 0.001 * (1 + 0.02 * np.abs(rng.standard_normal(n)))
    st = summarize(cpu)
    model = ModelResult(
        name=name, path=f"{name}.onnx", sha256=None, format="onnx", backend="onnxruntime-cpu",
        providers=["CPUExecutionProvider"], session={}, input_shapes={"x": [1, 8]},
        samples_s=[float(x) * 1.01 for x in cpu], stats=st, throughput_per_s=1 / st["median"],
        per_image_s=st["median"], memory={"rss_increase_bytes": None}, cpu_samples_s=[float(x) for x in cpu],
    )
    settings = BenchSettings(runs=n, warmup=1, steps=1, batch=1, threads=1, spinning=False, backend="auto",
                             run_order="interleaved", order_detail="", estimator="median", timer="")
    r = BenchResult(created="2026-01-01T00:00:00+00:00", run_id=run_id, machine={"id": "m", "cpu_model": "cpu"},
                    settings=settings, models=[model],
                    calibration=Calibration(kernel="gemm", flops=1.0, samples_s=list(cal), median_s=0.001,
                                            session={}, cpu_samples_s=list(cal)))
    atomic_write_json(path, r.to_dict())
    return path


def test_separate_runs_with_history_decide_and_say_how(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    hist = [_run(tmp_path / "hist" / f"h{i}.json", "unet", 1.0, f"h{i}", rng) for i in range(10)]
    base = hist[0]
    same = _run(tmp_path / "same.json", "unet", 1.0, "c1", rng)
    slower = _run(tmp_path / "slower.json", "unet", 1.10, "c2", rng)
    aa = build_report(base, same, history=[tmp_path / "hist"])
    assert aa.comparisons[0].verdict == "unchanged" and aa.exit_code == 0 and aa.metric == "cpu"
    how = aa.comparisons[0].decided_by
    assert how["mode"] == "separate runs" and how["noise_model"]["history_runs"] == 10
    assert how["runs"] == [120, 120] and how["band"]["regressed_above"] < 1.05
    ab = build_report(base, slower, history=hist)
    assert ab.comparisons[0].verdict == "regressed" and ab.exit_code == 1
    # without the history the same A/A pair cannot be decided at 5%: exit 3, with what to do
    undecided = build_report(base, same)
    assert undecided.comparisons[0].verdict == "inconclusive" and undecided.exit_code == EXIT_INCONCLUSIVE
    assert "--until-decided" in undecided.comparisons[0].reason
    short = build_report(base, same, history=hist[:2])  # too short a history: the default, and it says why
    assert "2 run(s) of unet, 3 needed" in short.comparisons[0].decided_by["noise"]

    runner = CliRunner()
    res = runner.invoke(app, ["report", "--baseline", str(base), "--current", str(same)])
    assert res.exit_code == 3 and "undecided" in res.output
    md = tmp_path / "r.md"
    res = runner.invoke(app, ["report", "--baseline", str(base), "--current", str(slower), "--history",
                              str(tmp_path / "hist"), "-o", str(md), "--plot", str(tmp_path / "r.png")])
    assert res.exit_code == 1
    line = [ln for ln in md.read_text().splitlines() if ln.startswith("How it decided:")]
    assert len(line) == 1 and all(k in line[0] for k in ("metric", "normaliser", "noise", "band", "runs"))
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    xml = tmp_path / "r.xml"
    runner.invoke(app, ["report", "--baseline", str(base), "--current", str(slower), "--history",
                        str(tmp_path / "hist"), "--format", "junit", "-o", str(xml)])
    props = {p.get("name"): p.get("value") for p in ET.parse(xml).getroot().iter("property")}
    assert props["exit_code"] == "1" and "learned from 10 A/A runs" in props["decided_by"]
    js = json.loads(runner.invoke(app, ["report", "--baseline", str(base), "--current", str(same), "--history",
                                        str(tmp_path / "hist"), "--format", "json"]).output)
    assert js["exit_code"] == 0 and js["comparisons"][0]["decided_by"]["noise_model"]["sd"] > 0
    bad = runner.invoke(app, ["report", "--baseline", str(base), "--current", str(same), "--history",
                              str(tmp_path / "none")])
    assert bad.exit_code == 2


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("chains")
    return write_matmul_chain(d / "small.onnx", 2, 64, rows=64), write_matmul_chain(d / "big.onnx", 8, 256, rows=64)


def test_until_decided_stops_on_a_clear_slowdown(chains: tuple[Path, Path], tmp_path: Path) -> None:
    small, big = chains
    out = tmp_path / "both.json"
    r = bench([small, big], runs=20, json_path=out, threads=1, until_decided=True, time_budget_s=60,
              progress=False, show=False, spinup_s=0.1)
    rec = r.settings.until_decided
    assert rec["verdict"] == "regressed" and rec["rounds"] >= 20 and rec["looks"] >= 1
    rep = build_report(f"{out}::small", f"{out}::big")
    assert rep.comparisons[0].method == "paired" and rep.comparisons[0].verdict == "regressed"
    with pytest.raises(FineDeployError, match="exactly two"):
        bench([small], until_decided=True, progress=False, show=False)


def test_rss_does_not_depend_on_the_order(chains: tuple[Path, Path]) -> None:
    small, big = chains
    kw = dict(runs=3, warmup=1, threads=1, progress=False, show=False, calibrate=False, spinup_s=0.0)
    first = {m.name: m.memory["rss_increase_bytes"] for m in bench([small, big], **kw).models}
    second = {m.name: m.memory["rss_increase_bytes"] for m in bench([big, small], **kw).models}
    assert all(v is not None and v > 0 for v in (*first.values(), *second.values()))
    for name in ("small", "big"):
        assert abs(first[name] - second[name]) <= 2**20, (first, second)
    assert first["big"] > first["small"]  # and it still sees the bigger model
