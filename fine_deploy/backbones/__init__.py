"""One adapter per diffusers backbone class, registered by class name (see base.Adapter).

Adding a backbone = one module here with an `Adapter` subclass, listed in `_ADAPTERS`, plus its tiny
config in the conformance tests.
"""

from __future__ import annotations

from fine_deploy.backbones.base import Adapter, Found, InputSpec, Matrix, Part, WeightType
from fine_deploy.backbones.dit import DiTAdapter
from fine_deploy.backbones.pixart import PixArtAdapter
from fine_deploy.backbones.sd3 import SD3Adapter
from fine_deploy.backbones.unet2d import UNet2DAdapter
from fine_deploy.backbones.unet2d_condition import UNet2DConditionAdapter
from fine_deploy.errors import FineDeployError

_ADAPTERS: dict[str, Adapter] = {
    a.class_name: a() for a in (DiTAdapter, UNet2DAdapter, UNet2DConditionAdapter, PixArtAdapter, SD3Adapter)
}
SUPPORTED_BACKBONES = tuple(_ADAPTERS)


def adapter_for(class_name: str) -> Adapter:
    """The adapter of a diffusers class name, or one line naming the supported ones."""
    try:
        return _ADAPTERS[class_name]
    except KeyError:
        raise FineDeployError(f"backbone {class_name} is not supported; supported: "
                              f"{', '.join(SUPPORTED_BACKBONES)}") from None


def adapter_of(model) -> Adapter:
    return adapter_for(type(model).__name__)


__all__ = ["SUPPORTED_BACKBONES", "Adapter", "Found", "InputSpec", "Matrix", "Part", "WeightType", "adapter_for",
           "adapter_of"]
