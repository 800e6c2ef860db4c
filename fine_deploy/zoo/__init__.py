"""The embedded default supernet that every command uses when no --supernet is given.

It is trained, not converted: `python -m fine_deploy.train.default_model` runs the `dit-digits` recipe (a
class-conditional DiT on scikit-learn's digits, fixed seed, FINE pre-training then a nested rank/depth
stage), measures it (held-out loss, sensitivity table, digits Fréchet distance) and writes it with a
model card to `fine_deploy/zoo/default/`. Training works in a scratch folder (checkpoints, resumable)
so that nothing but the finished supernet and its card lands in the package.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEFAULT_NAME = "default"
CARD_FILE = "MODEL_CARD.md"


def default_supernet_path() -> Path:
    return Path(str(files("fine_deploy.zoo") / DEFAULT_NAME))
