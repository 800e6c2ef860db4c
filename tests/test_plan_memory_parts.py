"""A plan's memory parts are each >= 0, sum to its predicted memory and mean what their names say.

Regression for issue 15: a width-cut UNet plan showed `"dense": -68992` because the width knobs' dense
bytes (deltas from the full widths) were reported as the dense part while the full dense bytes sat in
the constant part, and a dense tensor whose two axes two width knobs cut was priced as losing both
single cuts (and a shortcut tensor that only a slice has was not priced at all). Checked on real
converted supernets over many budgets: two UNet2DModel layouts (one and two width knobs; UNet2DModel is
the backbone with width knobs) and a DiT (depth cut), against the dense parameters of the built subnet.
"""

from __future__ import annotations

import json

import pytest
import torch

from fine_deploy.planner.milp import Limits, solve
from fine_deploy.planner.space import best_forms, evaluate

DEVICE = "jetson-orin-nano-4gb"
# three stages, the last two equally wide: cutting them to different widths adds a 1x1 shortcut tensor
UNET3_CFG = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32), layers_per_block=1,
    norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
)
BUDGETS = 6


@pytest.fixture(scope="module")
def unet3_supernet(tmp_path_factory):
    from diffusers import UNet2DModel

    from fine_deploy.supernet.convert import convert

    d = tmp_path_factory.mktemp("unet3")
    torch.manual_seed(0)
    UNet2DModel(**UNET3_CFG).eval().save_pretrained(d)
    out = d / "supernet"
    convert(d, out)
    return out


def _space(path):
    from fine_deploy.cost.profiles import load_profile
    from fine_deploy.planner.build import build_space
    from fine_deploy.planner.costs import CostModel
    from fine_deploy.planner.sensitivity import sensitivity_table
    from fine_deploy.supernet.core import load_supernet

    sn = load_supernet(path)
    return sn, build_space(sn, CostModel.build(load_profile(DEVICE)), sensitivity_table(sn, progress=False))


def _dense_bytes_of_subnet(sn, widths: dict[str, int], depth: int | None) -> int:
    """Bytes of the built subnet's parameters that are no factorised matrix (what "dense" must mean)."""
    from fine_deploy.supernet.core import SubnetConfig

    factorised = {f"{p['module']}.weight" for t in sn.types for m in t.matrices for p in m["parts"]}
    model = sn.subnet(SubnetConfig({t.name: t.max_rank for t in sn.types}, widths, depth))  # ranks move no dense
    return sum(p.numel() for n, p in model.named_parameters() if n not in factorised) * 4


def _check_plans(sn, space) -> list[dict[str, int]]:
    full_values = space.full_assignment()
    full = evaluate(space, full_values, best_forms(space, full_values))
    small = solve(space, "memory").evaluation
    cut, truth = [], {}
    for i in range(BUDGETS):
        mem = small.memory_bytes + (full.memory_bytes - small.memory_bytes) * i / (BUDGETS - 1)
        sol = solve(space, "loss", Limits(memory_bytes=mem * (1 + 1e-9)))
        assert sol.ok, (mem, sol.status)
        ev = sol.evaluation
        assert min(ev.parts.values()) >= 0, ev.parts
        assert sum(ev.parts.values()) == pytest.approx(ev.memory_bytes, rel=1e-12)
        widths = {k.target: sol.values[k.name] for k in space.knobs if k.kind == "width"}
        key = (tuple(sorted(widths.items())), sol.values.get("depth"))
        if key not in truth:
            truth[key] = _dense_bytes_of_subnet(sn, widths, sol.values.get("depth"))
        assert ev.parts["dense"] == truth[key], (sol.values, ev.parts)
        assert ev.parts["runtime_overhead"] == space.const_bytes
        if any(sol.values[k.name] != k.full for k in space.knobs if k.kind != "rank"):
            cut.append(sol.values)
    return cut


@pytest.mark.parametrize("which", ["unet_supernet", "unet3_supernet", "dit_supernet"])
def test_memory_parts_over_budgets(which, request):
    sn, space = _space(request.getfixturevalue(which))
    cut = _check_plans(sn, space)
    assert cut, "no budget cut a width or the depth: the test would not exercise the knobs' dense bytes"
    if which == "unet3_supernet":
        assert space.pair_bytes, "two cut stage widths must interact (the shortcut tensor a clash adds)"
        assert any(len({v for k, v in c.items() if k.startswith("width.")}) > 1 for c in cut)


def test_memory_parts_in_plan_json(unet_supernet, tmp_path):
    from fine_deploy.planner.plan import plan

    sn, space = _space(unet_supernet)
    small = solve(space, "memory").evaluation.memory_bytes
    values = space.full_assignment()
    full = evaluate(space, values, best_forms(space, values)).memory_bytes
    out = tmp_path / "plan.json"
    plan(DEVICE, f"{int(small + 0.05 * (full - small))}B", supernet=unet_supernet, output=out, show=False)
    pr = json.loads(out.read_text())["predicted"]
    width = space.knob("width.stage1")
    assert json.loads(out.read_text())["subnet"]["widths"]["stage1"] < width.full
    assert min(pr["memory_parts"].values()) >= 0, pr["memory_parts"]
    assert sum(pr["memory_parts"].values()) == pytest.approx(pr["memory_bytes"], abs=1.0)
