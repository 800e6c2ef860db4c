"""`fine-deploy plan` end to end on real converted supernets (tiny DiT and UNet from conftest).

Priced on a fixed public profile (jetson-orin-nano-4gb, spec roofline: no probe, no LUT) so the
numbers do not depend on this machine; the quality side is the data-free proxy, cached in a tmp dir.
"""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from fine_deploy.cli import app
from fine_deploy.errors import FineDeployError
from fine_deploy.planner.milp import Limits, solve
from fine_deploy.planner.plan import plan as plan_any_precision
from fine_deploy.planner.schema import Plan, supernet_for_plan
from fine_deploy.planner.space import evaluate, layer_exists
from fine_deploy.planner.units import parse_bytes, parse_seconds

DEVICE = "jetson-orin-nano-4gb"


def plan(*args, **kwargs):
    """These tests check the MILP's mechanics against the fp32 space built below, so they pin fp32; planning
    precision is tested in test_plan_precision.py (the CLI tests here run the default, auto)."""
    return plan_any_precision(*args, precision="fp32", **kwargs)


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FINE_DEPLOY_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def dit_space(dit_supernet):
    from fine_deploy.cost.profiles import load_profile
    from fine_deploy.planner.build import build_space
    from fine_deploy.planner.costs import CostModel
    from fine_deploy.planner.sensitivity import sensitivity_table
    from fine_deploy.supernet.core import load_supernet

    sn = load_supernet(dit_supernet)
    cost = CostModel.build(load_profile(DEVICE))
    return sn, build_space(sn, cost, sensitivity_table(sn, progress=False), batch=1)


def _full(space):
    from fine_deploy.planner.space import best_forms

    values = space.full_assignment()
    return evaluate(space, values, best_forms(space, values))


def test_plan_json_schema_and_budgets(dit_supernet, dit_space, tmp_path):
    _, space = dit_space
    full = _full(space)
    fast = solve(space, "latency").evaluation.latency_s
    budget = fast + 0.5 * (full.latency_s - fast)
    out = tmp_path / "plan.json"
    p = plan(DEVICE, "3GiB", latency=f"{budget * 1e6:.3f}us", supernet=dit_supernet, output=out, show=False)
    loaded = Plan.load(out)
    assert loaded.to_json() == p.to_json()
    d = json.loads(out.read_text())
    assert d["schema"] == 1 and d["format"] == "fine-deploy-plan"
    assert d["predicted"]["latency_s"] <= parse_seconds(f"{budget * 1e6:.3f}us") * (1 + 1e-6)
    assert d["predicted"]["memory_bytes"] <= parse_bytes("3GiB")
    assert d["binding"] == "latency"  # memory is ample, latency halfway between fastest and full
    assert 0 < d["predicted"]["quality_loss"]
    assert d["predicted"]["quality"]["proxy"] is True and "proxy" in d["predicted"]["quality"]["note"]
    assert d["solver"]["status"] == "optimal" and d["solver"]["mip_gap"] <= 1e-9
    assert len(d["supernet"]["sha256"]) == 64 and len(d["profile"]["sha256"]) == 64
    # every kernel form belongs to a layer the chosen depth keeps, and every kept layer has one
    values = {"depth": d["subnet"]["depth"]}
    kept = {la.name for la in space.layers if layer_exists(la, values)}
    assert set(d["kernels"]) == kept
    assert {r["knob"] for r in d["explain"]} == {k.name for k in space.knobs}
    below = [r for r in d["explain"] if r["value"] != space.knob(r["knob"]).full]
    assert below and all("would break latency" in r["why"] or "trade-off" in r["why"] for r in below)


def test_same_inputs_give_byte_identical_plan(dit_supernet, dit_space, tmp_path):
    _, space = dit_space
    fast, full = solve(space, "latency").evaluation.latency_s, _full(space).latency_s
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        plan(DEVICE, "3GB", latency=f"{(fast + full) / 2 * 1e6:.2f}us", supernet=dit_supernet, output=out,
             show=False)
    assert a.read_bytes() == b.read_bytes()
    assert json.loads(a.read_text())["binding"] == "latency"


def test_memory_budget_binds_and_is_met(dit_supernet, dit_space, tmp_path):
    _, space = dit_space
    small = solve(space, "memory").evaluation.memory_bytes
    full = _full(space).memory_bytes
    mem = int(small + 0.3 * (full - small))
    p = plan(DEVICE, f"{mem}B", supernet=dit_supernet, output=tmp_path / "p.json", show=False)
    assert p.predicted["memory_bytes"] <= mem
    assert p.binding == "memory"
    assert p.predicted["quality_loss"] > 0


def test_infeasible_memory_gives_minimal_feasible_value(dit_supernet, dit_space, tmp_path):
    _, space = dit_space
    smallest = solve(space, "memory").evaluation.memory_bytes
    out = tmp_path / "never.json"
    with pytest.raises(FineDeployError) as e:
        plan(DEVICE, f"{int(smallest) - 1000}B", supernet=dit_supernet, output=out, show=False)
    msg = str(e.value)
    assert not out.exists()
    hinted = int(re.search(r"--mem is \S+ \((\d+) bytes\)", msg).group(1))
    assert hinted == pytest.approx(smallest, abs=1)
    typed = re.search(r"--mem is (\S+)", msg).group(1)
    p = plan(DEVICE, typed, supernet=dit_supernet, output=out, show=False)  # the hint works as typed
    assert p.predicted["memory_bytes"] <= parse_bytes(typed)


def test_infeasible_latency_gives_minimal_latency_per_image(dit_supernet, dit_space, tmp_path):
    _, space = dit_space
    fastest = solve(space, "latency").evaluation.latency_s
    steps, batch = 50, 2
    with pytest.raises(FineDeployError) as e:
        # per image: 50 steps of a batch-2 forward; priced at batch 2, so use that space's fastest bound
        plan(DEVICE, "3GB", latency=f"{fastest * steps / batch * 0.5 * 1e6}us", steps=steps, batch=batch,
             supernet=dit_supernet, output=tmp_path / "x.json", show=False)
    m = re.search(r"--latency is (\S+) per image \(([\d.e+-]+) s\)", str(e.value))
    assert m, str(e.value)
    ok = plan(DEVICE, "3GB", latency=m.group(1), steps=steps, batch=batch, supernet=dit_supernet,
              output=tmp_path / "y.json", show=False)
    assert ok.predicted["latency_per_image_s"] <= parse_seconds(m.group(1)) * (1 + 1e-6)
    assert ok.predicted["latency_per_image_s"] == pytest.approx(ok.predicted["latency_s"] * steps / batch)


def test_max_loss_gives_the_fastest_plan_under_it(dit_supernet, dit_space, tmp_path):
    _, space = dit_space
    max_loss = 0.05
    p = plan(DEVICE, "3GB", max_loss=max_loss, supernet=dit_supernet, output=tmp_path / "d.json", show=False)
    assert p.predicted["quality_loss"] <= max_loss * (1 + 1e-6)
    want = solve(space, "latency", Limits(memory_bytes=min(parse_bytes("3GB"), 3435973837), loss=max_loss))
    assert p.predicted["latency_s"] == pytest.approx(want.evaluation.latency_s, rel=1e-6)
    assert p.predicted["latency_s"] < _full(space).latency_s
    assert p.binding == "quality"


def test_mem_is_capped_by_device_usable_memory(dit_supernet, tmp_path):
    p = plan(DEVICE, "64GB", supernet=dit_supernet, output=tmp_path / "c.json", show=False)
    assert p.budget["mem_capped_by_device"] is True
    assert p.budget["mem_bytes"] == p.profile["usable_memory_bytes"] < parse_bytes("64GB")


def test_plan_refused_for_another_supernet(dit_supernet, unet_supernet, tmp_path):
    p = plan(DEVICE, "3GB", supernet=dit_supernet, output=tmp_path / "p.json", show=False)
    assert supernet_for_plan(Plan.load(tmp_path / "p.json")).content_hash == p.supernet["sha256"]
    with pytest.raises(FineDeployError, match="not the one this plan was made from"):
        supernet_for_plan(p, unet_supernet)


def test_lut_of_another_device_refused(dit_supernet, tmp_path):
    from fine_deploy.cost.lut import Lut

    lut = tmp_path / "lut.json"
    Lut("rtx-4090", "tensorrt", {}, {}, {}, {}, 1e-5).save(lut)
    with pytest.raises(FineDeployError, match="measured for rtx-4090"):
        plan(DEVICE, "3GB", supernet=dit_supernet, lut=lut, output=tmp_path / "p.json", show=False)


def test_unet_width_knob_interacts_with_ranks(unet_supernet, tmp_path):
    from fine_deploy.cost.profiles import load_profile
    from fine_deploy.planner.build import build_space
    from fine_deploy.planner.costs import CostModel
    from fine_deploy.planner.sensitivity import sensitivity_table
    from fine_deploy.supernet.core import load_supernet

    sn = load_supernet(unet_supernet)
    space = build_space(sn, CostModel.build(load_profile(DEVICE)), sensitivity_table(sn, progress=False))
    width = space.knob("width.stage1")
    moved = [la for la in space.layers if "width.stage1" in la.knobs]
    assert moved, "no layer depends on the stage width"
    la = moved[0]
    r = la.options[0].rank
    narrow = [o for o in la.options if o.values[0] == r and o.values[1] == width.options[0] and o.form == "dense"]
    wide = [o for o in la.options if o.values[0] == r and o.values[1] == width.full and o.form == "dense"]
    assert narrow[0].weight_bytes < wide[0].weight_bytes  # the same rank acts on a smaller matrix
    full, small = _full(space).memory_bytes, solve(space, "memory").evaluation.memory_bytes
    mem = int(small + 0.3 * (full - small))
    p = plan(DEVICE, f"{mem}B", supernet=unet_supernet, output=tmp_path / "u.json", show=False)
    assert p.predicted["memory_bytes"] <= mem and p.binding == "memory"
    assert set(p.subnet["widths"]) == {"stage1"}
    sn.validate(__import__("fine_deploy.supernet.core", fromlist=["SubnetConfig"]).SubnetConfig.from_json(p.subnet))


def test_cli_plan_json_and_pareto(dit_supernet, tmp_path):
    out, par = tmp_path / "plan.json", tmp_path / "pareto"
    res = CliRunner().invoke(app, ["plan", "--device", DEVICE, "--mem", "3.5GiB", "--supernet", str(dit_supernet),
                                   "-o", str(out), "--json", "--pareto", str(par)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == json.loads(out.read_text())
    doc = json.loads((par / "pareto.json").read_text())
    assert doc["schema"] == 1 and len(doc["latency_front"]) >= 2
    lat = [p["latency_s"] for p in doc["latency_front"]]
    loss = [p["quality_loss"] for p in doc["latency_front"]]
    assert lat == sorted(lat) and all(a > b for a, b in zip(loss, loss[1:], strict=False))
    assert (par / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, fragment", [
    (["--mem", "4XB"], "unknown unit"),
    (["--mem", "1GB", "--latency", "fast"], "latency budget"),
    (["--mem", "1GB", "--device", "jetson-orni"], "did you mean"),
    (["--mem", "1KB"], "smallest feasible --mem"),
])
def test_cli_bad_input_one_line_no_file(dit_supernet, tmp_path, args, fragment):
    out = tmp_path / "plan.json"
    base = ["plan", "--device", DEVICE, "--supernet", str(dit_supernet), "-o", str(out)]
    res = CliRunner().invoke(app, base + args)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fine-deploy: error:") and fragment in lines[0]
    assert not out.exists()


def test_end_to_end_calibration_applies_its_line(dit_supernet, tmp_path):
    from fine_deploy.cost.lut import Lut
    from fine_deploy.supernet.core import load_supernet

    h = load_supernet(dit_supernet).content_hash
    raw, cal = tmp_path / "raw.json", tmp_path / "cal.json"
    Lut(DEVICE, "tensorrt", {}, {}, {}, {}, 2e-5, complete=True).save(raw)
    Lut(DEVICE, "tensorrt", {}, {}, {}, {}, 2e-5, complete=True,
        calibration={"end_to_end": {h[:16]: {"scale": 2.0, "fixed_s": 1e-4}}}).save(cal)
    a = plan(DEVICE, "3GB", supernet=dit_supernet, lut=raw, output=tmp_path / "a.json", show=False)
    b = plan(DEVICE, "3GB", supernet=dit_supernet, lut=cal, output=tmp_path / "b.json", show=False)
    assert a.subnet == b.subnet and a.kernels == b.kernels
    assert b.predicted["latency_s"] == pytest.approx(2.0 * a.predicted["latency_s"] + 1e-4, rel=1e-6)
    assert b.predicted["cost_model"]["end_to_end_calibration"] is True
    assert a.profile["lut_sha256"] != b.profile["lut_sha256"]


@pytest.mark.parametrize("which", ["dit", "unet"])
def test_proxy_over_its_time_budget_measures_less_and_fills_every_value(which, request):
    """At published sizes measuring every knob value takes minutes: the proxy then measures one rank per type
    (others scaled along the type's reconstruction error) and the ends and middle of depth/width ranges."""
    from fine_deploy.planner.sensitivity import _usable, proxy_sensitivity
    from fine_deploy.supernet.core import load_supernet

    sn = load_supernet(request.getfixturevalue(f"{which}_supernet"))
    exact = proxy_sensitivity(sn, progress=False)
    cheap = proxy_sensitivity(sn, progress=False, budget_s=0.0)
    assert exact["measured"]["every_value"] and not cheap["measured"]["every_value"]
    assert cheap["measured"]["jobs"] < exact["measured"]["jobs"] and _usable(cheap, sn)
    assert cheap["inputs"]["batch"] == 1
    assert cheap["inputs"]["resolution"] == (None if which == "dit" else 4)  # a UNet runs at a quarter side
    for t in sn.types:
        got = cheap["ranks"][t.name]
        errs = [got[str(r)] for r in t.rank_options]
        assert errs[-1] == 0.0 and all(a >= b for a, b in zip(errs, errs[1:], strict=False)), (t.name, errs)
        rest = [r for r in t.rank_options if r != t.max_rank]
        mid = rest[len(rest) // 2]
        w = t.reconstruction_error
        for r in rest:  # loss ∝ weight error² through the one measured point
            assert got[str(r)] == pytest.approx(got[str(mid)] * w[str(r)] ** 2 / w[str(mid)] ** 2, rel=1e-9)
    if which == "dit":
        assert set(cheap["depth"]) == {str(d) for d in sn.spec.depth["options"]}


def test_plan_of_a_four_stage_unet_runs_its_proxy_above_1x1(tmp_path):
    """Regression: the quality proxy ran a 4-stage UNet at 8 px, where the deepest map is 1x1 and a width cut to
    one channel per GroupNorm group left one value to normalise (torch refused; plan crashed)."""
    import torch
    from diffusers import UNet2DModel

    from fine_deploy.supernet.convert import convert

    torch.manual_seed(0)
    UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32, 32, 32),
                norm_num_groups=8, down_block_types=("DownBlock2D",) * 4,
                up_block_types=("UpBlock2D",) * 4).eval().save_pretrained(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "sn")
    p = plan("host", "1GB", supernet=tmp_path / "sn", output=tmp_path / "plan.json", show=False)
    assert p.subnet["widths"] and (tmp_path / "plan.json").is_file()
