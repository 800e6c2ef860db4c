"""End-to-end calibration where users get it: `profile --supernet` times whole exported subnets, `plan` prices
with the fit and says under which protocol, `bench` measures an export the way its plan promised."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fine_deploy.cli import app
from fine_deploy.cost.commands import supernet_choices
from fine_deploy.cost.lut import load_lut
from fine_deploy.cost.profiler import profile
from fine_deploy.export.calibrate import calibrate, fit_terms
from fine_deploy.planner.costs import MEMORY_TERMS, TERMS
from fine_deploy.planner.predict import load_predictor
from fine_deploy.runtime.timing import PREDICTION, Protocol

REPO_PROFILES = Path(__file__).resolve().parents[1] / "profiles"
FAST_LAYERS = Protocol(warmup=2, rounds=3, runs_per_round=5)
FAST_WHOLE = Protocol(threads=1, warmup=3, rounds=6, runs_per_round=5, estimator="median", clock="wall")


@pytest.fixture(scope="module")
def lut_of(dit_supernet, tmp_path_factory):
    """A quickly measured LUT of the tiny DiT supernet's layer choices, without end-to-end calibration."""
    d = tmp_path_factory.mktemp("lut")
    shutil.copy(REPO_PROFILES / "host.yaml", d / "host.yaml")
    shapes, ranks = supernet_choices(dit_supernet)
    path = d / "lut.json"
    profile("host", path, shapes=shapes, ranks=ranks, protocol=FAST_LAYERS, calibration_subnets=0, profiles=d,
            show_progress=False)
    return path


def test_fit_terms_recovers_known_coefficients_and_drops_a_constant_term():
    rng = np.random.default_rng(0)
    true = {"layers": 1.8, "around": 0.5, "blocks": 9e-5, "fixed": 3e-5}
    terms = [{"layers": float(a), "around": float(b), "blocks": 4.0, "fixed": 1.0}
             for a, b in rng.uniform(1e-4, 1e-3, size=(12, 2))]
    measured = np.array([sum(true[k] * t[k] for k in TERMS) for t in terms])
    coef, margin, fitted = fit_terms(terms, measured)
    assert coef["layers"] == pytest.approx(1.8, rel=1e-6) and coef["around"] == pytest.approx(0.5, rel=1e-5)
    assert coef["blocks"] == 0.0  # every subnet ran 4 blocks: folded into the constant
    assert coef["fixed"] == pytest.approx(3e-5 + 4 * 9e-5, rel=1e-5)
    assert margin < 1e-9 and np.allclose(fitted, measured)


def test_profile_calibration_makes_plan_predict_what_bench_measures(dit_supernet, lut_of, tmp_path):
    lut = tmp_path / "lut.json"
    shutil.copy(lut_of, lut)
    profiles = lut_of.parent
    raw = load_predictor(dit_supernet, "host", lut, profiles=profiles)
    assert not raw.calibrated

    cal = calibrate(dit_supernet, lut, points=8, profiles=profiles, protocol=FAST_WHOLE, show_progress=False)
    stored = load_lut(lut).calibration["end_to_end"]
    rec = next(iter(stored.values()))
    assert rec["subnets"] == 8 and len(rec["measured_s"]) == 8 and set(rec["coefficients"]) == set(TERMS)
    assert all(v >= 0 for v in rec["coefficients"].values())
    assert rec["protocol"]["estimator"] == "median" and rec["protocol"]["clock"] == "wall"
    mem = rec["memory"]  # the exports' ΔRSS, measured as bench does, fitted beside the latency
    assert len(mem["measured_bytes"]) == 8 and min(mem["measured_bytes"]) > 0
    assert set(mem["coefficients"]) == set(MEMORY_TERMS) and mem["median_abs_rel_error"] < 0.1

    pred = load_predictor(dit_supernet, "host", lut, profiles=profiles)
    assert pred.calibrated
    # the calibrated predictor reproduces the whole-model measurements it was fitted on (noisy shared host: 30%)
    from fine_deploy.export.calibrate import calibration_subnets

    picks = calibration_subnets(load_predictor(dit_supernet, "host", lut, profiles=profiles, raw=True), 8)
    ratios = [m / pred.latency_s(c, f) for (c, f), m in zip(picks, cal["measured_s"], strict=True)]
    assert 0.7 < float(np.median(ratios)) < 1.3, ratios

    out = tmp_path / "plan.json"
    res = CliRunner().invoke(app, ["plan", "--device", "host", "--mem", "2GB", "--supernet", str(dit_supernet),
                                   "--lut", str(lut), "-o", str(out)])
    assert res.exit_code == 0, res.output
    proto = json.loads(out.read_text())["predicted"]["cost_model"]["latency_protocol"]
    assert proto["calibrated"] is True and proto["threads"] == 1 and proto["note"] is None
    assert proto["margin"] == rec["margin_applied"]  # the margin the fit was raised by, as stored
    assert "median wall time" in proto["description"]

    exp = tmp_path / "exp"
    res = CliRunner().invoke(app, ["export", "--plan", str(out), "--format", "onnx", "-o", str(exp)])
    assert res.exit_code == 0, res.output
    from fine_deploy.bench.run import bench

    r = bench([exp], runs=10, warmup=2, progress=False, show=False, calibrate=False, spinup_s=0)
    assert r.settings.threads == 1  # the plan's protocol, not the runtime's default threads
    p = r.models[0].predicted
    assert p["calibrated"] and p["device"] == "host"
    assert p["latency_s"] == json.loads(out.read_text())["predicted"]["latency_s"]
    assert p["measured_over_predicted"] == pytest.approx(r.models[0].stats["median"] / p["latency_s"])
    # the plan's memory (less the runtime's own) is what bench's ΔRSS reads, within the fit's spread
    planned = json.loads(out.read_text())["predicted"]
    assert planned["cost_model"]["memory_model"]["calibrated"] and planned["memory_parts"]["session"] > 0
    assert p["memory_calibrated"] and 0.8 < p["measured_over_predicted_memory"] < 1.1, p
    # the bare tensor bytes of the same plan, uncalibrated, are far from what the runtime holds
    bare = load_predictor(dit_supernet, "host", lut, profiles=profiles, raw=True).evaluate(
        json.loads(out.read_text())["subnet"], json.loads(out.read_text())["kernels"]).parts
    bare_model = sum(bare.values()) - bare["runtime_overhead"]
    assert r.models[0].memory["rss_increase_bytes"] > 1.5 * bare_model


def test_plan_with_an_uncalibrated_lut_says_what_to_run(dit_supernet, lut_of, tmp_path):
    out = tmp_path / "plan.json"
    res = CliRunner().invoke(app, ["plan", "--device", "host", "--mem", "2GB", "--supernet", str(dit_supernet),
                                   "--lut", str(lut_of), "-o", str(out)])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "no end-to-end calibration" in flat
    assert f"fine-deploy profile --device host --supernet {dit_supernet}" in flat
    proto = json.loads(out.read_text())["predicted"]["cost_model"]["latency_protocol"]
    assert proto["calibrated"] is False and "layer sum" in proto["note"]


def test_profile_refuses_too_few_calibration_subnets(tmp_path):
    from test_cli_validation import refused

    line = refused(["profile", "--device", "host", "--calibrate-subnets", "2", "-o", str(tmp_path / "l.json")],
                   tmp_path, match="--calibrate-subnets 2")
    assert "at least 3" in line


def test_prediction_protocol_is_what_plans_promise():
    assert PREDICTION.threads == 1 and PREDICTION.clock == "wall" and PREDICTION.estimator == "median"


def test_bench_refuses_a_block_below_one(tmp_path):
    from test_cli_validation import refused

    line = refused(["bench", str(tmp_path / "model"), "--block", "0", "--json", str(tmp_path / "b.json")], tmp_path,
                   match="--block 0")
    assert "positive" in line
