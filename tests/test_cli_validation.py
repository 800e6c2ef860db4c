"""Validate before work (issue 17): every bad CLI input found in the walk-through is refused up front with
one line on stderr, exit code 2, and nothing written — before any heavy work runs."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fine_deploy.bench.synthetic import matmul_chain_model
from fine_deploy.cli import app
from fine_deploy.planner.schema import Plan


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def refused(args: list[str], root: Path, *, match: str, max_s: float | None = None) -> str:
    """Run the CLI; assert exit 2, one line naming the problem, and no file added or changed under root."""
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, args)
    took = time.perf_counter() - t0
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert len(lines) == 1 and lines[0].startswith("fine-deploy: error: "), r.output
    assert match in lines[0], lines[0]
    after = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}
    assert after == before, "a refused command wrote files"
    if max_s is not None:
        assert took < max_s, f"refused after {took:.1f} s: the check ran after the work"
    return lines[0]


@pytest.fixture()
def default_plan(tmp_path) -> Path:
    from fine_deploy.supernet.core import load_supernet

    sn = load_supernet()
    path = tmp_path / "in" / "plan.json"
    Plan(supernet={"path": "default", "sha256": sn.content_hash}, subnet={"ranks": {"qkv": 48}, "depth": 4},
         inputs={"batch": 1, "resolution": 16}).save(path)
    return path


@pytest.mark.parametrize("res", ["17", "0", "1000"])
def test_plan_resolution_is_checked_first(tmp_path, res):
    line = refused(["plan", "--device", "host", "--mem", "4GB", "--resolution", res, "-o", str(tmp_path / "p.json")],
                   tmp_path, match=f"--resolution {res} is not allowed", max_s=30)
    assert "use 16 only" in line  # what export accepts for the default DiT


def test_unet_resolution_has_a_range_not_an_open_end():
    from fine_deploy.backbones import adapter_for
    from fine_deploy.errors import FineDeployError

    check_resolution = adapter_for("UNet2DModel").check_resolution
    cfg = {"sample_size": 16, "block_out_channels": [16, 32]}
    assert check_resolution(cfg, 32) == 32 and check_resolution(cfg, None) == 16
    for bad in (0, 17, 1000, -2):
        with pytest.raises(FineDeployError, match="a multiple of 2 from 2 to 64"):
            check_resolution(cfg, bad)


def test_plan_mem_without_unit(tmp_path):
    refused(["plan", "--device", "host", "--mem", "4", "-o", str(tmp_path / "p.json")], tmp_path,
            match="give a unit, e.g. 4GB", max_s=30)


def test_plan_output_is_an_existing_directory(tmp_path):
    (tmp_path / "outdir").mkdir()
    refused(["plan", "--device", "host", "--mem", "4GB", "-o", str(tmp_path / "outdir")], tmp_path,
            match="is an existing directory", max_s=30)
    assert tree(tmp_path) == ["outdir"]


def test_plan_output_unwritable(tmp_path):
    (tmp_path / "afile").write_text("x")
    refused(["plan", "--device", "host", "--mem", "4GB", "-o", str(tmp_path / "afile" / "p.json")], tmp_path,
            match="is a file, not a folder", max_s=30)
    refused(["plan", "--device", "host", "--mem", "4GB", "-o", "/proc/fine-deploy-plan.json"], tmp_path,
            match="cannot write in /proc", max_s=30)


def test_profile_and_sample_outputs_are_checked_first(tmp_path):
    (tmp_path / "outdir").mkdir()
    refused(["profile", "--device", "host", "-o", str(tmp_path / "outdir")], tmp_path,
            match="is an existing directory", max_s=30)
    refused(["sample", "default", "-o", "/proc/fine-deploy-grid.png"], tmp_path, match="cannot write in /proc",
            max_s=30)


def test_report_alpha_out_of_range(tmp_path):
    refused(["report", "--baseline", "b.json", "--current", "c.json", "--alpha", "2"], tmp_path,
            match="--alpha 2.0 must lie strictly between 0 and 1")


def _bench_file(tmp_path) -> Path:
    (tmp_path / "m.onnx").write_bytes(matmul_chain_model(2, 16))
    out = tmp_path / "base.json"
    r = CliRunner().invoke(app, ["bench", str(tmp_path / "m.onnx"), "--runs", "5", "--warmup", "1",
                                 "--no-calibrate", "--json", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_report_output_is_an_existing_directory_or_unwritable(tmp_path):
    bench = _bench_file(tmp_path)
    (tmp_path / "rep").mkdir()
    args = ["report", "--baseline", str(bench), "--current", str(bench)]
    refused([*args, "-o", str(tmp_path / "rep")], tmp_path, match="is an existing directory")
    refused([*args, "-o", "/proc/fine-deploy-report.md"], tmp_path, match="cannot write in /proc")
    assert tree(tmp_path / "rep") == []


def test_bench_json_is_refused_before_measuring(tmp_path):
    (tmp_path / "m.onnx").write_bytes(matmul_chain_model(2, 16))
    (tmp_path / "outdir").mkdir()
    args = ["bench", str(tmp_path / "m.onnx"), "--runs", "100000", "--json"]
    # 100000 runs would take minutes: the refusal comes before the first one
    refused([*args, str(tmp_path / "outdir")], tmp_path, match="--json", max_s=20)
    refused([*args, "/proc/fine-deploy-bench.json"], tmp_path, match="cannot write in /proc", max_s=20)


def test_hand_edited_rank_is_refused_before_export(tmp_path, default_plan):
    import json

    d = json.loads(default_plan.read_text())
    d["subnet"]["ranks"]["qkv"] = 17  # within 1..max_rank, but not one of the options the planner offers
    default_plan.write_text(json.dumps(d))
    line = refused(["export", "--plan", str(default_plan), "--format", "onnx", "-o", str(tmp_path / "art")],
                   tmp_path, match="rank 17 for type 'qkv' is not one of its rank options", max_s=30)
    assert "[16, 24, 32, 48, 64, 72, 80, 96]" in line
    assert not (tmp_path / "art").exists()


def test_plan_without_supernet_hash_is_refused(tmp_path, default_plan):
    import json

    d = json.loads(default_plan.read_text())
    del d["supernet"]["sha256"]
    default_plan.write_text(json.dumps(d))
    refused(["export", "--plan", str(default_plan), "--format", "onnx", "-o", str(tmp_path / "art")],
            tmp_path, match="records no supernet sha256", max_s=30)


def test_export_resolution_and_output(tmp_path, default_plan):
    refused(["export", "--plan", str(default_plan), "--format", "onnx", "--resolution", "0", "-o",
             str(tmp_path / "art")], tmp_path, match="--resolution 0 is not allowed", max_s=30)
    (tmp_path / "afile").write_text("x")
    refused(["export", "--plan", str(default_plan), "--format", "onnx", "-o", str(tmp_path / "afile" / "art")],
            tmp_path, match="is a file, not a folder", max_s=30)


def test_bench_bare_model_file_of_the_default_dit_export(tmp_path, default_plan):
    """`bench exported/model.onnx`: integer inputs drawn in the manifest's ranges (no 'idx=606' traceback);
    the same file moved away from its manifest is one line, not a traceback."""
    r = CliRunner().invoke(app, ["export", "--plan", str(default_plan), "--format", "onnx", "-o",
                                 str(tmp_path / "exported")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["bench", str(tmp_path / "exported" / "model.onnx"), "--runs", "3", "--warmup", "1",
                                 "--no-calibrate", "--json", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b.json").is_file()
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "exported" / "model.onnx", alone / "model.onnx")
    line = refused(["bench", str(alone / "model.onnx"), "--runs", "3", "--no-calibrate"], alone,
                   match="fails on random inputs")
    assert "manifest.json" in line


def test_refusals_write_nothing_even_with_umask_files_beside(tmp_path):
    """The checks never leave a probe file behind in the folder they tested."""
    from fine_deploy.validate import output_file

    assert output_file(tmp_path / "x.json") == tmp_path / "x.json"
    assert os.listdir(tmp_path) == []


def test_bench_keeps_its_measurements_when_the_write_fails_after_measuring(tmp_path, monkeypatch, user_cache):
    """The path passed the early check but the write still fails (disk full, folder removed): the result is
    kept in the user cache and the one line says where."""
    import fine_deploy.bench.run as run
    from fine_deploy.bench.schema import load_bench
    from fine_deploy.errors import FineDeployError

    real = run.atomic_write_json
    target = tmp_path / "bench.json"

    def failing(path, obj):
        if Path(path) == target:
            raise OSError(28, "No space left on device")
        return real(path, obj)

    monkeypatch.setattr(run, "atomic_write_json", failing)
    (tmp_path / "m.onnx").write_bytes(matmul_chain_model(2, 16))
    with pytest.raises(FineDeployError) as e:
        run.bench([tmp_path / "m.onnx"], runs=5, json_path=target, warmup=1, calibrate=False, progress=False,
                  show=False)
    msg = str(e.value)
    assert "No space left on device" in msg and "measurements were kept in" in msg
    kept = Path(msg.split("kept in ")[1].split(":")[0])
    assert kept.parent == user_cache / "bench" and len(load_bench(kept).models[0].samples_s) == 5
    assert not target.exists()
