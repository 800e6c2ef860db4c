"""What the cost model needs to know about a layer: its matrix shape, how many rows it sees, its form.

A supernet layer is a matrix W (m1 x m2; a conv weight is out x in*k*k) applied to `tokens` rows
(a linear layer's tokens, or a conv's output positions). The exporter can run it in one of three
kernel forms (DESIGN section 4); their MACs and weight sizes are what the roofline and the memory
model start from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from fine_deploy.errors import FineDeployError

KINDS = ("linear", "conv")
FORMS = ("dense", "low_rank", "shared_basis")  # kernel forms of DESIGN §4; plan.json uses these names


@dataclass(frozen=True)
class LayerShape:
    """One factorisable layer at a given batch and resolution.

    kind: "linear" | "conv"; m1: out features/channels; m2: in features, or in*k*k for a conv;
    tokens: rows of a linear layer (batch included), output positions (batch*H*W) of a conv;
    k: conv kernel size; group: the FINE type it belongs to (layers of one group share bases);
    stride: conv stride; out_w: conv output width (0 means a square output of batch 1).
    """

    kind: str
    m1: int
    m2: int
    tokens: int
    k: int = 1
    group: str = ""
    stride: int = 1
    out_w: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FineDeployError(f"layer kind {self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        if min(self.m1, self.m2, self.tokens, self.k, self.stride) < 1:
            raise FineDeployError(f"layer shape {self} has a non-positive dimension; every size must be >= 1")
        if self.kind == "conv" and self.m2 % (self.k * self.k):
            raise FineDeployError(f"conv shape {self}: m2 must be in_channels*k*k, so divisible by k*k")

    @property
    def in_channels(self) -> int:
        return self.m2 // (self.k * self.k) if self.kind == "conv" else self.m2

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output (H, W) of a conv; tokens must be H*W (batch 1)."""
        if self.out_w:
            if self.tokens % self.out_w:
                raise FineDeployError(f"conv shape {self}: tokens must be a multiple of out_w")
            return self.tokens // self.out_w, self.out_w
        side = math.isqrt(self.tokens)
        if side * side != self.tokens:
            raise FineDeployError(f"conv shape {self}: tokens is not square; set out_w to the output width")
        return side, side

    def max_rank(self) -> int:
        return min(self.m1, self.m2)

    def key(self) -> str:
        """A stable text key: equal shapes measure the same, whatever their group."""
        base = f"{self.kind}:{self.m1}x{self.m2}:t{self.tokens}"
        if self.kind == "conv":
            base += f":k{self.k}:s{self.stride}:w{self.out_hw[1]}"
        return base

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerShape:
        return cls(**d)


def check_form(form: str, rank: int | None, shape: LayerShape) -> None:
    if form not in FORMS:
        raise FineDeployError(f"kernel form {form!r} is unknown; use one of {', '.join(FORMS)}")
    if form != "dense" and (rank is None or not 1 <= rank <= shape.max_rank()):
        raise FineDeployError(
            f"rank {rank} is out of range for {shape.key()}; use 1..{shape.max_rank()} for form {form}"
        )


def form_macs(shape: LayerShape, form: str, rank: int | None = None) -> int:
    """Multiply-accumulates of one layer in one kernel form (DESIGN section 4)."""
    check_form(form, rank, shape)
    n = shape.tokens
    if form == "dense":
        return n * shape.m1 * shape.m2
    assert rank is not None
    macs = n * rank * (shape.m1 + shape.m2)
    return macs + (n * rank if form == "shared_basis" else 0)


def form_weight_elems(shape: LayerShape, form: str, rank: int | None = None) -> tuple[int, int]:
    """(elements owned by this layer, elements of a basis shared by its whole group)."""
    check_form(form, rank, shape)
    if form == "dense":
        return shape.m1 * shape.m2, 0
    assert rank is not None
    if form == "low_rank":
        return rank * (shape.m1 + shape.m2), 0
    return rank, rank * (shape.m1 + shape.m2)


def activation_elems(shape: LayerShape, form: str, rank: int | None = None) -> tuple[int, int, int]:
    """(input, intermediate, output) activation elements of one layer."""
    check_form(form, rank, shape)
    if shape.kind == "conv":
        h, w = shape.out_hw
        x_in = shape.in_channels * (h * shape.stride) * (w * shape.stride)
    else:
        x_in = shape.tokens * shape.m2
    mid = 0 if form == "dense" else shape.tokens * (rank or 0)
    return x_in, mid, shape.tokens * shape.m1


# --- built-in shapes, until Supernet.layer_shapes() provides the real ones ------------------------


def tiny_dit_shapes(tokens: int = 16, hidden: int = 64, layers: int = 4) -> list[LayerShape]:
    """A tiny DiT (hidden 64, 4 heads, 4 layers, 16 tokens): one entry per layer of each type."""
    per_layer = [
        LayerShape("linear", 3 * hidden, hidden, tokens, group="qkv"),
        LayerShape("linear", hidden, hidden, tokens, group="attn_out"),
        LayerShape("linear", 4 * hidden, hidden, tokens, group="fc1"),
        LayerShape("linear", hidden, 4 * hidden, tokens, group="fc2"),
        # adaLN-zero maps the conditioning vector (one row per image) to 6 modulation vectors
        LayerShape("linear", 6 * hidden, hidden, 1, group="adaln"),
    ]
    return per_layer * layers


def tiny_unet_shapes() -> list[LayerShape]:
    """A tiny UNet: 3x3 convs with 32 channels at 16x16 and 64 channels at 8x8."""
    return [
        LayerShape("conv", 32, 32 * 9, 256, k=3, group="down0.conv"),
        LayerShape("conv", 32, 32 * 9, 256, k=3, group="down0.conv"),
        LayerShape("conv", 64, 32 * 9, 64, k=3, group="down1.conv0", stride=2),
        LayerShape("conv", 64, 64 * 9, 64, k=3, group="down1.conv1"),
        LayerShape("conv", 64, 64 * 9, 64, k=3, group="mid.conv"),
        LayerShape("conv", 64, 64 * 9, 64, k=3, group="mid.conv"),
        LayerShape("conv", 32, 64 * 9, 256, k=3, group="up0.conv0"),
        LayerShape("conv", 32, 32 * 9, 256, k=3, group="up0.conv1"),
    ]


def width_variants(fractions: tuple[float, ...] = (0.5, 0.75)) -> list[LayerShape]:
    """OFA width options of the tiny models' pipes: the MLP hidden width (fc1 out = fc2 in) and the
    inner width of a UNet resnet block (conv0 out = conv1 in); residual widths are never pruned."""
    out: list[LayerShape] = []
    for f in fractions:
        w = round(256 * f)
        out += [
            LayerShape("linear", w, 64, 16, group="fc1"),
            LayerShape("linear", 64, w, 16, group="fc2"),
        ]
        for c, t, grp in ((32, 256, "down0.conv"), (64, 64, "mid.conv")):
            inner = round(c * f)
            out += [
                LayerShape("conv", inner, c * 9, t, k=3, group=grp),
                LayerShape("conv", c, inner * 9, t, k=3, group=grp),
            ]
    return out


def default_shapes() -> list[LayerShape]:
    """The built-in supernet's layers (tiny DiT + tiny UNet) with their width options."""
    return tiny_dit_shapes() + tiny_unet_shapes() + width_variants()


def distinct(shapes: list[LayerShape]) -> list[LayerShape]:
    """One shape per key, in first-seen order (the group does not change what a layer costs)."""
    seen: dict[str, LayerShape] = {}
    for s in shapes:
        seen.setdefault(s.key(), s)
    return list(seen.values())


def default_ranks(shape: LayerShape, count: int = 4) -> list[int]:
    """Rank options spread over 1..min(m1, m2): quarters of the full rank by default."""
    full = shape.max_rank()
    return sorted({max(1, round(full * (i + 1) / count)) for i in range(count)})
