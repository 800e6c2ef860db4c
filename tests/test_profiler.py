"""The profiler really measures: values > 0, FLOP-ordered for a large gap, a valid LUT, resumable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fine_deploy.cost.graphs import LayerChoice
from fine_deploy.cost.lut import load_lut
from fine_deploy.cost.predictor import layer_cost
from fine_deploy.cost.profiler import profile
from fine_deploy.cost.shapes import LayerShape
from fine_deploy.errors import FineDeployError
from fine_deploy.runtime.timing import Protocol

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
    assert "memory" not in json.loads(out.read_text())  # memory is fitted per supernet (export.calibrate)
    pred = layer_cost(LayerChoice(BIG), reread, None)
    assert pred.source == "lut" and pred.seconds > 0


def test_interrupted_profile_resumes(profiles, tmp_path):
    out = tmp_path / "lut.json"
    profile(
        "host",
        out,
        shapes=[SMALL],
        ranks={SMALL.key(): [8]},
        protocol=FAST,
        calibration_subnets=0,
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


def test_fit_costs_recovers_in_model_costs_from_whole_chains():
    """One-layer estimates 30% off in both directions; chains timed at the true additive costs
    must pull every chained entry at least 3x closer to its truth (the ridge keeps some pull
    towards the one-layer value) and recover the fixed overhead within 0.5 us."""
    import random

    from fine_deploy.cost.lut import Lut, LutEntry
    from fine_deploy.cost.profiler import fit_costs, layer_choices
    from fine_deploy.cost.shapes import default_shapes, distinct, form_macs
    from fine_deploy.cost.subnets import random_chain

    shapes = [s for s in distinct(default_shapes()) if s.kind == "linear" and s.tokens == 16][:4]
    rng = random.Random(0)
    truth, entries = {}, {}
    for s in shapes:
        for c in layer_choices(s, [8, 32]):
            t = 1e-6 * rng.uniform(2, 20)
            single = t * rng.choice((0.7, 1.3))
            truth[c.key()] = t
            entries[c.key()] = LutEntry(s, c.form, c.rank, form_macs(s, c.form, c.rank), 4, 4, single, single, single,
                                        single_s=single)
    lut = Lut("host", "onnxruntime-cpu", {}, {}, {}, {}, 5e-6, entries=entries)
    ranks = {s.key(): [8, 32] for s in shapes}
    chains = [random_chain(shapes, rng, ranks=ranks) for _ in range(300)]
    seconds = [5e-6 + 2e-6 + sum(truth[c.key()] for c in ch) for ch in chains]
    result = fit_costs(lut, chains, seconds)
    seen = {c.key() for ch in chains for c in ch}
    assert len(seen) >= 10
    for k in seen:
        e = lut.entries[k]
        assert abs(e.seconds - truth[k]) < abs(e.single_s - truth[k]) / 3, k
    assert result["fixed_s"] == pytest.approx(2e-6, abs=5e-7)
    assert result["median_abs_rel_error"] < 0.01 < result["one_layer_median_abs_rel_error"]


def test_fit_costs_refuses_a_chain_layer_without_an_entry():
    from fine_deploy.cost.lut import Lut
    from fine_deploy.cost.profiler import fit_costs

    lut = Lut("host", "onnxruntime-cpu", {}, {}, {}, {}, 5e-6)
    with pytest.raises(FineDeployError, match="has no LUT entry"):
        fit_costs(lut, [[LayerChoice(SMALL)]], [1e-5])


def test_the_default_supernet_is_profiled_at_the_ranks_the_planner_prices():
    from fine_deploy.cost.commands import supernet_choices
    from fine_deploy.supernet.core import load_supernet

    shapes, ranks = supernet_choices(None)
    sn = load_supernet(None)
    assert {s.group for s in shapes} <= {t.name for t in sn.types} and len(shapes) >= len(sn.types)
    for s in shapes:
        options = next(t.rank_options for t in sn.types if t.name == s.group)
        # exactly the type's options a factored form can take: the default's ladder tops at 96 > 64
        assert ranks[s.key()] == sorted(r for r in options if r <= s.max_rank()), s.key()
    assert max(max(r) for r in ranks.values()) <= 64


def test_plan_refuses_an_interrupted_profile(profiles, tmp_path):
    """An interrupted `profile` leaves its LUT marked incomplete: `plan` says to re-run profile (exit 2)."""
    from test_cli_validation import refused

    out = tmp_path / "in" / "lut.json"
    profile("host", out, shapes=[SMALL], ranks={SMALL.key(): [8]}, protocol=FAST, calibration_subnets=0,
            profiles=profiles, show_progress=False)
    data = json.loads(out.read_text())
    data["complete"] = False
    out.write_text(json.dumps(data))
    line = refused(["plan", "--device", "host", "--mem", "1GB", "--lut", str(out), "-o", str(tmp_path / "p.json")],
                   tmp_path, match="incomplete")
    assert "fine-deploy profile --device host" in line
