"""Recovery training: a converted supernet distilled from its source model (issue 19)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_dit
from typer.testing import CliRunner

from fine_deploy.cli import app
from fine_deploy.errors import FineDeployError
from fine_deploy.supernet.core import Supernet

FAST = dict(teacher_images=32, sample_steps=3, batch_size=16, lr=1e-2, checkpoint_every=5)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from fine_deploy.supernet.convert import convert

    root = tmp_path_factory.mktemp("recover")
    make_dit(seed=5).save_pretrained(root / "teacher")
    convert(root / "teacher", root / "sn", max_rank=4)
    return root


def test_recovery_lowers_the_factor_error_and_keeps_the_exact_top(converted, tmp_path, one_torch_thread):
    from fine_deploy.train.recover import recover

    parent = Supernet.load(converted / "sn")
    out = recover(converted / "sn", converted / "teacher", tmp_path / "rec", steps=30, **FAST)
    rec = out.spec.provenance["recovery"]
    # the distillation metric on held-out teacher states drops at every measured size
    for size, before in rec["heldout_rel_mse_before"].items():
        assert rec["heldout_rel_mse_after"][size] < before, size
    # ... and so does the factors-only output error against the teacher, re-measured on convert's inputs
    assert out.spec.conversion["factors_only"]["rel_mse"] < parent.spec.conversion["factors_only"]["rel_mse"]
    # the exact top options are untouched: the full model is still the teacher
    assert out.spec.conversion["full_model"]["rel_max"] <= 1e-6
    for t in parent.types:
        for m in t.matrices:
            assert torch.equal(out.tensors[f"source.{m['name']}"], parent.tensors[f"source.{m['name']}"])
    # the sensitivity table was re-measured against the teacher and is what the planner reads
    from fine_deploy.planner.sensitivity import sensitivity_table

    back = Supernet.load(tmp_path / "rec")
    assert back.spec.sensitivity["reference"] == "source"
    assert sensitivity_table(back, cache=False) == back.spec.sensitivity


def test_recovery_resumes_where_it_stopped(converted, tmp_path, one_torch_thread, monkeypatch):
    from fine_deploy.train import recover as rc

    straight = rc.recover(converted / "sn", converted / "teacher", tmp_path / "a", steps=10, evaluate=False, **FAST)
    real = rc._save_checkpoint

    def save_then_die(ckpt, tsn, optimizer, names, state, settings):  # the run is killed after its step-5 checkpoint
        real(ckpt, tsn, optimizer, names, state, settings)
        if state.step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(rc, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        rc.recover(converted / "sn", converted / "teacher", tmp_path / "b", steps=10, evaluate=False, **FAST)
    monkeypatch.undo()
    assert not (tmp_path / "b").exists()
    resumed = rc.recover(converted / "sn", converted / "teacher", tmp_path / "b", steps=10, resume=True,
                         evaluate=False, **FAST)
    assert resumed.spec.provenance["recovery"]["steps"] == 10
    for name, v in straight.tensors.items():
        assert torch.allclose(v, resumed.tensors[name], atol=1e-5), name


def test_recovery_cli_and_refusals(converted, tmp_path, one_torch_thread):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--from-supernet", str(converted / "sn"), "--teacher",
                              str(converted / "teacher"), "-o", str(tmp_path / "r"), "--steps", "2",
                              "--batch-size", "8", "--no-evaluate"])
    assert res.exit_code == 0, res.output
    assert "2 recovery steps" in res.output
    doc = json.loads((tmp_path / "r" / "supernet.json").read_text())
    assert doc["provenance"]["recovered"] is True
    assert doc["conversion"]["measured"].startswith("before recovery")  # not re-measured: it says so
    # a teacher that is not the converted model is refused in one line, before any work
    other = tmp_path / "other"
    make_dit(seed=6).save_pretrained(other)
    res = runner.invoke(app, ["train", "--from-supernet", str(converted / "sn"), "--teacher", str(other),
                              "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "not the ones the supernet was converted from" in res.output
    assert not (tmp_path / "x").exists()
    res = runner.invoke(app, ["train", "-o", str(tmp_path / "y")])
    assert res.exit_code == 2 and "--from-supernet" in res.output


def test_recovery_refuses_a_trained_supernet(tmp_path):
    from fine_deploy.train.recover import recover
    from fine_deploy.zoo import default_supernet_path

    with pytest.raises(FineDeployError, match="was not converted"):
        recover(default_supernet_path(), tmp_path, tmp_path / "o", steps=1)
