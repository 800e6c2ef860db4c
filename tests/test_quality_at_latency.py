"""benchmarks/quality_at_latency.py at toy size (issue 18): every method's subnet meets its measured budget (or the
method's largest grid value that does is the one taken), every method gets the same optimizer steps, and the
results file has the issue's shape."""

from __future__ import annotations

import collections
import json
import math

import pytest
import torch

from benchmarks.quality_at_latency import (
    KNOB_METHODS,
    METHODS,
    LowRankLinear,
    choose_knob,
    knob_model,
    main,
    prune_channels,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny-dit trained for 20 steps: a small trained class-conditional DiT supernet."""
    from fine_deploy.train.pretrain import train

    out = tmp_path_factory.mktemp("qal") / "tiny"
    train("tiny-dit", out, steps=20, evaluate=False)
    return out


def test_choose_knob_takes_the_largest_value_within_the_budget():
    grid = [0.25, 0.5, 0.75, 1.0]
    assert choose_knob(grid, [1.0, 2.0, 1.5, 3.0], 1.6) == 0.75  # not monotone: the largest k that fits
    assert choose_knob(grid, [1.0, 2.0, 1.5, 3.0], 3.0) == 1.0
    assert choose_knob(grid, [1.0, 2.0, 1.5, 3.0], 0.9) is None


def test_svd_is_exact_at_full_rank_and_two_linears_when_cheaper():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 256)
    x = torch.randn(3, 64)
    full = LowRankLinear(lin, 1.0)
    assert not full.split and torch.allclose(full(x), lin(x), atol=1e-4)
    cut = LowRankLinear(lin, 0.25)
    assert cut.split and cut.rank == 16 and cut(x).shape == (3, 256)


def test_width_cuts_keep_the_dit_running(tiny):
    from fine_deploy.supernet.core import SubnetConfig, load_supernet

    sn = load_supernet(tiny)
    dense = sn.subnet(SubnetConfig()).float().eval()
    n = sum(p.numel() for p in dense.parameters())
    kw = sn.adapter.example_inputs(sn.spec.config, 2, None, 0, None)
    for method in ("ofa_width", "torch_pruning"):
        names = {name: p for name, p in dense.named_parameters()}
        taylor = {name: p.detach().abs() for name, p in names.items()}
        m, params = knob_model(method, dense, 0.5, [], taylor)
        assert sum(p.numel() for p in m.parameters()) < n and all(p.requires_grad for p in params)
        assert torch.isfinite(m(**kw).sample).all()
    m = torch.nn.Sequential()  # prune_channels needs DiT blocks
    with pytest.raises(AttributeError):
        prune_channels(m, 0.5)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 10 samples: a singular 64-d feature covariance
def test_toy_benchmark_meets_budgets_with_equal_steps(tiny, tmp_path, monkeypatch):
    calls: collections.Counter = collections.Counter()
    step = torch.optim.AdamW.step

    def counted(self, *a, **k):
        calls[id(self)] += 1
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    out = tmp_path / "r.json"
    steps = 3
    rc = main(["--supernet", str(tiny), "--steps", str(steps), "--samples", "10", "--sample-steps", "2",
               "--fractions", "1.5,0.6", "--grid", "0.5,1.0", "--no-profile", "--importance-batches", "1",
               "--work", str(tmp_path / "w"), "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert (tmp_path / "r.png").is_file()

    # the shape
    assert r["schema"] == 1 and r["provenance"]["supernet"]["path"] == str(tiny)
    for k in ("measured_latency_s", "heldout_loss", "frechet_distance", "class_accuracy"):
        assert k in r["full_model"]
    assert {"settings", "wall_s", "load_average", "findings"} <= set(r)
    assert len(r["findings"]) == len(r["budgets"]) == 2
    assert "not Inception FID" in r["settings"]["metric_note"]

    trained = 0
    for row in r["budgets"]:
        assert set(row["methods"]) == set(METHODS) and row["budget_s"] > 0 and "fraction" in row
        for name, m in row["methods"].items():
            for k in ("measured_latency_s", "frechet_distance", "heldout_loss", "class_accuracy", "subnet",
                      "trainable", "optimizer_steps"):
                assert k in m, (name, k)
            if name in KNOB_METHODS:  # the largest grid value whose measured latency is within the budget
                cb = m["chosen_by"]
                k = choose_knob(cb["grid"], cb["grid_measured_s"], row["budget_s"])
                assert (m["subnet"] or {}).get("k") == k
                assert m["feasible"] == (k is not None)
            elif m["feasible"]:  # the plan taken: the slowest of the plans that measured within the budget
                within = [t["measured_s"] for t in m["plan_tries"] if t["measured_s"] <= row["budget_s"]]
                assert m["pick_measured_s"] == max(within) <= row["budget_s"]
                assert 1 <= len(m["plan_tries"]) <= 3
            if m["feasible"]:
                trained += 1
                assert m["optimizer_steps"] == steps and math.isfinite(m["heldout_loss"])
                assert m["measured_latency_s"] > 0 and m["trainable"] > 0 and m["fraction_of_full"] > 0
            else:
                assert m["why"] and m["optimizer_steps"] == 0
    # a budget above the full model's time: every method has a subnet, whatever the timing noise of a busy host
    assert all(m["feasible"] for m in r["budgets"][0]["methods"].values())
    assert trained >= len(METHODS)
    # every optimizer made exactly `steps` steps: counted at AdamW.step itself
    assert calls and set(calls.values()) == {steps}
