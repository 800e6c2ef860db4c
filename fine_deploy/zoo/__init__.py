"""The embedded default supernet that every command uses when no --supernet is given.

Until the training recipe ships a trained default, this is an *untrained* class-conditional DiT
(seeded random initialisation) converted exactly (full rank): it exercises every code path with the
real file format, but its sensitivity table is empty and its samples are noise. Rebuild with
`python -m fine_deploy.zoo`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEFAULT_NAME = "default"

# Sized for 16x16 single-channel images (scikit-learn digits upsampled) with 10 classes.
DEFAULT_DIT_CONFIG = dict(
    num_attention_heads=4,
    attention_head_dim=16,
    in_channels=1,
    out_channels=1,
    num_layers=6,
    sample_size=16,
    patch_size=2,
    num_embeds_ada_norm=10,
    norm_num_groups=1,
)


def default_supernet_path() -> Path:
    return Path(str(files("fine_deploy.zoo") / DEFAULT_NAME))


def build_default(out: Path | None = None, seed: int = 0) -> Path:
    import torch
    from diffusers import DiTTransformer2DModel

    from fine_deploy.supernet.convert import model_to_supernet

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(**DEFAULT_DIT_CONFIG).eval()
    sn = model_to_supernet(
        model, provenance={"source": "untrained placeholder", "seed": seed, "recipe": None, "trained": False}
    )
    return sn.save(out or default_supernet_path())
