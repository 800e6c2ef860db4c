"""Whole text-to-image pipelines (issue 13): a pipeline folder written by stock diffusers + transformers is
converted, planned with every component's memory, exported whole, and sampled from a prompt; stock
onnxruntime runs each ONNX component, stock diffusers loads the diffusers export and gives the same image
as `fine-deploy sample` from the same seed and latents."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli_validation import refused
from tiny_pipelines import PIPELINES, sd_pipeline
from typer.testing import CliRunner

from fine_deploy.cli import app


def cli(*args: str) -> str:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


@pytest.fixture(scope="module", params=list(PIPELINES))
def walked(request, tmp_path_factory):
    """source folder -> convert -> plan -> export onnx + diffusers, all through the CLI."""
    root = tmp_path_factory.mktemp(request.param)
    src = PIPELINES[request.param](root / "src")
    out = cli("convert", "--from-diffusers", src, "-o", root / "sn")
    assert "components carried" in out
    cli("plan", "--device", "host", "--mem", "2GB", "--supernet", root / "sn", "-o", root / "plan.json")
    for fmt in ("onnx", "diffusers"):
        cli("export", "--plan", root / "plan.json", "--supernet", root / "sn", "--format", fmt, "-o", root / fmt)
    return request.param, root


def test_inspect_lists_carried_components(walked):
    name, root = walked
    s = json.loads(cli("inspect", root / "sn", "--json"))
    carried = s["pipeline"]["carried"]
    want = {"text_encoder", "tokenizer", "vae", "scheduler"}
    want |= {"text_encoder_2", "tokenizer_2"} if name in ("sd3", "sdxl") else set()
    assert set(carried) == want
    for c in carried.values():
        assert c["bytes"] > 0
    assert carried["text_encoder"]["params"] == sum(
        p.numel() for p in _load_te(root / "src" / "text_encoder").parameters())


def _load_te(folder: Path):
    from transformers import AutoModel, CLIPTextModelWithProjection

    cfg = json.loads((folder / "config.json").read_text())
    cls = CLIPTextModelWithProjection if "WithProjection" in cfg["architectures"][0] else AutoModel
    return cls.from_pretrained(folder)


def test_every_onnx_component_runs_in_stock_onnxruntime(walked):
    import onnxruntime as ort

    name, root = walked
    m = json.loads((root / "onnx" / "manifest.json").read_text())
    den = "transformer" if name == "sd3" else "unet"
    assert m["model"] == f"{den}/model.onnx"
    folders = {p.parent.name for p in (root / "onnx").rglob("model.onnx")}
    assert folders == {den, "text_encoder", "vae_decoder"} | ({"text_encoder_2"} if name in ("sd3", "sdxl") else set())
    assert (root / "onnx" / "tokenizer" / "tokenizer_config.json").is_file()
    assert json.loads((root / "onnx" / "model_index.json").read_text())["vae_decoder"] == ["diffusers", "AutoencoderKL"]
    for comp in m["components"].values():
        if "model" not in comp:
            continue
        sess = ort.InferenceSession(str(root / "onnx" / comp["model"]), providers=["CPUExecutionProvider"])
        feeds = {i["name"]: np.zeros(i["shape"], dtype=np.int32 if i["dtype"] == "int32" else np.float32)
                 for i in comp["inputs"]}
        outs = sess.run(None, feeds)
        assert [list(o.shape) for o in outs] == [o["shape"] for o in comp["outputs"]]
        assert comp["parity_rel"] <= 1e-5
    checked = {p["inputs"].get("component") for p in m["parity"]}
    assert {"text_encoder", "vae"} <= checked


def test_diffusers_export_is_the_stock_pipeline(walked):
    from diffusers import DiffusionPipeline

    name, root = walked
    m = json.loads((root / "diffusers" / "manifest.json").read_text())
    assert m["checks"]["diffusers"]["pipeline"]["class"] == {"sd": "StableDiffusionPipeline",
                                                              "sdxl": "StableDiffusionXLPipeline",
                                                              "sd3": "StableDiffusion3Pipeline"}[name]
    extra = {"text_encoder_3": None, "tokenizer_3": None} if name == "sd3" else {}
    pipe = DiffusionPipeline.from_pretrained(str(root / "diffusers"), **extra)
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a photo of a cat", num_inference_steps=2, output_type="np").images
    assert img.shape == (1, 16, 16, 3) and np.isfinite(img).all()


@pytest.mark.parametrize("fmt", ["onnx", "diffusers"])
def test_sample_from_a_prompt_matches_stock_diffusers(walked, fmt, tmp_path):
    """Same prompt, seed, scheduler and latents: `fine-deploy sample` on the export == stock diffusers."""
    from diffusers import DiffusionPipeline

    name, root = walked
    png = tmp_path / "cat.png"
    cli("sample", root / fmt, "--prompt", "a photo of a cat", "--steps", "4", "--seed", "5", "-n", "2", "-o", png)
    assert png.stat().st_size > 0
    rec = json.loads(png.with_suffix(".json").read_text())
    assert rec["prompt"] == "a photo of a cat" and rec["space"] == "pixel" and rec["guidance_scale"] > 1
    from fine_deploy.sample import sample

    ours = (sample(root / fmt, prompt="a photo of a cat", steps=4, n=2, seed=5).images + 1) / 2
    extra = {"text_encoder_3": None, "tokenizer_3": None} if name == "sd3" else {}
    pipe = DiffusionPipeline.from_pretrained(str(root / "diffusers"), **extra)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.stack([torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(5 + i)) for i in range(2)])
    stock = pipe(["a photo of a cat"] * 2, latents=latents, num_inference_steps=4, height=16, width=16,
                 output_type="np").images.transpose(0, 3, 1, 2)
    assert np.abs(ours - stock).mean() <= 1e-3
    assert np.abs(stock - stock.mean()).mean() > 1e-3  # not a flat image: the comparison can fail


def test_sample_compare_puts_the_full_pipeline_beside(walked, tmp_path):
    """--compare: the same prompt and seeds through the full supernet's pipeline in PyTorch (the plan here keeps
    every knob at its best value, so the two must agree to export parity)."""
    _, root = walked
    png = tmp_path / "cmp.png"
    cli("sample", root / "onnx", "--prompt", "a photo of a dog", "--steps", "3", "-n", "2", "--compare", "-o", png)
    rec = json.loads(png.with_suffix(".json").read_text())
    assert rec["pipeline"]["runtime"] == "onnxruntime-cpu" and rec["compare"]["mean_abs_diff"] < 1e-4


def test_plan_splits_memory_by_component_and_sequential_offload_lowers_it(walked, tmp_path):
    _, root = walked
    full = json.loads((root / "plan.json").read_text())["predicted"]
    cli("plan", "--device", "host", "--mem", "2GB", "--supernet", root / "sn", "--offload", "sequential",
        "-o", tmp_path / "seq.json")
    seq = json.loads((tmp_path / "seq.json").read_text())["predicted"]
    comps = full["pipeline"]["components"]
    assert set(comps) >= {"text_encoder", "vae"} and full["pipeline"]["offload"] == "none"
    den = full["denoiser_memory_bytes"]
    assert den == seq["denoiser_memory_bytes"]  # nothing binds: the same subnet
    weights = sum(c["weight_bytes"] for c in comps.values())
    acts = max(c["activation_bytes"] for c in comps.values())
    assert full["memory_bytes"] == pytest.approx(den + weights + acts, abs=1)
    largest = max(c["weight_bytes"] + c["activation_bytes"] for c in comps.values())
    assert seq["memory_bytes"] == pytest.approx(max(den, largest), abs=1)
    assert full["memory_bytes"] - seq["memory_bytes"] == pytest.approx(den + weights + acts - max(den, largest), abs=2)
    assert sum(full["pipeline"]["memory_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert max(seq["pipeline"]["memory_share"].values()) == pytest.approx(1.0, abs=1e-4)


def test_pipeline_latency_budget_counts_every_component(walked, tmp_path):
    """Per image = text encoders + steps × 2 guided passes × denoiser + VAE decode."""
    _, root = walked
    cli("plan", "--device", "host", "--mem", "2GB", "--latency", "10s", "--steps", "20", "--supernet", root / "sn",
        "-o", tmp_path / "p.json")
    pr = json.loads((tmp_path / "p.json").read_text())["predicted"]
    pipe = pr["pipeline"]
    assert pipe["denoiser_passes_per_step"] == 2
    fixed = sum(c["latency_s"] * c["calls_per_image"] for c in pipe["components"].values())
    assert pipe["latency_per_image_s"] == pytest.approx(fixed + 20 * 2 * pr["latency_s"], rel=1e-6)
    assert pr["latency_per_image_s"] == pytest.approx(pipe["latency_per_image_s"], rel=1e-6)


# --- bad input: one line, exit 2, nothing written ---------------------------------------------------------


@pytest.fixture(scope="module")
def sd_src(tmp_path_factory):
    return sd_pipeline(tmp_path_factory.mktemp("bad") / "src")


def _copy(src: Path, root: Path) -> Path:
    dst = root / "in"
    shutil.copytree(src, dst)
    return dst


def test_refuses_a_pipeline_whose_denoiser_has_no_adapter(sd_src, tmp_path):
    src = _copy(sd_src, tmp_path)
    cfg = json.loads((src / "unet" / "config.json").read_text())
    (src / "unet" / "config.json").write_text(json.dumps({**cfg, "_class_name": "UNet3DConditionModel"}))
    refused(["convert", "--from-diffusers", str(src), "-o", str(tmp_path / "sn")], tmp_path,
            match="UNet3DConditionModel", max_s=20)


def test_refuses_a_pipeline_with_a_missing_component(sd_src, tmp_path):
    src = _copy(sd_src, tmp_path)
    shutil.rmtree(src / "vae")
    refused(["convert", "--from-diffusers", str(src), "-o", str(tmp_path / "sn")], tmp_path, match="vae", max_s=20)


def test_refuses_a_tokenizer_that_does_not_match_its_text_encoder(sd_src, tmp_path):
    src = _copy(sd_src, tmp_path)
    cfg = json.loads((src / "text_encoder" / "config.json").read_text())
    (src / "text_encoder" / "config.json").write_text(json.dumps({**cfg, "vocab_size": 100}))
    refused(["convert", "--from-diffusers", str(src), "-o", str(tmp_path / "sn")], tmp_path,
            match="tokenizer has", max_s=20)


def test_refuses_pickled_component_weights(sd_src, tmp_path):
    src = _copy(sd_src, tmp_path)
    w = src / "vae" / "diffusion_pytorch_model.safetensors"
    w.rename(w.with_name("diffusion_pytorch_model.bin"))
    refused(["convert", "--from-diffusers", str(src), "-o", str(tmp_path / "sn")], tmp_path,
            match="pickled", max_s=20)


def test_prompt_needs_a_pipeline_and_a_pipeline_needs_a_prompt(walked, tmp_path):
    _, root = walked
    refused(["sample", str(root / "onnx"), "-o", str(tmp_path / "x.png")], tmp_path, match="--prompt")
    refused(["sample", "default", "--prompt", "a cat", "-o", str(tmp_path / "x.png")], tmp_path,
            match="denoiser alone")
    refused(["plan", "--device", "host", "--mem", "1GB", "--offload", "sideways", "--supernet", str(root / "sn"),
             "-o", str(tmp_path / "p.json")], tmp_path, match="--offload")


def test_trt_bundle_builds_every_component_with_one_script(walked, tmp_path):
    import ast

    name, root = walked
    cli("export", "--plan", root / "plan.json", "--supernet", root / "sn", "--format", "trt", "-o", tmp_path / "trt")
    m = json.loads((tmp_path / "trt" / "manifest.json").read_text())
    onnx_files = {str(p.relative_to(tmp_path / "trt")) for p in (tmp_path / "trt").rglob("model.onnx")}
    assert set(m["checks"]["tensorrt"]["profiles"]) == onnx_files and len(onnx_files) >= 3
    script = (tmp_path / "trt" / "build_engine.py").read_text()
    ast.parse(script)
    settings = json.loads(script.split('json.loads(r"""')[1].split('""")')[0])
    assert {k: v["engine"] for k, v in settings["engines"].items()} == {
        f: f.replace("model.onnx", "model.engine") for f in onnx_files}
    lines = [x for x in (tmp_path / "trt" / "trtexec.sh").read_text().splitlines() if x.startswith("trtexec")]
    assert len(lines) == len(onnx_files)


def test_coreml_packages_per_component(walked, tmp_path):
    name, root = walked
    if name != "sd":
        pytest.skip("one pipeline is enough for the Core ML layout (conversion takes ~20 s per pipeline)")
    cli("export", "--plan", root / "plan.json", "--supernet", root / "sn", "--format", "coreml", "-o", tmp_path / "c")
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["model"] == "Unet.mlpackage"
    assert {c.get("model") for c in m["components"].values()} >= {"TextEncoder.mlpackage", "VAEDecoder.mlpackage"}
    for c in m["components"].values():
        if "coreml" in c:
            assert c["coreml"]["weights_checked"] > 0 and c["coreml"]["weights_max_rel_diff"] == 0.0
    vocab = json.loads((tmp_path / "c" / "vocab.json").read_text())
    assert "<|endoftext|>" in vocab and (tmp_path / "c" / "merges.txt").read_text().startswith("#version")
