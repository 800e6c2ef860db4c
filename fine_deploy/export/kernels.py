"""The low-rank and shared-basis kernel forms as plain torch modules (DESIGN §4).

Each one is a drop-in for the nn.Linear / nn.Conv2d of a stock diffusers module and computes the same
function as the dense fold W = U_r·diag(σ)·V_rᵀ up to float rounding:

- low-rank: x·V_r, then ·(U_r·diag σ)ᵀ (conv: a k×k conv to r channels, then a 1×1 conv);
- shared-basis: x·V_r, a per-layer scale by σ, then ·U_rᵀ, with V_r and U_rᵀ nn.Parameters *shared*
  by every layer of a type, so that exporters store them once.

Weights are kept in the layout the graph consumes (V as [in, r], U as [r, out]) so that the ONNX
exporter emits MatMul straight on the parameter: a transposed use would be constant-folded into a
fresh initializer per layer and the sharing would be lost in the file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LowRankLinear(nn.Module):
    def __init__(self, down: nn.Parameter, up: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.down = down  # [in, r]; one Parameter shared by the parts of a fused (qkv) matrix
        self.up = nn.Parameter(up.detach().clone())  # [r, out] = (U_r[rows]·diag σ)ᵀ
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.in_features, self.out_features = down.shape[0], up.shape[1]

    @property
    def rank(self) -> int:
        return self.down.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x @ self.down) @ self.up
        return y if self.bias is None else y + self.bias


class SharedBasisLinear(nn.Module):
    def __init__(self, V: nn.Parameter, Ut: nn.Parameter, sigma: nn.Parameter, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.V = V  # [in, r], shared by the type
        self.Ut = Ut  # [r, out], shared by the type
        self.sigma = sigma  # [r], this layer's own
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.in_features, self.out_features = V.shape[0], Ut.shape[1]

    @property
    def rank(self) -> int:
        return self.V.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ((x @ self.V) * self.sigma) @ self.Ut
        return y if self.bias is None else y + self.bias


class _ConvGeometry(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("only groups=1, zero-padded convolutions have a low-rank form")
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.kernel_size = conv.kernel_size
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels


class LowRankConv2d(_ConvGeometry):
    def __init__(self, conv: nn.Conv2d, down: nn.Parameter, up: torch.Tensor) -> None:
        super().__init__(conv)
        self.down = down  # [r, in, kh, kw]: the k×k conv to r channels
        self.up = nn.Parameter(up.detach().clone())  # [out, r, 1, 1]
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(x, self.down, None, self.stride, self.padding, self.dilation)
        return F.conv2d(h, self.up, self.bias)


class SharedBasisConv2d(_ConvGeometry):
    def __init__(self, conv: nn.Conv2d, V: nn.Parameter, U: nn.Parameter, sigma: nn.Parameter) -> None:
        super().__init__(conv)
        self.V = V  # [r, in, kh, kw], shared by the type
        self.U = U  # [out, r, 1, 1], shared by the type
        self.sigma = sigma  # [1, r, 1, 1], this layer's own
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    @property
    def rank(self) -> int:
        return self.V.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(x, self.V, None, self.stride, self.padding, self.dilation) * self.sigma
        return F.conv2d(h, self.U, self.bias)


FACTORED = (LowRankLinear, SharedBasisLinear, LowRankConv2d, SharedBasisConv2d)
