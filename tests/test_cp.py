"""Shared-factor (CP) fit: exactness, the rank knob's monotone prefixes, recovery, determinism, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from fine_deploy.supernet.cp import (
    SharedFactors,
    exact_rank,
    fit_shared_factors,
    importance,
    per_layer_svd,
    prefix_errors,
)

# Prefix errors are computed from float32 factors: equal up to float32 rounding counts as non-increasing.
MONOTONE_SLACK = 1e-6


def rel_err(W: torch.Tensor, X: torch.Tensor) -> float:
    W, X = W.double(), X.double()
    return float((W - X).norm() / W.norm())


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def shared_tensor(L: int, m1: int, m2: int, R: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, float]:
    """A stack that truly is U·diag(σ_l)·Vᵀ plus Gaussian noise; returns it and the noise's relative size."""
    g = gen(seed)
    U = torch.randn(m1, R, generator=g, dtype=torch.float64)
    V = torch.randn(m2, R, generator=g, dtype=torch.float64)
    S = torch.randn(L, R, generator=g, dtype=torch.float64)
    X = torch.einsum("ir,lr,jr->lij", U, S, V)
    N = torch.randn(X.shape, generator=g, dtype=torch.float64)
    N *= noise * X.norm() / N.norm()
    W = X + N
    return W.float(), float(N.norm() / W.norm())


def structured_cases() -> dict[str, tuple[torch.Tensor, int]]:
    g = gen(7)
    e0, e1 = torch.eye(3)[0], torch.eye(3)[1]

    def outer(a, b, c):
        return torch.einsum("l,i,j->lij", a, b, c)

    per_layer = torch.stack([torch.randn(9, 2, generator=g) @ torch.randn(2, 11, generator=g) for _ in range(5)])
    repeated = torch.randn(1, 8, 10, generator=g).repeat(4, 1, 1)
    with_zero_layer = torch.randn(4, 7, 9, generator=g)
    with_zero_layer[2] = 0
    return {
        "gaussian": (torch.randn(5, 12, 16, generator=g), 10),
        "gaussian-wide-rank": (torch.randn(3, 6, 9, generator=g), 14),
        "heavy-tailed": (torch.randn(6, 10, 8, generator=g) ** 3, 9),
        "shared+noise": (shared_tensor(6, 20, 24, 5, 0.05, seed=3)[0], 8),
        "per-layer-low-rank": (per_layer, 7),
        "repeated-layers": (repeated, 6),
        "zero-layer": (with_zero_layer, 12),
        # W-tensor: rank 3 with no best rank-2 approximation, the classic case where ALS terms cancel.
        "degenerate": (outer(e0, e0, e1) + outer(e0, e1, e0) + outer(e1, e0, e0), 2),
        "compressed": (torch.randn(4, 40, 56, generator=g), 6),
    }


@pytest.mark.parametrize("shape", [(3, 4, 6), (5, 6, 4), (1, 5, 7), (4, 3, 3)])
def test_exact_at_exact_rank_and_rank_is_clamped(shape):
    W = torch.randn(*shape, generator=gen(1))
    er = exact_rank(*shape)
    assert er == shape[0] * min(shape[1:])
    f = fit_shared_factors(W, er + 5)
    assert f.rank == er
    assert f.U.shape == (shape[1], er) and f.V.shape == (shape[2], er) and f.S.shape == (shape[0], er)
    assert f.U.dtype == f.V.dtype == f.S.dtype == torch.float32
    assert rel_err(W, f.reconstruct()) <= 1e-5
    assert prefix_errors(W, f, [er])[0] <= 1e-5


@pytest.mark.parametrize("name", list(structured_cases()))
def test_prefix_errors_never_increase(name):
    W, R = structured_cases()[name]
    f = fit_shared_factors(W, R)
    errs = prefix_errors(W, f, range(f.rank + 1))
    assert errs[0] == pytest.approx(1.0)
    for r in range(f.rank):
        assert errs[r + 1] <= errs[r] + MONOTONE_SLACK, (name, r, errs)
    # prefix_errors (Gram identities) agrees with rebuilding the weights
    for r in {1, f.rank // 2, f.rank}:
        assert errs[r] == pytest.approx(rel_err(W, f.reconstruct(r)), abs=1e-5)


@pytest.mark.parametrize("name", ["gaussian", "heavy-tailed", "per-layer-low-rank"])
def test_first_column_is_the_best_single_term(name):
    W, R = structured_cases()[name]
    f = fit_shared_factors(W, R)
    first = prefix_errors(W, f, [1])[0]
    for i in range(f.rank):
        single = SharedFactors(f.U[:, i : i + 1], f.V[:, i : i + 1], f.S[:, i : i + 1])
        assert first <= prefix_errors(W, single, [1])[0] + MONOTONE_SLACK


def test_degenerate_terms_are_kept_monotone():
    """Two big terms that cancel: stored as they are, the first alone would make the error larger."""
    from fine_deploy.supernet.cp import _order_columns

    C = torch.ones(2, 2, dtype=torch.float64)  # both terms are the same unit rank-1 matrix
    M = torch.ones(1, 2, dtype=torch.float64)  # and W is exactly that matrix
    S = torch.tensor([[10.0, -9.0]], dtype=torch.float64)
    perm, S2, changed = _order_columns(M, C, S)
    assert changed >= 1
    S2 = S2[:, perm]
    errsq = [1.0, (1.0 - S2[0, 0]) ** 2, (1.0 - S2[0].sum()) ** 2]
    assert errsq[1] <= errsq[0] + 1e-12 and errsq[2] <= errsq[1] + 1e-12
    assert errsq[2] <= 1e-12  # the least-squares σ recovers the exact fit


@pytest.mark.parametrize(
    ("L", "m1", "m2", "R"),
    [(6, 40, 40, 8), (4, 30, 50, 12), (12, 16, 48, 10), (6, 64, 96, 5)],  # R > L in two; compressed in the last
)
def test_recovers_shared_structure_and_beats_per_layer_svd(L, m1, m2, R):
    W, noise = shared_tensor(L, m1, m2, R, 0.01, seed=L + R)
    f = fit_shared_factors(W, R)
    err = prefix_errors(W, f, [R])[0]
    # The fit explains all but the noise (a rank-R model absorbs a little of it, hence the lower bound).
    assert 0.8 * noise <= err <= 1.02 * noise
    assert rel_err(W, f.reconstruct()) == pytest.approx(err, abs=1e-5)
    # Per-layer SVD with at least the shared fit's parameter count (rounded up) is far worse.
    shared_params = R * (m1 + m2) + L * R
    r = math.ceil(shared_params / (L * (m1 + m2)))
    assert L * r * (m1 + m2) >= shared_params
    assert rel_err(W, per_layer_svd(W, r)) > 10 * err


@pytest.mark.parametrize("shape_rank", [((4, 40, 56), 6), ((3, 6, 9), 14), ((5, 12, 16), 10)])
def test_deterministic_for_a_seed(shape_rank):
    shape, R = shape_rank
    W = torch.randn(*shape, generator=gen(11))
    a = fit_shared_factors(W, R, seed=3)
    b = fit_shared_factors(W.clone(), R, seed=3)
    for x, y in ((a.U, b.U), (a.V, b.V), (a.S, b.S)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", ["gaussian", "shared+noise", "compressed", "degenerate"])
def test_als_never_ends_worse_than_its_start(name):
    W, R = structured_cases()[name]
    start = prefix_errors(W, (f0 := fit_shared_factors(W, R, iters=0)), [f0.rank])[0]
    fitted = prefix_errors(W, (f := fit_shared_factors(W, R, iters=25)), [f.rank])[0]
    assert fitted <= start + 1e-7


def test_factors_are_unit_norm_and_importance_is_the_term_energy():
    W, R = structured_cases()["gaussian"]
    f = fit_shared_factors(W, R)
    assert torch.allclose(f.U.norm(dim=0), torch.ones(R), atol=1e-5)
    assert torch.allclose(f.V.norm(dim=0), torch.ones(R), atol=1e-5)
    imp = importance(f)
    assert imp.shape == (R,)
    terms = [SharedFactors(f.U[:, i : i + 1], f.V[:, i : i + 1], f.S[:, i : i + 1]).reconstruct() for i in range(R)]
    energy = torch.tensor([float((t.double() ** 2).sum()) for t in terms], dtype=torch.float64)
    assert torch.allclose(imp.double(), energy, rtol=1e-4)


def test_per_layer_svd_is_eckart_young():
    W = torch.randn(4, 9, 13, generator=gen(5))
    X = per_layer_svd(W, 3)
    assert X.shape == W.shape and X.dtype == torch.float32
    sig = torch.linalg.svdvals(W.double())
    expected = math.sqrt(float((sig[:, 3:] ** 2).sum()) / float((sig**2).sum()))
    assert rel_err(W, X) == pytest.approx(expected, rel=1e-5)
    assert rel_err(W, per_layer_svd(W, 100)) <= 1e-6  # rank beyond min(m1, m2) is the whole layer


def test_zero_weights_give_zero_sigma():
    f = fit_shared_factors(torch.zeros(3, 4, 5), 2)
    assert f.rank == 2 and float(f.S.abs().max()) == 0.0
    assert prefix_errors(torch.zeros(3, 4, 5), f, [0, 2]) == [0.0, 0.0]


@pytest.mark.parametrize(
    ("W", "rank", "match"),
    [
        (torch.zeros(4, 5), 2, r"3-D stack \[L, m1, m2\].*shape \(4, 5\)"),
        (torch.zeros(2, 3, 4, 5), 2, r"3-D stack .*shape \(2, 3, 4, 5\)"),
        (torch.ones(2, 3, 4), 0, r"rank must be an integer ≥ 1, got 0"),
        (torch.ones(2, 3, 4), -3, r"rank must be an integer ≥ 1, got -3"),
        (torch.ones(2, 3, 4), 2.5, r"rank must be an integer ≥ 1, got 2.5"),
        (torch.full((2, 3, 4), float("nan")), 2, r"NaN or Inf"),
        (torch.zeros(0, 3, 4), 2, r"empty dimension"),
    ],
)
def test_bad_input_raises_clear_value_error(W, rank, match):
    with pytest.raises(ValueError, match=match):
        fit_shared_factors(W, rank)


def test_bad_input_to_helpers():
    W = torch.randn(3, 4, 5, generator=gen(2))
    f = fit_shared_factors(W, 4)
    with pytest.raises(ValueError, match=r"do not fit a stack of shape \(3, 5, 4\)"):
        prefix_errors(W.transpose(1, 2), f, [1])
    with pytest.raises(ValueError, match=r"rank 9 outside 0\.\.4"):
        prefix_errors(W, f, [9])
    with pytest.raises(ValueError, match=r"rank 5 outside 0\.\.4"):
        f.reconstruct(5)
    with pytest.raises(ValueError, match=r"rank must be an integer ≥ 1"):
        per_layer_svd(W, 0)
    with pytest.raises(ValueError, match=r"iters must be ≥ 0"):
        fit_shared_factors(W, 2, iters=-1)
