"""The non-denoiser parts of a text-to-image pipeline, one class per library class family."""

from __future__ import annotations

from fine_deploy.components.autoencoder_kl import VaeDecoder
from fine_deploy.components.base import Carried, Component
from fine_deploy.components.carried import Scheduler, Tokenizer
from fine_deploy.components.clip_text import ClipTextEncoder
from fine_deploy.errors import FineDeployError

_ALL: tuple[Component, ...] = (ClipTextEncoder(), VaeDecoder(), Tokenizer(), Scheduler())
SUPPORTED_COMPONENTS = {c: comp for comp in _ALL for c in comp.classes}


def component_for(class_name: str, where: str = "") -> Component:
    if class_name not in SUPPORTED_COMPONENTS:
        raise FineDeployError(f"{where}component class {class_name!r} is not supported; supported: "
                              f"{', '.join(sorted(SUPPORTED_COMPONENTS))}")
    return SUPPORTED_COMPONENTS[class_name]


__all__ = ["Carried", "ClipTextEncoder", "Component", "SUPPORTED_COMPONENTS", "Scheduler", "Tokenizer", "VaeDecoder",
           "component_for"]
