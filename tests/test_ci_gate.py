"""The CI latency gate on the project's own exported model: it passes A/A and fails on a real slowdown.

scripts/ci_regression_check.sh benches the baseline export in separate processes (A/A history), the
current export in another, and reports through the between-run noise model. Here the current export is
the same model (A/A: exit 0) or the same model with real extra layers injected into its ONNX graph
(fine_deploy.bench.slowdown: exit 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fine_deploy.bench.slowdown import slow_copy, slow_model_bytes
from fine_deploy.runtime import open_session

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "ci_regression_check.sh"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model, planned and exported by the CLI like CI does."""
    d = tmp_path_factory.mktemp("gate")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "fine_deploy.cli"]
    subprocess.run([*cli, "plan", "--device", "host", "--mem", "4GB", "-o", str(d / "plan.json")],
                   check=True, cwd=ROOT, env=env, capture_output=True)
    subprocess.run([*cli, "export", "--plan", str(d / "plan.json"), "--format", "onnx", "-o", str(d / "model")],
                   check=True, cwd=ROOT, env=env, capture_output=True)
    return d / "model"


def _gate(out: Path, baseline: Path, current: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "FD_GATE_BASELINE_ARTIFACT": str(baseline),
        "FD_GATE_CURRENT_ARTIFACT": str(current),
        "FD_GATE_HISTORY": "6",
        "FD_GATE_RUNS": "200",
        "FD_GATE_SELFTEST": "0",
    }
    return subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=900)


def test_injected_layers_do_more_work_and_keep_the_outputs(exported: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    src = (exported / "model.onnx").read_bytes()
    slow, twins = slow_model_bytes(src, every=2)
    heavy = [n for n in onnx.load_from_string(src).graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    slow_heavy = [n for n in onnx.load_from_string(slow).graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    assert twins == len(heavy) // 2 and len(slow_heavy) == len(heavy) + twins
    with open_session(exported) as s:
        feeds = s.make_feeds(seed=0)  # the manifest's shapes and label range
    a = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(slow, providers=["CPUExecutionProvider"])
    ya, yb = a.run(None, feeds)[0], b.run(None, feeds)[0]
    assert np.allclose(ya, yb, rtol=1e-5, atol=1e-6)
    target, _ = slow_copy(exported, tmp_path / "slow", every=2)
    assert target == tmp_path / "slow" / "model.onnx" and (tmp_path / "slow" / "manifest.json").is_file()


@pytest.mark.skipif(sys.platform == "win32", reason="the gate is a bash script")
def test_gate_passes_aa_and_fails_on_an_injected_slowdown(exported: Path, tmp_path: Path) -> None:
    aa = _gate(tmp_path / "aa", exported, exported)
    assert aa.returncode == 0, aa.stdout[-3000:] + aa.stderr[-3000:]
    assert "no latency regression" in aa.stdout and "How it decided: separate runs" in aa.stdout
    assert len(list((tmp_path / "aa" / "history").glob("*.json"))) == 6

    slow, _ = slow_copy(exported, tmp_path / "slow_model", every=1)
    ab = _gate(tmp_path / "ab", exported, slow.parent)
    assert ab.returncode == 1, ab.stdout[-3000:] + ab.stderr[-3000:]
    assert "latency regression" in ab.stdout and "regressed" in (tmp_path / "ab" / "report.md").read_text()
    assert (tmp_path / "ab" / "report.png").read_bytes()[:4] == b"\x89PNG"
