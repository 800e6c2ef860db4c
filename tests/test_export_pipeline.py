"""Pipeline folders: stock `DiffusionPipeline.from_pretrained` loads `export --format diffusers` and samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fine_deploy.export import export
from fine_deploy.export.manifest import MANIFEST
from fine_deploy.planner.schema import Plan
from fine_deploy.sample import sample
from fine_deploy.supernet.core import load_supernet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _plan(sn_dir, path, **subnet) -> None:
    sn = load_supernet(sn_dir)
    cfg = {"ranks": {t.name: max(1, t.max_rank // 2) for t in sn.types}, **subnet}
    Plan(supernet={"path": str(sn_dir), "sha256": sn.content_hash}, subnet=cfg, kernels={}).save(path)


def test_unet_folder_is_a_stock_ddim_pipeline(unet_supernet, tmp_path):
    from diffusers import DDIMPipeline, DiffusionPipeline

    _plan(unet_supernet, tmp_path / "plan.json")
    m = export(tmp_path / "plan.json", "diffusers", tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_class_name"] == "DDIMPipeline" and index["unet"] == ["diffusers", "UNet2DModel"]
    assert m.model == "unet" and m.checks["diffusers"]["pipeline"]["class"] == "DDIMPipeline"
    assert not (tmp_path / "p" / "pipeline.py").exists()  # no remote code for a stock pipeline
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "p"))
    assert isinstance(pipe, DDIMPipeline)
    pipe.set_progress_bar_config(disable=True)
    img = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (2, 16, 16, 3) and np.isfinite(img).all() and 0 <= img.min() and img.max() <= 1
    assert img.std() > 0.01  # an image, not a constant
    # fine-deploy samples the folder too (PyTorch) and gets the ONNX-free reference of the plan
    a = sample(tmp_path / "p", steps=3, n=2).images
    b = sample(tmp_path / "plan.json", steps=3, n=2).images
    assert np.abs(a - b).max() < 1e-5


def test_dit_folder_loads_with_its_own_pipeline_file(dit_supernet, tmp_path):
    from diffusers import DiffusionPipeline

    _plan(dit_supernet, tmp_path / "plan.json", depth=2)
    m = export(tmp_path / "plan.json", "diffusers", tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "PixelDiTPipeline"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert {"model_index.json", "pipeline.py", "scheduler/scheduler_config.json", "transformer/config.json",
            "transformer/diffusion_pytorch_model.safetensors"} <= set(m.files)
    saved = json.loads((tmp_path / "p" / MANIFEST).read_text())
    assert saved["sampling"]["null_class"] == 10 and saved["checks"]["diffusers"]["pipeline"]["trust_remote_code"]
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "p"), trust_remote_code=True)
    assert type(pipe).__name__ == "PixelDiTPipeline" and pipe.transformer.config.num_layers == 2
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    img = pipe(class_labels=[3, 4], num_inference_steps=3, generator=gens, output_type="np").images
    assert img.shape == (2, 8, 8, 4) and np.isfinite(img).all()
    # the folder's pipeline and fine-deploy's sampler are the same DDIM loop: same seeds, same images
    ours = sample(tmp_path / "p", steps=3, seed=0, n=2, labels=[3, 4]).images
    assert np.abs(ours.transpose(0, 2, 3, 1) / 2 + 0.5 - img).max() < 1e-5
    pil = pipe(class_labels=[1], num_inference_steps=2).images[0]
    assert pil.size == (8, 8)


def test_pipeline_folder_needs_no_fine_deploy(dit_supernet, tmp_path):
    """pipeline.py imports only torch and diffusers: the folder is usable where fine-deploy is not installed."""
    _plan(dit_supernet, tmp_path / "plan.json")
    export(tmp_path / "plan.json", "diffusers", tmp_path / "p")
    src = (tmp_path / "p" / "pipeline.py").read_text()
    imports = [ln.split()[1] for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    assert set(imports) == {"__future__", "torch", "diffusers"}
