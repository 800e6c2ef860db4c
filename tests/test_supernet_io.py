"""SUPERNET directory format: round trip, corruption, CLI errors, stock-diffusers subnets."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import dit_inputs, run
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from fine_deploy.cli import app
from fine_deploy.errors import FineDeployError
from fine_deploy.supernet.core import Supernet
from fine_deploy.supernet.spec import SPEC_FILE, WEIGHTS_FILE

runner = CliRunner()


def test_save_load_round_trip_is_bit_identical(dit_supernet, tmp_path):
    sn = Supernet.load(dit_supernet)
    sn.save(tmp_path / "copy")
    again = Supernet.load(tmp_path / "copy")
    assert sn.tensors.keys() == again.tensors.keys()
    for k, v in sn.tensors.items():
        assert v.dtype == again.tensors[k].dtype and torch.equal(v, again.tensors[k]), k
    assert again.content_hash == sn.content_hash
    assert (tmp_path / "copy" / SPEC_FILE).read_bytes() == (dit_supernet / SPEC_FILE).read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def _corrupt_copy(src, dst, how):
    shutil.copytree(src, dst)
    w, s = dst / WEIGHTS_FILE, dst / SPEC_FILE
    if how == "truncated":
        data = w.read_bytes()
        w.write_bytes(data[: len(data) // 2])
    elif how == "schema":
        d = json.loads(s.read_text())
        d["schema"] = 99
        s.write_text(json.dumps(d))
    elif how == "missing":
        t = load_file(str(w))
        t.pop("basis.fc1.U")
        save_file(t, str(w))
    elif how == "shape":
        t = load_file(str(w))
        t["basis.fc1.U"] = t["basis.fc1.U"][:, :-1].contiguous()
        save_file(t, str(w))
    elif how == "modified":
        t = load_file(str(w))
        t["basis.fc1.U"] = t["basis.fc1.U"] + 1
        save_file(t, str(w))
    elif how == "not-json":
        s.write_text("{ not json")
    return dst


@pytest.mark.parametrize(
    "how, needle, file",
    [
        ("truncated", "truncated or corrupt", WEIGHTS_FILE),
        ("schema", "schema 99 is not supported", SPEC_FILE),
        ("missing", "tensor 'basis.fc1.U' listed in supernet.json is missing", WEIGHTS_FILE),
        ("shape", "tensor 'basis.fc1.U' has shape", WEIGHTS_FILE),
        ("modified", "content hash differs", WEIGHTS_FILE),
        ("not-json", "not valid JSON", SPEC_FILE),
    ],
)
def test_corrupt_supernets_give_one_line_errors(dit_supernet, tmp_path, how, needle, file):
    bad = _corrupt_copy(dit_supernet, tmp_path / "bad", how)
    with pytest.raises(FineDeployError, match=needle):
        Supernet.load(bad)
    res = runner.invoke(app, ["inspect", str(bad)])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert needle in lines[0] and file in lines[0] and str(bad) in lines[0]


def test_inspect_json_and_table(dit_supernet):
    res = runner.invoke(app, ["inspect", str(dit_supernet), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["schema"] == 1 and s["backbone"] == "DiTTransformer2DModel"
    fc1 = next(t for t in s["types"] if t["name"] == "fc1")
    assert fc1["layers"] == 3 and fc1["shape"] == [64, 16]
    r = str(fc1["max_rank"])
    assert fc1["params"][r]["shared_basis"] == int(r) * (64 + 16) + 3 * int(r)
    assert s["totals"]["params_dense_model"] == sum(p.numel() for p in __import__("conftest").make_dit().parameters())
    res = runner.invoke(app, ["inspect", str(dit_supernet)])
    assert res.exit_code == 0 and "qkv" in res.output and "adaln" in res.output


def test_inspect_of_embedded_default():
    res = runner.invoke(app, ["inspect", "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["backbone"] == "DiTTransformer2DModel" and len(s["types"]) == 5


def test_convert_cli_writes_a_supernet_and_refuses_bad_input(dit_dir, tmp_path):
    out = tmp_path / "sn"
    res = runner.invoke(app, ["convert", "--from-diffusers", str(dit_dir), "-o", str(out), "--max-rank", "8"])
    assert res.exit_code == 0, res.output
    sn = Supernet.load(out)
    # the factors stop at 8; the top option is the source weight (exact rank L·min(m1, m2))
    assert all(t.factor_rank == 8 and t.source_top and t.max_rank == t.layers * min(t.m1, t.m2) for t in sn.types)
    res = runner.invoke(app, ["convert", "--from-diffusers", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")])
    assert res.exit_code != 0 and "no config.json" in res.output
    assert not (tmp_path / "x").exists()


def test_subnet_save_pretrained_loads_with_stock_diffusers(dit_supernet, tmp_path):
    from diffusers import DiTTransformer2DModel

    sn = Supernet.load(dit_supernet)
    ranks = {t.name: t.rank_options[2] for t in sn.types}
    sub = sn.subnet({"ranks": ranks})
    sub.save_pretrained(tmp_path / "sub")
    stock = DiTTransformer2DModel.from_pretrained(tmp_path / "sub")
    assert (run(stock, dit_inputs()) - run(sub, dit_inputs())).abs().max() <= 1e-6
    cfg = json.loads((tmp_path / "sub" / "config.json").read_text())
    assert cfg["_class_name"] == "DiTTransformer2DModel" and cfg["num_layers"] == 3


def test_weights_hash_is_remembered_until_the_file_changes(dit_supernet, tmp_path, monkeypatch):
    import shutil

    from fine_deploy import fileio

    w = tmp_path / "weights.safetensors"
    shutil.copy(dit_supernet / "weights.safetensors", w)
    real = fileio.sha256_file
    monkeypatch.setattr(fileio, "RECENT_S", 0.0)
    first = fileio.sha256_file_remembered(w)
    assert first == real(w)

    def no_reading(path, chunk=0):
        raise AssertionError("hashed again")

    monkeypatch.setattr(fileio, "sha256_file", no_reading)
    assert fileio.sha256_file_remembered(w) == first  # remembered: the file was not read
    with open(w, "r+b") as f:  # same size, new bytes: mtime/ctime move
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(AssertionError, match="hashed again"):
        fileio.sha256_file_remembered(w)
    monkeypatch.setattr(fileio, "sha256_file", real)
    assert fileio.sha256_file_remembered(w) == real(w) != first
