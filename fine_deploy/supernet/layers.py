"""Factorised layers: W_l = U_t[:, :r] · diag(σ_l[:r]) · V_t[:, :r]ᵀ with U_t, V_t shared by a type.

The bases live in one `SharedBasis` module per type and every layer of the type holds a reference
to it, so autograd accumulates the gradients of all layers into the one pair of learngenes and
`parameters()` yields each basis once. The rank knob is the basis' `rank`: keeping the first r columns
is meaningful because the fit orders columns by importance across layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SharedBasis(nn.Module):
    def __init__(self, U: torch.Tensor, V: torch.Tensor) -> None:
        super().__init__()
        if U.shape[1] != V.shape[1]:
            raise ValueError(f"U and V ranks differ: {U.shape[1]} vs {V.shape[1]}")
        self.U = nn.Parameter(U.detach().clone())
        self.V = nn.Parameter(V.detach().clone())
        self.rank = U.shape[1]

    @property
    def max_rank(self) -> int:
        return self.U.shape[1]

    def set_rank(self, r: int) -> None:
        if not 1 <= r <= self.max_rank:
            raise ValueError(f"rank {r} outside 1..{self.max_rank}")
        self.rank = r

    def matrix(self, sigma: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        r = self.rank
        U = self.U[:, :r] if rows is None else self.U[rows, :r]
        return (U * sigma[:r]) @ self.V[:, :r].T


class FactorizedLinear(nn.Module):
    """Drop-in for nn.Linear; `rows` selects this module's block of a stacked (e.g. fused qkv) matrix."""

    def __init__(
        self,
        basis: SharedBasis,
        sigma: nn.Parameter,
        bias: torch.Tensor | None,
        rows: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.basis = basis
        self.sigma = sigma
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.rows = rows

    @property
    def weight(self) -> torch.Tensor:
        rows = None if self.rows is None else slice(*self.rows)
        return self.basis.matrix(self.sigma, rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class FactorizedConv2d(nn.Module):
    """Drop-in for nn.Conv2d; the weight matrix is (out, in·kh·kw) reshaped to the conv kernel."""

    def __init__(
        self,
        basis: SharedBasis,
        sigma: nn.Parameter,
        conv: nn.Conv2d,
        rows: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.basis = basis
        self.sigma = sigma
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.rows = rows
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.padding_mode = conv.padding_mode
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("only groups=1, zero-padded convolutions can be factorised")

    @property
    def weight(self) -> torch.Tensor:
        rows = None if self.rows is None else slice(*self.rows)
        m = self.basis.matrix(self.sigma, rows)
        return m.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


def set_sigma_only(model: nn.Module, sigma_only: bool = True) -> None:
    """FINE light retraining: freeze the shared bases (and everything dense), train only σ."""
    for name, p in model.named_parameters():
        is_sigma = name.endswith("sigma") or ".sigmas." in name or name.startswith("sigmas.")
        p.requires_grad_(is_sigma or not sigma_only)
