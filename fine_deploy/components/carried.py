"""Components carried as files: tokenizers (checked against their text encoder) and schedulers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fine_deploy.components.base import Carried
from fine_deploy.errors import FineDeployError


class Tokenizer(Carried):
    library = "transformers"
    classes = ("CLIPTokenizer", "CLIPTokenizerFast")
    role = "tokenizer"

    def load(self, folder: Path, class_name: str) -> Any:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FineDeployError(f"{folder}: transformers could not load the tokenizer ({first})") from None

    def check_matches(self, tokenizer: Any, encoder_config: Any, where: str) -> None:
        """A tokenizer whose ids or length the text encoder cannot take is refused before any work."""
        n, vocab = len(tokenizer), int(encoder_config.vocab_size)
        if n > vocab:
            raise FineDeployError(f"{where}: the tokenizer has {n} tokens but its text encoder embeds only {vocab}; "
                                  "pair the tokenizer with the text encoder it was trained with")
        length, positions = int(tokenizer.model_max_length), int(encoder_config.max_position_embeddings)
        if length > positions:
            raise FineDeployError(f"{where}: the tokenizer pads to {length} tokens but its text encoder has "
                                  f"{positions} positions; set model_max_length to {positions} in "
                                  "tokenizer_config.json or use the matching tokenizer")


class Scheduler(Carried):
    library = "diffusers"
    classes = ("DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
               "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverMultistepScheduler",
               "FlowMatchEulerDiscreteScheduler")
    role = "scheduler"

    def load(self, folder: Path, class_name: str) -> Any:
        from fine_deploy.fileio import read_json

        return read_json(folder / "scheduler_config.json", missing="the pipeline folder's scheduler is incomplete",
                         invalid="the pipeline folder's scheduler is broken")
