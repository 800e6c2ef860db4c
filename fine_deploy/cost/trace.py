"""The shape every factorised layer of a subnet sees, traced by a real forward pass.

Rows seen by each layer come from hooks on the built module, so token counts follow the backbone's own
down/up-sampling (and text length, for cross-attention k/v) instead of a hand-written shape walk.
"""

from __future__ import annotations

import torch

from fine_deploy.cost.shapes import LayerShape
from fine_deploy.supernet.core import SubnetConfig, Supernet


@torch.no_grad()
def layer_shapes(sn: Supernet, config: SubnetConfig | dict | None = None, batch: int = 1,
                 resolution: int | None = None) -> list[tuple[str, LayerShape]]:
    """(matrix name, LayerShape) of every factorised matrix of a subnet, traced at batch × resolution."""
    config = sn.validate(config if isinstance(config, SubnetConfig) else SubnetConfig.from_json(config))
    layout = sn.layout(config.depth)
    # shapes need no weights: uninitialised memory instead of folding every factor (a minute at 0.7B)
    model = sn.adapter.build(sn.spec.config, layout.depth, empty=True).to_empty(device="cpu").eval()
    if any(w != sn.full_width(k) for k, w in config.widths.items()):
        model = sn.adapter.slice_widths(model, config.widths, sn.spec.widths["orders"])
    seen: dict[str, tuple] = {}
    hooks = []
    for ms in layout.matrices:
        def hook(mod, args, out, name=ms.name):
            seen[name] = tuple(out.shape)

        hooks.append(model.get_submodule(ms.parts[0][0]).register_forward_hook(hook))
    try:
        x = sn.adapter.example_inputs(sn.spec.config, batch, resolution, tokens=sn.text_tokens)
        model(**sn.adapter.forward_kwargs_of(x))
    finally:
        for h in hooks:
            h.remove()
    kinds = {t.name: t for t in sn.types}
    out = []
    for ms in layout.matrices:
        if ms.name not in seen:
            continue
        t, shape = kinds[ms.type], seen[ms.name]
        # rows of the built modules, not of the spec: a width-sliced subnet has fewer
        rows = sum(model.get_submodule(p[0]).weight.shape[0] for p in ms.parts)
        mod = model.get_submodule(ms.parts[0][0])
        if t.kind == "conv":
            n, c, h, w = shape
            k = t.kernel_size[0]
            out.append((ms.name, LayerShape("conv", rows, mod.in_channels * k * k, n * h * w, k=k,
                                            group=t.name, stride=mod.stride[0], out_w=w)))
        else:
            tokens = int(torch.tensor(shape[:-1]).prod()) if len(shape) > 1 else 1
            out.append((ms.name, LayerShape("linear", rows, mod.in_features, tokens, group=t.name)))
    return out
