"""Tiny text-to-image pipeline folders written by stock diffusers + transformers: random weights, a CLIP
tokenizer whose byte-level BPE vocabulary is written here (no download), the stock pipeline's save_pretrained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

WORDS = ("a", "photo", "of", "cat", "dog")
TOKENS = 16  # the tokenizer's and text encoders' context length


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte -> printable character table (the base alphabet of its BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(folder: Path, tokens: int = TOKENS):
    """A CLIPTokenizer with the byte alphabet plus merges spelling WORDS; returns it (saved to `folder`)."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for w in WORDS:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
            if parts[0] not in vocab:
                vocab.append(parts[0])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    raw = folder.with_name(folder.name + ".raw")
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (raw / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"), model_max_length=tokens,
                        pad_token="<|endoftext|>")
    shutil.rmtree(raw)
    return tok


def clip(vocab: int, hidden: int, proj: int, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=TOKENS, projection_dim=proj,
                         bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg).eval()


def vae(**kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=8, sample_size=16, **kw)


def unet(cross_attention_dim: int, **kw):
    """The SD-style UNet2DConditionModel (SDXL's adds its text_time conditions through `kw`)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=cross_attention_dim,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8, **kw)


def ddim():
    """SD's DDIM scheduler settings."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def sd_pipeline(out: Path, seed: int = 0) -> Path:
    """StableDiffusionPipeline: CLIPTextModel, UNet2DConditionModel, AutoencoderKL, DDIM."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(seed)
    tok = write_tokenizer(out / "tokenizer")
    StableDiffusionPipeline(vae=vae(), text_encoder=clip(len(tok), 24, 24), tokenizer=tok, unet=unet(24),
                            scheduler=ddim(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(str(out))
    return out


def sd3_pipeline(out: Path, seed: int = 0) -> Path:
    """StableDiffusion3Pipeline without T5 (text_encoder_3=None, as diffusers documents for low memory)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tok = write_tokenizer(out / "tokenizer")
    tr = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
                               num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                               pooled_projection_dim=16, out_channels=4)
    StableDiffusion3Pipeline(transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(),
                             vae=vae(shift_factor=0.0609, scaling_factor=1.5035),
                             text_encoder=clip(len(tok), 16, 8, True), tokenizer=tok,
                             text_encoder_2=clip(len(tok), 16, 8, True), tokenizer_2=tok,
                             text_encoder_3=None, tokenizer_3=None).save_pretrained(str(out))
    return out


def sdxl_pipeline(out: Path, seed: int = 0) -> Path:
    """StableDiffusionXLPipeline: CLIPTextModel + CLIPTextModelWithProjection, a text_time UNet, DDIM."""
    from diffusers import StableDiffusionXLPipeline

    torch.manual_seed(seed)
    tok = write_tokenizer(out / "tokenizer")
    xl_unet = unet(32, addition_embed_type="text_time", addition_time_embed_dim=8,
                   projection_class_embeddings_input_dim=6 * 8 + 8)
    StableDiffusionXLPipeline(vae=vae(), text_encoder=clip(len(tok), 16, 8), text_encoder_2=clip(len(tok), 16, 8, True),
                              tokenizer=tok, tokenizer_2=tok, unet=xl_unet, scheduler=ddim()).save_pretrained(str(out))
    return out


PIPELINES = {"sd": sd_pipeline, "sdxl": sdxl_pipeline, "sd3": sd3_pipeline}
