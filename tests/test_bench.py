"""`bench` on tiny real ONNX models: schema-valid bench.json with positive timings, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fine_deploy.bench.run import bench, parse_shapes
from fine_deploy.bench.schema import SCHEMA, load_bench
from fine_deploy.bench.synthetic import write_matmul_chain
from fine_deploy.cli import app
from fine_deploy.errors import FineDeployError


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("models")
    return write_matmul_chain(d / "a.onnx", 2, 32), write_matmul_chain(d / "b.onnx", 3, 32)


def test_bench_writes_schema_valid_json(models: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = bench([models[0]], runs=7, json_path=out, steps=20, batch=2, threads=1, progress=False, show=False)
    data = json.loads(out.read_text())
    assert data["schema"] == SCHEMA and data["kind"] == "fine-deploy/bench"
    loaded = load_bench(out)  # validates the schema
    assert loaded.to_dict() == r.to_dict()
    m = loaded.models[0]
    assert m.name == "a" and m.backend == "onnxruntime-cpu" and m.providers == ["CPUExecutionProvider"]
    assert len(m.samples_s) == 7 and all(s > 0 for s in m.samples_s)
    assert m.cpu_samples_s is not None and len(m.cpu_samples_s) == 7 and all(c >= 0 for c in m.cpu_samples_s)
    st = m.stats
    assert 0 < st["min"] <= st["median"] <= st["p90"] <= st["p99"] <= st["max"] < 1.0
    assert st["mean"] > 0 and st["std"] >= 0 and st["n"] == 7
    assert m.input_shapes == {"x": [2, 32]}
    assert m.per_image_s == pytest.approx(st["median"] * 20 / 2)
    assert m.throughput_per_s == pytest.approx(2 / st["median"])
    assert m.sha256 and len(m.sha256) == 64
    assert m.session["session_config"]["session.intra_op.allow_spinning"] == "0"
    s = loaded.settings
    assert (s.run_order, s.estimator, s.spinning, s.threads, s.runs) == ("interleaved", "median", False, 1, 7)
    assert loaded.calibration is not None and loaded.calibration.median_s > 0
    assert len(loaded.calibration.samples_s) == 7 and loaded.calibration.flops > 0
    assert loaded.calibration.cpu_samples_s is not None and len(loaded.calibration.cpu_samples_s) == 7
    # spin-up by default, memory from a fresh process, and what makes separate runs comparable here
    assert s.spinup_s == 1.0 and s.memory_isolation and s.memory_isolation.startswith("fresh process")
    assert s.cross_run_metric["metric"] == "cpu" and "instructions" in s.cross_run_metric
    assert m.memory["rss_increase_bytes"] is not None and m.memory["rss_increase_bytes"] > 0
    # the default backend ("auto") too must leave ONNX Runtime's one-time set-up out of a model's ΔRSS: it
    # once skipped the throwaway session and an 8 KiB model read more than the runtime's own memory
    from fine_deploy.runtime.rss import runtime_rss_bytes

    assert m.memory["rss_increase_bytes"] < runtime_rss_bytes() / 2
    assert loaded.machine["usable_cores"] >= 1 and loaded.machine["versions"]["onnxruntime"]


def test_several_models_interleaved_and_sequential(models: tuple[Path, Path]) -> None:
    a, b = models
    r = bench([a, a, b], runs=6, warmup=1, progress=False, show=False, calibrate=False)
    assert [m.name for m in r.models] == ["a", "a#2", "b"]
    assert all(len(m.samples_s) == 6 for m in r.models) and r.calibration is None
    seq = bench([a, b], runs=5, warmup=1, order="sequential", progress=False, show=False, calibrate=False)
    assert seq.settings.run_order == "sequential" and [len(m.samples_s) for m in seq.models] == [5, 5]


def test_time_budget_runs_at_least_five_rounds(models: tuple[Path, Path]) -> None:
    r = bench([models[0]], time_budget_s=0.05, warmup=1, progress=False, show=False, calibrate=False)
    assert len(r.models[0].samples_s) >= 5 and r.settings.time_budget_s == 0.05


def test_shape_override(models: tuple[Path, Path]) -> None:
    assert parse_shapes(["x=3x32", "t=1"]) == {"x": (3, 32), "t": (1,)}
    r = bench([models[0]], runs=5, shapes=["x=3x32"], progress=False, show=False, calibrate=False)
    assert r.models[0].input_shapes == {"x": [3, 32]}
    with pytest.raises(FineDeployError, match="NAME=DxDx"):
        parse_shapes(["x:3x32"])
    with pytest.raises(FineDeployError, match="no benchmarked model has"):
        bench([models[0]], runs=5, shapes=["latent=1x4"], progress=False, show=False, calibrate=False)


def test_bad_input_fails_cleanly_and_writes_nothing(models: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    with pytest.raises(FineDeployError, match="does not exist"):
        bench([models[0], tmp_path / "missing"], runs=5, json_path=out, progress=False, show=False)
    with pytest.raises(FineDeployError, match="run order"):
        bench([models[0]], order="random", json_path=out, progress=False, show=False)
    with pytest.raises(FineDeployError, match="positive"):
        bench([models[0]], runs=0, json_path=out, progress=False, show=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_bench(models: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "bench",
            str(models[0]),
            str(models[1]),
            "--runs",
            "5",
            "--json",
            str(out),
            "--threads",
            "1",
            "--steps",
            "4",
            "--shape",
            "x=2x32",
        ],
    )
    assert res.exit_code == 0, res.output
    r = load_bench(out)
    assert [m.name for m in r.models] == ["a", "b"] and r.settings.steps == 4
    assert "median ms" in res.output and "a" in res.output
    assert np.median(r.models[1].samples_s) > 0
    bad = runner.invoke(app, ["bench", str(tmp_path / "nope.onnx")])
    assert bad.exit_code == 2
    assert "fine-deploy: error:" in bad.output and "does not exist" in bad.output


def test_labels_keep_an_export_folder_name_with_dots(tmp_path: Path) -> None:
    from fine_deploy.bench.run import _labels

    for name in ("e1.2ms", "e0.8ms"):
        (tmp_path / name).mkdir()
    f = write_matmul_chain(tmp_path / "m.v2.onnx", 1, 8)
    assert _labels([tmp_path / "e1.2ms", tmp_path / "e0.8ms", f, f]) == ["e1.2ms", "e0.8ms", "m.v2", "m.v2#2"]
