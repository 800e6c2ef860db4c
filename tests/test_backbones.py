"""Adapter conformance: every registered backbone class passes the same checks on a tiny stock config.

Adding a backbone = its adapter module + one entry in TINY below.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fine_deploy.backbones import SUPPORTED_BACKBONES, adapter_for
from fine_deploy.errors import FineDeployError
from fine_deploy.supernet.convert import model_to_supernet
from fine_deploy.supernet.core import SubnetConfig, load_supernet
from fine_deploy.supernet.types import dense_parameters, find_types

TINY = {
    "DiTTransformer2DModel": dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                  num_layers=3, sample_size=8, patch_size=2, num_embeds_ada_norm=10,
                                  norm_num_groups=1),
    "UNet2DModel": dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                        layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8),
    "UNet2DConditionModel": dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                 block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=24,
                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8),
    "PixArtTransformer2DModel": dict(sample_size=8, num_layers=3, attention_head_dim=8, num_attention_heads=2,
                                     in_channels=4, out_channels=8, caption_channels=24, cross_attention_dim=16,
                                     patch_size=2, norm_num_groups=1),
    "SD3Transformer2DModel": dict(sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=24, caption_projection_dim=16,
                                  pooled_projection_dim=12, out_channels=4),
}
TEXT = ["UNet2DConditionModel", "PixArtTransformer2DModel", "SD3Transformer2DModel"]


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return adapter_for(name).model_class()(**TINY[name]).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def converted():
    cache = {}

    def get(name: str):
        if name not in cache:
            model = build(name)
            cache[name] = (model, model_to_supernet(model))
        return cache[name]

    return get


def test_every_adapter_has_a_tiny_config():
    assert set(TINY) == set(SUPPORTED_BACKBONES)


@pytest.mark.parametrize("name", list(TINY))
def test_types_cover_the_weights_they_claim(name):
    model = build(name)
    types = find_types(model)
    claimed = [p for t in types for m in t.matrices for p in m.parts]
    assert len({p.module for p in claimed}) == len(claimed)  # no weight in two matrices
    for t in types:
        for m in t.matrices:
            rows = 0
            for p in m.parts:
                w = model.get_submodule(p.module).weight
                assert p.rows == (rows, rows + w.shape[0]) and w[0].numel() == t.m2
                rows += w.shape[0]
            assert rows == t.m1
    names = {n for n, _ in model.named_parameters()}
    assert set(dense_parameters(model, types)) | {f"{p.module}.weight" for p in claimed} == names
    # every linear/conv weight inside the block stacks is factorised; outside them (embeddings, heads) and in
    # the norms' own conditioning MLPs (DiT's per-block timestep embedder) weights stay dense
    blocks = ("transformer_blocks.", "down_blocks.", "up_blocks.", "mid_block.")
    left = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear | nn.Conv2d) and n.startswith(blocks)
            and n not in {p.module for p in claimed} and not any(s.startswith("norm") for s in n.split("."))]
    assert not left, left


@pytest.mark.parametrize("name", list(TINY))
def test_exact_rank_reproduces_the_dense_model(name, converted):
    model, sn = converted(name)
    ad = sn.adapter
    x = ad.example_inputs(sn.spec.config, 2, seed=3)
    with torch.no_grad():
        assert rel(ad.run(sn.subnet(), x), ad.run(model, x)) <= 1e-5
    assert [i.name for i in ad.inputs(sn.spec.config)][:1] == [ad.sample_input]


@pytest.mark.parametrize("name", list(TINY))
def test_subnet_config_loads_with_stock_from_pretrained(name, converted, tmp_path):
    _, sn = converted(name)
    ad = sn.adapter
    cfg = SubnetConfig({t.name: t.rank_options[len(t.rank_options) // 2] for t in sn.types}, {},
                       (sn.spec.depth.get("options") or [None])[0])
    sub = sn.subnet(cfg)
    sub.save_pretrained(tmp_path / "m", safe_serialization=True)
    again = ad.model_class().from_pretrained(tmp_path / "m").eval()
    assert type(again).__name__ == name
    if cfg.depth is not None:
        assert getattr(again.config, ad.depth_key) == cfg.depth
    x = ad.example_inputs(sn.spec.config, 1, seed=4)
    with torch.no_grad():
        assert (ad.run(again, x) - ad.run(sub, x)).abs().max() <= 1e-6


@pytest.mark.parametrize("name", list(TINY))
def test_inputs_export_under_diffusers_argument_names(name, converted, tmp_path):
    import inspect

    import onnxruntime as ort

    from fine_deploy.export.io_names import export_inputs, run_torch
    from fine_deploy.export.onnx_export import export_onnx

    model, sn = converted(name)
    ad = sn.adapter
    inputs = export_inputs(ad, sn.spec.config, 1, None, 0)
    args = set(inspect.signature(model.forward).parameters)
    nested = {"text_embeds", "time_ids", "resolution", "aspect_ratio"}  # diffusers' added_cond_kwargs keys
    assert set(inputs) <= args | nested
    files = export_onnx(model, inputs, tmp_path / "m.onnx", adapter=ad)
    sess = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(inputs)
    out = sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    ref = run_torch(model, inputs, ad).numpy()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) <= 1e-4


@pytest.mark.parametrize("name", list(TINY))
def test_sampler_runs_with_guidance(name, converted, one_torch_thread):
    from fine_deploy.sample.api import conditions
    from fine_deploy.sample.denoisers import ModelInfo, TorchDenoiser
    from fine_deploy.sample.loop import denoise
    from fine_deploy.supernet.schedule import make_scheduler, training_schedule

    _, sn = converted(name)
    info = ModelInfo.from_config(name, sn.spec.config)
    schedule = training_schedule(sn)
    assert schedule.cls == sn.adapter.scheduler
    labels = torch.arange(2) % info.num_classes if info.class_conditional else None
    cond = conditions(info, 2, labels, seed=0)
    assert info.guided == (cond is not None)
    den = TorchDenoiser(sn.subnet(), info)
    scheduler = make_scheduler({**schedule.config, "_class_name": schedule.cls}, "ddim")
    x = denoise(den, scheduler, 2, steps=3, seed=0, cond=cond, guidance=2.0 if info.guided else 1.0)
    assert x.shape == (2, info.channels, info.resolution, info.resolution) and torch.isfinite(x).all()
    again = denoise(den, make_scheduler({**schedule.config, "_class_name": schedule.cls}, "ddim"), 2, steps=3,
                    seed=0, cond=cond, guidance=2.0 if info.guided else 1.0)
    assert torch.equal(x, again)


def test_sd3_depth_maps_the_context_pre_only_block_to_the_last_one(converted):
    _, sn = converted("SD3Transformer2DModel")
    sub = sn.subnet(SubnetConfig(depth=2))
    assert sub.transformer_blocks[1].context_pre_only and not sub.transformer_blocks[0].context_pre_only
    last = {ms.name: ms for ms in sn.layout(2).matrices}["transformer_blocks.1.ctx_adaln"]
    assert last.type == "ctx_adaln_32x16" and last.sigma == (("transformer_blocks.2.ctx_adaln", 1.0),)


def test_unsupported_class_and_pipeline_folder_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from fine_deploy.cli import app

    torch.manual_seed(0)
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4).save_pretrained(tmp_path / "vae")
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    for src, msg in ((tmp_path / "vae", "AutoencoderKL is not supported; supported: DiTTransformer2DModel"),
                     (tmp_path / "pipe", "component 'unet' is missing"),
                     (tmp_path / "flux", "'FluxPipeline' is not supported whole")):
        res = CliRunner().invoke(app, ["convert", "--from-diffusers", str(src), "-o", str(tmp_path / "sn")])
        assert res.exit_code == 2, res.output
        assert msg in res.output and len(res.output.strip().splitlines()) == 1, res.output
        assert not (tmp_path / "sn").exists()
    with pytest.raises(FineDeployError, match="not supported"):
        adapter_for("FluxTransformer2DModel")


def _stock_kwargs(name: str, feeds: dict[str, np.ndarray]) -> dict:
    """The diffusers forward() call a user writes for these inputs (no fine-deploy code involved)."""
    kw = {k: torch.from_numpy(v) for k, v in feeds.items()}
    if name == "PixArtTransformer2DModel":
        kw["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
    return kw


@pytest.mark.parametrize("name", TEXT)
def test_text_conditioned_cli_flow_onnx_matches_the_stock_diffusers_folder(name, tmp_path):
    """convert → plan → export onnx and diffusers through the CLI; stock onnxruntime fed by diffusers' argument
    names matches the exported diffusers folder loaded and run by stock diffusers."""
    import onnxruntime as ort
    from typer.testing import CliRunner

    from fine_deploy.cli import app

    build(name).save_pretrained(tmp_path / "src")
    runner = CliRunner()

    def cli(*args: str) -> None:
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output

    cli("convert", "--from-diffusers", tmp_path / "src", "-o", tmp_path / "sn")
    cli("plan", "--device", "host", "--mem", "8GB", "--supernet", tmp_path / "sn", "-o", tmp_path / "plan.json")
    plan = json.loads((tmp_path / "plan.json").read_text())
    # a smaller subnet than the full one, so the check is not on the converted model's own weights
    sn = load_supernet(tmp_path / "sn")
    plan["subnet"]["ranks"] = {t.name: t.rank_options[len(t.rank_options) // 2] for t in sn.types}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    cli("export", "--plan", tmp_path / "plan.json", "--format", "onnx", "-o", tmp_path / "onnx")
    cli("export", "--plan", tmp_path / "plan.json", "--format", "diffusers", "-o", tmp_path / "diff")

    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == [i["name"] for i in manifest["inputs"]]
    model = adapter_for(name).model_class().from_pretrained(tmp_path / "diff" / adapter_for(name).component).eval()
    import inspect as pyinspect

    assert set(names) <= set(pyinspect.signature(model.forward).parameters)
    g = np.random.default_rng(0)
    feeds = {i.name: (g.integers(0, 1000, i.shape[0] if i.shape else 1).astype(np.float32) if i.name == "timestep"
                      else g.standard_normal([int(d) for d in i.shape]).astype(np.float32))
             for i in sess.get_inputs()}
    out = sess.run(None, feeds)[0]
    with torch.no_grad():
        ref = model(**_stock_kwargs(name, feeds), return_dict=False)[0].numpy()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) <= 1e-4
    # the diffusers folder carries the training scheduler family, loadable by stock diffusers
    from diffusers import SchedulerMixin

    sched_cls = json.loads((tmp_path / "diff" / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    assert sched_cls == adapter_for(name).scheduler
    import diffusers

    assert isinstance(getattr(diffusers, sched_cls).from_pretrained(tmp_path / "diff" / "scheduler"), SchedulerMixin)


def test_sdxl_added_conditions_are_inputs_of_their_own(tmp_path):
    """SDXL's added_cond_kwargs (text_embeds, time_ids) become flat graph inputs under diffusers' key names."""
    import onnxruntime as ort

    from fine_deploy.export.io_names import export_inputs, run_torch
    from fine_deploy.export.onnx_export import export_onnx

    cfg = {**TINY["UNet2DConditionModel"], "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
           "projection_class_embeddings_input_dim": 8 * 6 + 20}
    torch.manual_seed(0)
    model = adapter_for("UNet2DConditionModel").model_class()(**cfg).eval()
    sn = model_to_supernet(model)
    ad = sn.adapter
    inputs = export_inputs(ad, sn.spec.config, 1)
    assert list(inputs) == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    assert inputs["text_embeds"].shape == (1, 20) and inputs["time_ids"].shape == (1, 6)
    with torch.no_grad():
        kw = {k: v for k, v in inputs.items() if k not in ("text_embeds", "time_ids")}
        stock = model(**kw, added_cond_kwargs={"text_embeds": inputs["text_embeds"],
                                               "time_ids": inputs["time_ids"]}).sample
    assert rel(run_torch(sn.subnet(), inputs, ad), stock) <= 1e-5
    files = export_onnx(sn.subnet(), inputs, tmp_path / "m.onnx", adapter=ad)
    sess = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
    out = sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    assert np.linalg.norm(out - stock.numpy()) / np.linalg.norm(stock.numpy()) <= 1e-4


@pytest.mark.parametrize("name", list(TINY))
def test_resolutions_the_adapter_allows_run_and_others_are_refused(name, converted):
    _, sn = converted(name)
    ad, cfg = sn.adapter, sn.spec.config
    exact, allowed, step, top = ad.resolution_options(cfg)
    if exact is not None:
        with pytest.raises(FineDeployError, match=f"use {cfg['sample_size']} only"):
            ad.check_resolution(cfg, 2 * cfg["sample_size"])
        return
    res = ad.check_resolution(cfg, 2 * step if 2 * step != cfg["sample_size"] else 4 * step)
    with torch.no_grad():
        out = ad.run(sn.subnet(), ad.example_inputs(cfg, 1, res))
    assert out.shape[-2:] == (res, res)
    with pytest.raises(FineDeployError, match="not allowed"):
        ad.check_resolution(cfg, top + step)


def test_training_refuses_an_objective_it_does_not_implement(converted):
    from fine_deploy.train.engine import TrainableSupernet

    _, sn = converted("SD3Transformer2DModel")
    with pytest.raises(FineDeployError, match="flow_matching objective\\) is not supported yet"):
        TrainableSupernet(sn)
    _, sn = converted("PixArtTransformer2DModel")
    with pytest.raises(FineDeployError, match="needs prompt embeddings"):
        TrainableSupernet(sn)
