"""Declared dependencies are the ones used: onnxscript is not one (the TorchScript exporter, dynamo=False,
never imports it), so an export must work with it made unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

EXPORT_WITHOUT_ONNXSCRIPT = r"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "onnxscript":
            raise ImportError("onnxscript blocked")
sys.meta_path.insert(0, Block())
from pathlib import Path
from fine_deploy.export import export
from fine_deploy.planner.schema import Plan
from fine_deploy.supernet.core import load_supernet
out = Path(sys.argv[1])
sn = load_supernet()
Plan(supernet={"path": "default", "sha256": sn.content_hash}, subnet={"ranks": {"fc1": 32}, "depth": 3},
     kernels={"transformer_blocks.0.fc1": "low_rank"}, inputs={"batch": 1}).save(out / "plan.json")
m = export(out / "plan.json", "onnx", out / "art")
assert "onnxscript" not in sys.modules
print("parity", m.parity[-1]["passed"] if "passed" in m.parity[-1] else m.parity[-1])
"""


def test_onnxscript_is_not_declared_and_not_needed(tmp_path):
    deps = (REPO / "pyproject.toml").read_text().split("\ndependencies = [", 1)[1].split("]", 1)[0]
    assert '"torch' in deps and "onnxscript" not in deps
    assert '"polygraphy' not in (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
    r = subprocess.run([sys.executable, "-c", EXPORT_WITHOUT_ONNXSCRIPT, str(tmp_path)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "art" / "model.onnx").is_file() and (tmp_path / "art" / "manifest.json").is_file()
