"""The profiler really measures: values > 0, FLOP-ordered for a large gap, a valid LUT, resumable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fine_deploy.cost.graphs import LayerChoice
from fine_deploy.cost.lut import load_lut
from fine_deploy.cost.predictor import predict_latency
from fine_deploy.cost.profiler import profile
from fine_deploy.cost.shapes import LayerShape
from fine_deploy.cost.timing import Protocol
from fine_deploy.errors import FineDeployError

REPO_PROFILES = Path(__file__).resolve().parents[1] / "profiles"
BIG = LayerShape("linear", 512, 512, 64, group="big")  # dense 16.8 MMAC vs rank 4: 0.26 MMAC
SMALL = LayerShape("linear", 64, 64, 16, group="small")
FAST = Protocol(warmup=3, rounds=4, runs_per_round=8)


@pytest.fixture()
def profiles(tmp_path):
    for name in ("host.yaml", "a100-80gb.yaml"):
        shutil.copy(REPO_PROFILES / name, tmp_path / name)
    return tmp_path


def test_tiny_lut_is_measured_and_ordered_by_flops(profiles, tmp_path):
    out = tmp_path / "lut.json"
    lut = profile(
        "host",
        out,
        shapes=[BIG, SMALL],
        ranks={BIG.key(): [4], SMALL.key(): [8]},
        protocol=FAST,
        calibration_subnets=3,
        memory_subnets=6,
        profiles=profiles,
        show_progress=False,
    )
    assert lut.complete and len(lut.entries) == 6
    assert all(e.raw_s > 0 for e in lut.entries.values())
    dense = lut.entries[LayerChoice(BIG).key()]
    low = lut.entries[LayerChoice(BIG, "low_rank", 4).key()]
    assert dense.macs > 50 * low.macs
    assert dense.seconds > 3 * low.seconds  # a 64x FLOP gap survives any runtime overhead
    reread = load_lut(out)  # the file on disk validates against the schema
    assert reread.protocol["estimator"] == "min" and reread.protocol["threads"] == 1
    assert reread.runtime_versions["onnxruntime"] and reread.fingerprint["id"]
    assert reread.session["providers"] == ["CPUExecutionProvider"]
    # ONNX Runtime holds each weight at least once: a measured factor below 1 would mean a broken fit
    assert reread.memory["weight_factor"] > 0.8 and reread.memory["fitted_on"] == 6
    pred = predict_latency([LayerChoice(BIG)], reread)
    assert pred.layers[0].source == "lut" and pred.seconds > 0


def test_interrupted_profile_resumes(profiles, tmp_path):
    out = tmp_path / "lut.json"
    profile(
        "host",
        out,
        shapes=[SMALL],
        ranks={SMALL.key(): [8]},
        protocol=FAST,
        calibration_subnets=0,
        memory_subnets=0,
        profiles=profiles,
        show_progress=False,
    )
    data = json.loads(out.read_text())
    kept = next(iter(data["entries"]))
    marker = 123.0
    data["entries"][kept]["raw_s"] = marker  # a measurement the resumed run must keep, not redo
    data["complete"] = False
    out.write_text(json.dumps(data))
    lut = profile(
        "host",
        out,
        shapes=[SMALL, BIG],
        ranks={SMALL.key(): [8], BIG.key(): [4]},
        protocol=FAST,
        calibration_subnets=0,
        memory_subnets=0,
        profiles=profiles,
        show_progress=False,
    )
    assert lut.entries[kept].raw_s == marker
    assert len(lut.entries) == 6 and lut.complete


def test_profiling_a_gpu_device_without_its_runtime_says_so(profiles, tmp_path):
    with pytest.raises(FineDeployError, match="not usable on this machine"):
        profile(
            "a100",
            tmp_path / "x.json",
            shapes=[SMALL],
            runtime="tensorrt",
            profiles=profiles,
            show_progress=False,
        )
    assert not (tmp_path / "x.json").exists()


def test_profiling_another_device_here_is_refused_without_an_explicit_runtime(profiles, tmp_path):
    with pytest.raises(FineDeployError, match="run the profiler on the device itself"):
        profile("a100", tmp_path / "y.json", shapes=[SMALL], profiles=profiles, show_progress=False)
    assert not (tmp_path / "y.json").exists()
