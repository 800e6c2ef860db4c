"""Tiny real diffusers backbones, saved and converted once per test session (seconds, CPU)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

DIT_CFG = dict(
    num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=3,
    sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1,
)
UNET_CFG = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
    norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
)


def make_dit(seed: int = 0):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    return DiTTransformer2DModel(**DIT_CFG).eval()


def make_unet(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**UNET_CFG).eval()


def dit_inputs(batch: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=g),
        "timestep": torch.tensor([10, 500][:batch]),
        "class_labels": torch.tensor([1, 7][:batch]),
    }


def unet_inputs(batch: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"sample": torch.randn(batch, 3, 16, 16, generator=g), "timestep": torch.tensor([10, 500][:batch])}


@torch.no_grad()
def run(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).sample


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory):
    """Measured LUTs, the host probe and planner caches of this test session go to a temporary cache,
    never to the user's ~/.cache or the source tree (subprocesses inherit the variable)."""
    path = tmp_path_factory.mktemp("fine-deploy-cache")
    old = os.environ.get("FINE_DEPLOY_CACHE")
    os.environ["FINE_DEPLOY_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("FINE_DEPLOY_CACHE", None)
    else:
        os.environ["FINE_DEPLOY_CACHE"] = old


@pytest.fixture(scope="session")
def dit_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dit")
    make_dit().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def unet_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("unet")
    make_unet().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def dit_supernet(dit_dir, tmp_path_factory):
    from fine_deploy.supernet.convert import convert

    out = tmp_path_factory.mktemp("sn") / "dit_supernet"
    convert(dit_dir, out)
    return out


@pytest.fixture(scope="session")
def unet_supernet(unet_dir, tmp_path_factory):
    from fine_deploy.supernet.convert import convert

    out = tmp_path_factory.mktemp("sn") / "unet_supernet"
    convert(unet_dir, out)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """For sampling loops over tiny models: on a loaded 2-core runner 2-thread torch spin-waits up to 50x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
