"""Fuzzed loaders (issue 17): every file loader gets truncated, bit-flipped and type-swapped inputs, at least
1,000 cases each, and each case ends in FineDeployError (or loads, when the mutation left a valid file) —
never in another exception.

Inputs start from real files: a converted supernet, a plan, a LUT, an export manifest, a bench result from
a real run, a shipped device profile and a shipped recipe. Each test counts its cases and how many were
refused; FUZZ_EXAMPLES (default 1000) scales them.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fine_deploy.errors import FineDeployError  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))
REPO = Path(__file__).resolve().parents[1]
COUNTS: dict[str, dict[str, int]] = {}

# values of every JSON type (and some that stress range checks) to swap in for a field
SWAPS = [None, True, False, 0, -1, 1, 2**63, 1.5, -0.0, 1e308, "", "x", "onnx", [], [1, "a"], {}, {"a": None},
         [[[]]], {"ranks": "x"}, "NaN"]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a JSON-like object (the root excluded)."""
    out = []
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return out
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k))
    return out


def _set(obj: Any, path: tuple, value: Any) -> Any:
    obj = copy.deepcopy(obj)
    node = obj
    for k in path[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return obj


_DELETE = object()


def mutations(raw: bytes, dump) -> st.SearchStrategy[tuple[str, bytes]]:
    """(kind, bytes): a truncation, 1-3 bit flips, or a field swapped to another type / deleted."""
    doc = yaml.safe_load(raw) if dump is _yaml_dump else json.loads(raw)
    paths = _paths(doc)
    trunc = st.integers(0, len(raw) - 1).map(lambda n: ("truncated", raw[:n]))

    def flip(bits: list[int]) -> tuple[str, bytes]:
        b = bytearray(raw)
        for bit in bits:
            b[bit // 8] ^= 1 << (bit % 8)
        return "bit-flipped", bytes(b)

    flips = st.lists(st.integers(0, len(raw) * 8 - 1), min_size=1, max_size=3, unique=True).map(flip)
    swap = st.tuples(st.sampled_from(paths), st.sampled_from([*SWAPS, _DELETE])).map(
        lambda pv: ("type-swapped", dump(_set(doc, pv[0], pv[1]))))
    root = st.sampled_from(SWAPS).map(lambda v: ("type-swapped", dump(v)))
    return st.one_of(trunc, flips, swap, swap, root)


def _json_dump(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _yaml_dump(obj: Any) -> bytes:
    return yaml.safe_dump(obj).encode()


def fuzz(name: str, raw: bytes, load, dump=_json_dump) -> dict[str, int]:
    """Run `load(bytes)` on EXAMPLES mutations of `raw`; only FineDeployError may escape it."""
    counts = COUNTS.setdefault(name, {"cases": 0, "refused": 0, "loaded": 0})

    @SETTINGS
    @given(mutations(raw, dump))
    def body(case: tuple[str, bytes]) -> None:
        kind, data = case
        counts["cases"] += 1
        try:
            load(data)
        except FineDeployError as e:
            counts["refused"] += 1
            assert "\n" not in str(e) and str(e).strip()
        except Exception as e:  # the point of the test: name the input that escaped
            raise AssertionError(f"{name}: {kind} input raised {type(e).__name__}: {e}\n{data[:400]!r}") from e
        else:
            counts["loaded"] += 1

    body()
    assert counts["cases"] >= EXAMPLES, counts
    assert counts["refused"] > counts["cases"] // 2, counts  # the mutations do break files
    return counts


@pytest.fixture()
def scratch():
    d = Path(tempfile.mkdtemp(prefix="fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_fuzz_plan(scratch):
    from fine_deploy.planner.schema import Plan
    from fine_deploy.supernet.core import load_supernet

    sn = load_supernet()
    good = Plan(supernet={"path": "default", "sha256": sn.content_hash},
                subnet={"ranks": {"qkv": 48, "fc1": 32}, "widths": {}, "depth": 4},
                kernels={"transformer_blocks.0.qkv": "low_rank", "transformer_blocks.1.fc1": "shared_basis"},
                inputs={"batch": 1, "resolution": 16}, predicted={"latency_s": 1e-3, "memory_bytes": 10**6},
                budget={"mem_bytes": 10**9}, profile={"device": "host"}, binding="memory")
    path = scratch / "plan.json"
    good.save(path)
    Plan.load(path)

    def load(data: bytes) -> None:
        path.write_bytes(data)
        Plan.load(path)

    fuzz("plan", path.read_bytes(), load)


def _lut_file(path: Path) -> None:
    from fine_deploy.cost.lut import Lut, LutEntry
    from fine_deploy.cost.shapes import LayerShape

    entries = {}
    for i, (form, rank) in enumerate([("dense", None), ("low_rank", 8), ("shared_basis", 4)]):
        shape = LayerShape("linear", 64, 32, 16, group=f"g{i}")
        entries[f"{shape.key()}|{form}|{rank}"] = LutEntry(shape, form, rank, 1000 + i, 4096, 2048, 1e-5, 2e-5,
                                                           2e-5, 1.1e-5)
    Lut(device="host", runtime="onnxruntime-cpu", fingerprint={"cpu_model": "x", "id": "abc"},
        runtime_versions={"onnxruntime": "1.0"}, session={"threads": 1}, protocol={"rounds": 4},
        empty_run_s=1e-5, entries=entries, boundaries={"1x16x64": 1e-6}, calibration={"fixed_s": 1e-5},
        roofline={"peak": 1e10}, complete=True).save(path)


def test_fuzz_lut(scratch):
    from fine_deploy.cost.lut import load_lut

    path = scratch / "host-onnxruntime-cpu.json"
    _lut_file(path)
    assert len(load_lut(path).entries) == 3

    def load(data: bytes) -> None:
        path.write_bytes(data)
        load_lut(path)

    fuzz("LUT", path.read_bytes(), load)


def test_fuzz_manifest(scratch):
    from fine_deploy.export.manifest import Manifest
    from fine_deploy.runtime.artifact import resolve_artifact

    art = scratch / "art"
    art.mkdir()
    (art / "model.onnx").write_bytes(b"not opened by the loaders")
    m = Manifest(format="onnx", model="model.onnx", backbone="DiTTransformer2DModel",
                 plan={"format": "fine-deploy-plan"}, supernet={"path": "default", "sha256": "ab" * 32},
                 subnet={"ranks": {"qkv": 48}}, kernels={"transformer_blocks.0.qkv": "low_rank"},
                 inputs=[{"name": "hidden_states", "shape": [1, 1, 16, 16], "dtype": "float32"},
                         {"name": "timestep", "shape": [1], "dtype": "int64", "range": [0, 1000]},
                         {"name": "class_labels", "shape": [1], "dtype": "int64", "range": [0, 10]}],
                 outputs=[{"name": "sample", "shape": ["batch", 1, 16, 16], "dtype": "float32"}],
                 options={"opset": 17, "batch": 1}, files={"model.onnx": {"sha256": "cd" * 32, "bytes": 25}},
                 parity=[{"max_rel_error": 1e-7}], tools={"onnx": "1.17"})
    m.write(art)
    assert resolve_artifact(art).declared_ranges == {"timestep": (0, 1000), "class_labels": (0, 10)}

    def load(data: bytes) -> None:
        (art / "manifest.json").write_bytes(data)
        Manifest.load(art)
        a = resolve_artifact(art)  # the runtime's reader must agree: both load or both refuse
        assert a.model.name == "model.onnx"

    fuzz("manifest", (art / "manifest.json").read_bytes(), load)


def test_fuzz_bench(scratch):
    from fine_deploy.bench.run import bench
    from fine_deploy.bench.schema import load_bench
    from fine_deploy.bench.synthetic import matmul_chain_model

    (scratch / "m.onnx").write_bytes(matmul_chain_model(2, 16))
    path = scratch / "bench.json"
    bench([scratch / "m.onnx"], runs=5, json_path=path, warmup=1, calibrate=True, progress=False, show=False)
    assert load_bench(path).models[0].samples_s

    def load(data: bytes) -> None:
        path.write_bytes(data)
        load_bench(path)

    fuzz("bench", path.read_bytes(), load)


def test_fuzz_profile_yaml(scratch):
    from fine_deploy.cost.profiles import list_profiles, load_profile

    src = REPO / "fine_deploy" / "profiles" / "jetson-orin-nano-8gb.yaml"
    path = scratch / src.name
    raw = src.read_bytes()
    path.write_bytes(raw)
    assert load_profile("jetson-orin-nano-8gb", scratch, probe=False).memory_bytes > 0

    def load(data: bytes) -> None:
        path.write_bytes(data)
        load_profile("jetson-orin-nano-8gb", scratch, probe=False)
        list_profiles(scratch)

    fuzz("profile YAML", raw, load, dump=_yaml_dump)


def test_fuzz_recipe(scratch):
    from fine_deploy.train.recipe import load_recipe, recipes_dir

    raw = (recipes_dir() / "tiny-dit.yaml").read_bytes()
    path = scratch / "r.yaml"
    path.write_bytes(raw)
    assert load_recipe(path).total_steps > 0

    def load(data: bytes) -> None:
        path.write_bytes(data)
        load_recipe(path)

    fuzz("recipe", raw, load, dump=_yaml_dump)


def test_fuzz_supernet_dir(scratch, dit_supernet):
    from fine_deploy.supernet.core import Supernet
    from fine_deploy.supernet.spec import SPEC_FILE, WEIGHTS_FILE

    d = scratch / "sn"
    shutil.copytree(dit_supernet, d)
    spec_raw, weights_raw = (d / SPEC_FILE).read_bytes(), (d / WEIGHTS_FILE).read_bytes()
    Supernet.load(d)

    def load_spec(data: bytes) -> None:
        (d / SPEC_FILE).write_bytes(data)
        Supernet.load(d)

    fuzz("supernet dir (supernet.json)", spec_raw, load_spec)
    (d / SPEC_FILE).write_bytes(spec_raw)

    header = 8 + int.from_bytes(weights_raw[:8], "little")
    head = weights_raw[: header + 256]  # bit flips land in the header and the first tensor bytes
    truncated = st.integers(0, len(weights_raw) - 1).map(lambda n: weights_raw[:n])
    flipped = st.lists(st.integers(0, len(head) * 8 - 1), min_size=1, max_size=3, unique=True).map(
        lambda bits: _flip(head, bits) + weights_raw[len(head):])
    counts = COUNTS.setdefault("supernet dir (weights.safetensors)", {"cases": 0, "refused": 0, "loaded": 0})

    @SETTINGS
    @given(st.one_of(truncated, flipped))
    def weights(data: bytes) -> None:
        counts["cases"] += 1
        (d / WEIGHTS_FILE).write_bytes(data)
        try:
            Supernet.load(d)
        except FineDeployError as e:
            counts["refused"] += 1
            assert "\n" not in str(e)
        except Exception as e:
            raise AssertionError(f"weights: {type(e).__name__}: {e}") from e
        else:
            counts["loaded"] += 1

    weights()
    assert counts["cases"] >= EXAMPLES and counts["loaded"] == 0, counts  # the content hash catches every change


def _flip(raw: bytes, bits: list[int]) -> bytes:
    b = bytearray(raw)
    for bit in bits:
        b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def test_zz_report_counts(capsys):
    """Prints the case counts of the fuzz tests above (run with -s to see them)."""
    with capsys.disabled():
        for name, c in sorted(COUNTS.items()):
            print(f"\nfuzz {name}: {c['cases']} cases, {c['refused']} refused, {c['loaded']} loaded")
    assert all(c["cases"] >= EXAMPLES for c in COUNTS.values())
