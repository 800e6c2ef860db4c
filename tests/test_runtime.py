"""The shared runtime layer against real ONNX Runtime sessions (TensorRT/Core ML skip cleanly)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fine_deploy.bench.synthetic import matmul_chain_model, write_matmul_chain
from fine_deploy.errors import FineDeployError
from fine_deploy.runtime import (
    BACKENDS,
    SessionOptions,
    TensorSpec,
    available_backends,
    machine_fingerprint,
    open_session,
    resolve_artifact,
)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_matmul_chain(tmp_path_factory.mktemp("m") / "chain.onnx", depth=3, size=32)


def _weights(path: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]


def test_ort_session_runs_the_graph_it_describes(chain: Path) -> None:
    with open_session(chain, SessionOptions(threads=1)) as s:
        assert s.inputs == [TensorSpec("x", ("batch", 32), "float32")]
        assert s.outputs[0].name == "y"
        assert s.providers == ["CPUExecutionProvider"]
        feeds = s.make_feeds(batch=5, seed=1)
        assert feeds["x"].shape == (5, 32) and feeds["x"].dtype == np.float32
        y = s.run(feeds)["y"]
        ref = feeds["x"]
        for w in _weights(chain):
            ref = ref @ w
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
        times = s.time_runs(feeds, 4)
        assert times.shape == (4,) and np.all(times > 0) and np.all(times < 1.0)


def test_describe_records_threads_and_spinning(chain: Path) -> None:
    d = open_session(chain, SessionOptions(threads=1, spinning=False)).describe()
    assert d["backend"] == "onnxruntime-cpu"
    assert d["options"] == {"threads": 1, "spinning": False, "providers": None}
    assert d["session_config"]["session.intra_op.allow_spinning"] == "0"
    assert d["session_config"]["intra_op_num_threads"] == 1
    assert d["versions"]["onnxruntime"]
    json.dumps(d)  # goes into bench.json as is


def test_shapes_override_and_errors(chain: Path) -> None:
    s = open_session(chain)
    assert s.make_feeds({"x": (7, 32)})["x"].shape == (7, 32)
    with pytest.raises(FineDeployError, match="unknown input"):
        s.make_feeds({"latent": (1, 32)})
    with pytest.raises(FineDeployError, match="does not fit"):
        s.make_feeds({"x": (1, 33)})


def test_dynamic_inner_dim_needs_a_shape(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "h"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "h"])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "relu.onnx"))
    s = open_session(tmp_path / "relu.onnx")
    with pytest.raises(FineDeployError, match=r"--shape x="):
        s.make_feeds()
    assert s.make_feeds({"x": (2, 9)})["x"].shape == (2, 9)


def test_manifest_directory_declares_shapes(tmp_path: Path) -> None:
    art = tmp_path / "art"
    art.mkdir()
    (art / "unet.onnx").write_bytes(matmul_chain_model(2, 16))
    manifest = {
        "schema": 1,
        "kind": "fine-deploy-export",
        "format": "onnx",
        "model": "unet.onnx",
        "backbone": "UNet2DModel", "plan": {}, "supernet": {}, "subnet": {}, "kernels": {}, "options": {},
        "inputs": [{"name": "x", "shape": [3, 16], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [3, 16], "dtype": "float32"}],
    }
    (art / "manifest.json").write_text(json.dumps(manifest))
    s = open_session(art)
    assert s.declared_shapes == {"x": (3, 16)}
    assert s.make_feeds()["x"].shape == (3, 16)
    assert resolve_artifact(art).format == "onnx"
    assert resolve_artifact(art / "unet.onnx").declared_shapes == {"x": (3, 16)}  # the model file uses it too


def test_one_manifest_reader_refuses_a_manifest_without_kind(tmp_path: Path) -> None:
    """runtime (bench, sample) and the exporter read manifest.json with the same reader and agree."""
    from fine_deploy.export.manifest import Manifest

    art = tmp_path / "art"
    art.mkdir()
    (art / "m.onnx").write_bytes(matmul_chain_model(2, 16))
    (art / "manifest.json").write_text(json.dumps({"schema": 1, "format": "onnx", "model": "m.onnx", "inputs": []}))
    errors = []
    for read in (resolve_artifact, Manifest.load):
        with pytest.raises(FineDeployError) as e:
            read(art)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "kind is None" in errors[0] and "\n" not in errors[0]


def test_bad_artifacts_get_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(FineDeployError, match="does not exist"):
        open_session(tmp_path / "nope.onnx")
    (tmp_path / "a.onnx").write_bytes(b"not a model")
    with pytest.raises(FineDeployError, match="cannot load a.onnx"):
        open_session(tmp_path / "a.onnx")
    (tmp_path / "b.onnx").write_bytes(b"x")
    with pytest.raises(FineDeployError, match="2 model files"):
        open_session(tmp_path)
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(FineDeployError, match="not a model"):
        open_session(tmp_path / "w.bin")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"schema": 7, "kind": "fine-deploy-export"}')
    with pytest.raises(FineDeployError, match="schema 7"):
        open_session(bad)
    with pytest.raises(FineDeployError, match="cannot run on coreml"):
        open_session(tmp_path / "a.onnx", backend="coreml")
    with pytest.raises(FineDeployError, match="unknown backend"):
        open_session(tmp_path / "a.onnx", backend="openvino")


def test_available_backends_imports_no_runtime() -> None:
    code = (
        "import sys, json; from fine_deploy.runtime import available_backends, machine_fingerprint;"
        "b = available_backends(); machine_fingerprint();"
        "heavy = ('onnxruntime', 'tensorrt', 'coremltools', 'torch');"
        "print(json.dumps([b, [m for m in heavy if m in sys.modules]]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    backends, imported = json.loads(out)
    assert set(backends) == set(BACKENDS)
    assert backends["onnxruntime-cpu"] is True
    assert imported == []
    assert available_backends() == backends


def test_machine_fingerprint_is_stable() -> None:
    a, b = machine_fingerprint(), machine_fingerprint()
    assert a == b and len(a["id"]) == 16
    assert a["usable_cores"] >= 1 and a["versions"]["onnxruntime"]


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML predicts on macOS")
def test_coreml_refuses_off_macos(tmp_path: Path) -> None:
    pkg = tmp_path / "m.mlpackage"
    pkg.mkdir()
    with pytest.raises(FineDeployError, match="only be run on macOS"):
        open_session(pkg)


@pytest.mark.gpu
@pytest.mark.skipif(not available_backends()["tensorrt"], reason="needs TensorRT and an NVIDIA GPU")
def test_tensorrt_builds_and_matches_ort(chain: Path, tmp_path: Path) -> None:
    ref = open_session(chain)
    feeds = ref.make_feeds(batch=4)
    with open_session(chain, backend="tensorrt", shapes={"x": (4, 32)}) as s:
        assert s.providers == ["TensorRT"]
        np.testing.assert_allclose(s.run(feeds)["y"], ref.run(feeds)["y"], rtol=1e-2, atol=1e-2)
        assert np.all(s.time_runs(feeds, 3) > 0)


@pytest.mark.gpu
@pytest.mark.skipif(not available_backends()["onnxruntime-cuda"], reason="needs onnxruntime-gpu and a GPU")
def test_ort_cuda_provider_really_runs(chain: Path) -> None:
    s = open_session(chain, backend="onnxruntime-cuda")
    assert s.providers[0] == "CUDAExecutionProvider"
    assert s.run(s.make_feeds(batch=2))["y"].shape == (2, 32)
