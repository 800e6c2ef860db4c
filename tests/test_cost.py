"""Shapes, kernel-form arithmetic, graphs, roofline, LUT schema and the predictor."""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest

from fine_deploy.cost.graphs import LayerChoice, build_chain
from fine_deploy.cost.lut import Lut, LutEntry, check_compatible, load_lut
from fine_deploy.cost.predictor import layer_cost
from fine_deploy.cost.profiles import load_profile
from fine_deploy.cost.roofline import Roofline, fit_roofline, layer_traffic, roofline_seconds
from fine_deploy.cost.shapes import LayerShape, default_shapes, distinct, form_macs, form_weight_elems
from fine_deploy.errors import FineDeployError

LIN = LayerShape("linear", 256, 64, 16, group="fc1")
CONV = LayerShape("conv", 32, 32 * 9, 256, k=3, group="c")


def test_form_arithmetic_follows_the_design_table():
    assert form_macs(LIN, "dense") == 16 * 256 * 64
    assert form_macs(LIN, "low_rank", 8) == 16 * 8 * (256 + 64)
    assert form_macs(LIN, "shared_basis", 8) == 16 * 8 * (256 + 64) + 16 * 8
    assert form_weight_elems(LIN, "shared_basis", 8) == (8, 8 * (256 + 64))
    with pytest.raises(FineDeployError, match="rank 65 is out of range"):
        form_macs(LIN, "low_rank", 65)
    with pytest.raises(FineDeployError, match="kernel form"):
        form_macs(LIN, "tucker", 4)


def test_default_shapes_cover_dit_and_unet_with_width_options():
    shapes = distinct(default_shapes())
    kinds = {s.kind for s in shapes}
    assert kinds == {"linear", "conv"}
    assert {s.m1 for s in default_shapes() if s.group == "fc1"} == {128, 192, 256}


@pytest.mark.parametrize("shape", [LIN, CONV, LayerShape("conv", 64, 32 * 9, 64, k=3, stride=2)])
def test_factorised_graphs_compute_the_folded_dense_layer(shape):
    """low-rank and shared-basis graphs are real computations: same output as folding their weights."""
    from onnx import numpy_helper

    for form in ("low_rank", "shared_basis"):
        model = build_chain([LayerChoice(shape, form, 4)])
        w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal(sess.get_inputs()[0].shape).astype(np.float32)
        y = sess.run(None, {"x": x})[0]
        v = next(a for k, a in w.items() if k.endswith(".V"))
        u = next(a for k, a in w.items() if k.endswith(".U"))
        sig = next((a for k, a in w.items() if k.startswith("sigma")), None)
        if shape.kind == "linear":
            dense = v @ np.diag(sig.ravel() if sig is not None else np.ones(4)) @ u
            np.testing.assert_allclose(y, x @ dense, rtol=1e-4, atol=1e-4)
        else:
            s = sig.ravel() if sig is not None else np.ones(4)
            folded = np.einsum("or,r,rikl->oikl", u[:, :, 0, 0], s, v).astype(np.float32)
            dense_model = build_chain([LayerChoice(shape)])
            dense_model.graph.initializer[0].CopyFrom(
                numpy_helper.from_array(folded, dense_model.graph.initializer[0].name)
            )
            ref = ort.InferenceSession(dense_model.SerializeToString(), providers=["CPUExecutionProvider"])
            np.testing.assert_allclose(y, ref.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_chain_refuses_layers_whose_activations_do_not_fit():
    with pytest.raises(FineDeployError, match="cannot follow"):
        build_chain([LayerChoice(LIN), LayerChoice(LIN)])


def test_roofline_is_monotone_in_flops_and_bytes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        f, b = rng.uniform(1, 1e12, 2)
        df, db = rng.uniform(0, 1e11, 2)
        base = roofline_seconds(f, b, 1e12, 1e11, 1e-6)
        assert roofline_seconds(f + df, b, 1e12, 1e11, 1e-6) >= base
        assert roofline_seconds(f, b + db, 1e12, 1e11, 1e-6) >= base
    # compute-bound and memory-bound regimes
    assert roofline_seconds(2e12, 1, 1e12, 1e11) == pytest.approx(2.0)
    assert roofline_seconds(1, 3e11, 1e12, 1e11) == pytest.approx(3.0)


def test_roofline_fit_recovers_a_known_machine():
    truth = Roofline(5e10, 2e10, 2e-6)
    entries = []
    for s in distinct(default_shapes()):
        for form, r in (("dense", None), ("low_rank", 8), ("shared_basis", 16)):
            flops, nbytes, kernels = layer_traffic(s, form, r)
            t = truth.seconds(flops, nbytes, kernels)
            entries.append(LutEntry(s, form, r, form_macs(s, form, r), 4, 4, t, t + 1e-5, t))
    fit = fit_roofline(entries)
    assert fit.peak_flops == pytest.approx(5e10, rel=0.05)
    assert fit.per_kernel_s == pytest.approx(2e-6, rel=0.1)
    assert fit.median_abs_rel_error < 0.01


def test_roofline_fit_stays_finite_on_noisy_few_entries():
    """Regression (CI): six noisy entries of two shapes made the unbounded fit overflow ("diverged")."""
    rng = np.random.default_rng(0)
    shapes = ((LayerShape("linear", 512, 512, 64, group="big"), 4), (LayerShape("linear", 64, 64, 16, group="s"), 8))
    for _ in range(40):
        entries = []
        for s, r in shapes:
            for form in ("dense", "low_rank", "shared_basis"):
                rank = None if form == "dense" else r
                flops, nbytes, kernels = layer_traffic(s, form, rank)
                machine = Roofline(1e10 * rng.uniform(0.5, 2), 1e10 * rng.uniform(0.5, 2), 2e-6 * rng.uniform(0, 2))
                t = machine.seconds(flops, nbytes, kernels) * rng.uniform(0.5, 2)
                entries.append(LutEntry(s, form, rank, form_macs(s, form, rank), 4, 4, t, t, t))
        fit = fit_roofline(entries)
        assert all(math.isfinite(v) and v > 0 for v in (fit.peak_flops, fit.bandwidth, fit.per_kernel_s))


def _tiny_lut(**over) -> Lut:
    e = LutEntry(LIN, "dense", None, form_macs(LIN, "dense"), 65536, 4096, 2e-5, 3e-5, 3e-5)
    lut = Lut(
        "host",
        "onnxruntime-cpu",
        {"id": "x"},
        {"onnxruntime": ort.__version__},
        {},
        {},
        1e-5,
        entries={LayerChoice(LIN).key(): e},
        calibration={"fixed_s": 1e-6},
        roofline=Roofline(1e10, 1e10, 1e-6, "fitted").to_dict(),
    )
    for k, v in over.items():
        setattr(lut, k, v)
    return lut


def test_lut_round_trips_and_validates(tmp_path):
    path = _tiny_lut().save(tmp_path / "l.json")
    lut = load_lut(path)
    assert lut.entries[LayerChoice(LIN).key()].seconds == 2e-5
    data = json.loads(path.read_text())
    # a LUT written while profile still fitted memory on layer chains loads; a mistyped one is refused
    path.write_text(json.dumps({**data, "memory": {"coefficients": {"session": 1.0}}}))
    assert load_lut(path).entries.keys() == lut.entries.keys()
    path.write_text(json.dumps({**data, "memory": [1]}))
    with pytest.raises(FineDeployError, match="memory"):
        load_lut(path)
    data["entries"][LayerChoice(LIN).key()]["raw_s"] = -1
    path.write_text(json.dumps(data))
    with pytest.raises(FineDeployError, match="non-positive"):
        load_lut(path)
    path.write_text("{")
    with pytest.raises(FineDeployError, match="not valid JSON"):
        load_lut(path)
    with pytest.raises(FineDeployError, match="does not exist"):
        load_lut(tmp_path / "missing.json")


def test_lut_from_another_runtime_version_is_flagged():
    lut = _tiny_lut(runtime_versions={"onnxruntime": "1.0.0"})
    with pytest.raises(FineDeployError, match="onnxruntime 1.0.0 measured"):
        check_compatible(lut, {"onnxruntime": ort.__version__})
    assert check_compatible(lut, {"onnxruntime": ort.__version__}, allow=True)
    assert check_compatible(_tiny_lut(), {"onnxruntime": ort.__version__}) == []


def test_predictor_says_which_source_each_layer_used():
    lut = _tiny_lut()
    chain = [LayerChoice(LIN), LayerChoice(LayerShape("linear", 64, 256, 16), "low_rank", 8)]
    pred = [layer_cost(c, lut, None) for c in chain]
    assert [c.source for c in pred] == ["lut", "roofline-fitted"]
    assert pred[0].seconds == 2e-5
    spec = [layer_cost(c, None, load_profile("h100-sxm", probe=False)) for c in chain]
    assert {c.source for c in spec} == {"roofline-spec"}
    assert sum(c.seconds for c in spec) < sum(c.seconds for c in pred)  # an H100's spec roofline beats a CPU


def test_a_stale_lut_of_this_machine_is_refused_on_load(tmp_path):
    from fine_deploy.cost.lut import load_lut_checked
    from fine_deploy.runtime import machine_fingerprint

    here = _tiny_lut(fingerprint=machine_fingerprint(), runtime_versions={"onnxruntime": "0.1"})
    path = here.save(tmp_path / "stale.json")
    with pytest.raises(FineDeployError, match="another runtime"):
        load_lut_checked(path)
    lut, warnings = load_lut_checked(path, allow_other_versions=True)
    assert warnings == [f"onnxruntime 0.1 measured, {ort.__version__} installed"]
    elsewhere = _tiny_lut(
        fingerprint={"cpu_model": "ARMv8 Processor rev 1 (v8l)"}, runtime_versions={"onnxruntime": "0.1"}
    )
    assert load_lut_checked(elsewhere.save(tmp_path / "jetson.json"))[1] == []
