"""Fit FINE's shared factors to a stack of dense weights: a CP / PARAFAC decomposition.

The L layers of one weight type share U ∈ R^{m1×R} and V ∈ R^{m2×R}; layer l keeps σ_l ∈ R^R, so
W_l ≈ U · diag(σ_l) · Vᵀ. Stacked, that is the CP model of the [L, m1, m2] tensor with factors
(S, U, V), S[l] = σ_l. The fit is:

1. a start — for rank ≤ min(m1, m2) the leading singular vectors of the mode-1 / mode-2 unfoldings
   with σ by least squares; above that (or when it is cheap) the *block construction*: every layer's
   own SVD factors side by side, keeping the largest singular values across all layers. At
   rank L·min(m1, m2) the block construction reproduces W exactly;
2. alternating least squares (normal equations with Hadamard products of Gram matrices, one GEMM per
   MTTKRP), keeping the best iterate so the fit never ends worse than its start. For ranks well below
   the matrix sizes ALS runs on a Tucker-compressed core (CANDELINC: the optimum of the compressed
   problem is the optimum over factors restricted to the leading subspaces) and finishes with a few
   full-size iterations;
3. an ordering of the columns so that keeping the first r is the rank knob: greedily by how much each
   column lowers the remaining error, so every prefix is at least as good as the shorter one.

Everything runs in float64; the factors come back as float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

# Ridge added to every normal-equation Gram, relative to its mean diagonal: keeps the solves defined
# when columns are (nearly) collinear without visibly biasing well-posed ones.
_RIDGE = 1e-12
# Full-size ALS iterations after the compressed fit: they move U, V off the compressed subspaces.
_POLISH_ITERS = 1
# The block start at rank ≤ min(m1, m2) costs L batched SVDs of the (compressed) slices; it is tried
# only when that is small next to the rest of the fit (L·k1·k2·min(k1, k2) multiply-adds).
_CHEAP_BLOCK_START = 2e8
# ALS sweeps every start gets before the best one continues alone.
_RACE_ITERS = 3
# Power iterations of the randomized mode-2 range finder (sharpens it when the spectrum is flat).
_POWER_ITERS = 1
# Compressed subspace size: rank + max(rank // 2, _MIN_OVERSAMPLE) columns per mode.
_MIN_OVERSAMPLE = 8
# Above this many tensor entries the GEMMs with the whole stack (two per ALS sweep, one per error or σ
# solve: nearly all the cost at published sizes) run in float32, about 2.3x faster on a CPU; their rounding
# (~1e-5 relative) is far below what such fits reach, and the Gram solves and the ordering stay float64.
# Small tensors, which can fit near-exactly, keep float64 throughout.
_FP32_GEMM_ENTRIES = 1 << 24


@dataclass
class SharedFactors:
    """Shared bases and per-layer scales of one weight type: W_l ≈ U · diag(S[l]) · Vᵀ.

    Columns are ordered so that the first r columns are the best kept prefix the fit found: the
    relative error of ``reconstruct(r)`` does not increase with r.
    """

    U: torch.Tensor  # [m1, R], unit-norm columns
    V: torch.Tensor  # [m2, R], unit-norm columns
    S: torch.Tensor  # [L, R], per-layer σ; the scale of each rank-1 term lives here

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])

    def reconstruct(self, rank: int | None = None) -> torch.Tensor:
        """The [L, m1, m2] stack rebuilt from the first ``rank`` columns (all when None)."""
        r = self.rank if rank is None else rank
        if not 0 <= r <= self.rank:
            raise ValueError(f"rank {r} outside 0..{self.rank}: pass a prefix length of the fitted factors")
        U, V, S = self.U[:, :r], self.V[:, :r], self.S[:, :r]
        return torch.einsum("ir,lr,jr->lij", U, S, V)


def exact_rank(L: int, m1: int, m2: int) -> int:
    """Rank at which the block construction (all per-layer SVD factors side by side) is exact."""
    return L * min(m1, m2)


def fit_shared_factors(
    W: torch.Tensor,
    rank: int,
    *,
    iters: int = 25,
    tol: float = 1e-9,
    seed: int = 0,
    progress: bool = False,
) -> SharedFactors:
    """Fit shared U, V and per-layer σ to the [L, m1, m2] stack ``W`` at ``rank`` columns.

    ``rank`` is clamped to ``exact_rank``, where the fit is exact. ``iters`` bounds the ALS sweeps,
    which stop early once the relative error moves by less than ``tol``. ``seed`` fixes the random
    sketch used to compress large tensors; equal inputs and seed give equal factors.
    """
    X = _as_stack(W)
    _check_rank(rank)
    if iters < 0:
        raise ValueError(f"iters must be ≥ 0, got {iters}")
    L, m1, m2 = X.shape
    R = min(rank, exact_rank(L, m1, m2))
    # Work with the smaller matrix side first: its Gram is the cheap one.
    flip = m1 > m2
    if flip:
        X = X.transpose(1, 2).contiguous()
    bar = _Bar(progress, iters + _POLISH_ITERS + 3)
    with bar:
        U, V, S = _fit(X, R, iters=iters, tol=tol, seed=seed, bar=bar)
    if flip:
        U, V = V, U
    return SharedFactors(U.float().contiguous(), V.float().contiguous(), S.float().contiguous())


def prefix_errors(W: torch.Tensor, f: SharedFactors, ranks: Sequence[int]) -> list[float]:
    """Relative Frobenius error ‖W − f.reconstruct(r)‖ / ‖W‖ for each r in ``ranks``.

    Uses ⟨W, term⟩ and the Gram of the rank-1 terms, so W is read once whatever the number of ranks
    (float64; exact fits read as ≈1e-8 rather than 0).
    """
    X = _as_stack(W)
    L, m1, m2 = X.shape
    if tuple(f.U.shape[:1]) != (m1,) or tuple(f.V.shape[:1]) != (m2,) or tuple(f.S.shape[:1]) != (L,):
        raise ValueError(
            f"factors U {tuple(f.U.shape)}, V {tuple(f.V.shape)}, S {tuple(f.S.shape)} do not fit a stack "
            f"of shape {tuple(X.shape)}: pass the weights the factors were fitted to"
        )
    for r in ranks:
        if not 0 <= int(r) <= f.rank:
            raise ValueError(f"rank {r} outside 0..{f.rank}: ask for prefixes of the fitted factors")
    U, V, S = (t.detach().to(torch.float64) for t in (f.U, f.V, f.S))
    normsq = float((X * X).sum())
    M = _layer_inner(X, U, V)  # M[l, i] = u_iᵀ W_l v_i
    C = (U.T @ U) * (V.T @ V)
    fit = (S * M).cumsum(1).sum(0)  # Σ_{i<r} ⟨W, term_i⟩ for every r
    out = []
    for r in ranks:
        r = int(r)
        if r == 0:
            errsq = normsq
        else:
            Sr = S[:, :r]
            errsq = normsq - 2.0 * float(fit[r - 1]) + float((C[:r, :r] * (Sr.T @ Sr)).sum())
        out.append(math.sqrt(max(errsq, 0.0) / normsq) if normsq > 0 else 0.0)
    return out


def per_layer_svd(W: torch.Tensor, rank: int) -> torch.Tensor:
    """Baseline: every layer truncated to its own top-``rank`` SVD, nothing shared. Returns float32."""
    X = _as_stack(W)
    _check_rank(rank)
    r = min(rank, min(X.shape[1:]))
    P, sig, Qh = torch.linalg.svd(X, full_matrices=False)
    return ((P[:, :, :r] * sig[:, None, :r]) @ Qh[:, :r, :]).float()


def importance(f: SharedFactors) -> torch.Tensor:
    """Σ_l σ_l[i]² ‖u_i‖² ‖v_i‖² per column i: the energy each rank-1 term carries across layers."""
    U, V, S = (t.detach().to(torch.float64) for t in (f.U, f.V, f.S))
    return ((S * S).sum(0) * (U * U).sum(0) * (V * V).sum(0)).float()


# --- validation -------------------------------------------------------------------------------------


def _as_stack(W: torch.Tensor) -> torch.Tensor:
    if not isinstance(W, torch.Tensor):
        raise ValueError(f"weights must be a torch.Tensor of shape [L, m1, m2], got {type(W).__name__}")
    if W.ndim != 3:
        raise ValueError(
            f"weights must be a 3-D stack [L, m1, m2] (one matrix per layer), got shape {tuple(W.shape)}: "
            "stack the layers' matrices with torch.stack"
        )
    if W.is_complex() or W.dtype == torch.bool:
        raise ValueError(f"weights must be real numbers, got dtype {W.dtype}")
    if min(W.shape) < 1:
        raise ValueError(f"weights stack has an empty dimension: shape {tuple(W.shape)}")
    X = W.detach().to(device="cpu", dtype=torch.float64).contiguous()
    if not bool(torch.isfinite(X).all()):
        raise ValueError("weights contain NaN or Inf: fix or drop the offending layers before fitting")
    return X


def _check_rank(rank: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer ≥ 1, got {rank!r}")


# --- the fit ----------------------------------------------------------------------------------------


def _fit(X: torch.Tensor, R: int, *, iters: int, tol: float, seed: int, bar: _Bar):
    """Fit on X [L, a, b] with a ≤ b; returns float64 (U, V, S) ordered for the rank knob."""
    L, a, b = X.shape
    normsq = float((X * X).sum())
    if normsq == 0.0:
        return _zero_factors(a, b, L, R)

    if R == exact_rank(L, a, b):
        # The block construction is exact here; ALS could only add rounding.
        U, V, S = _block_start(X, R)
        return _finalize(X, U, V, S, normsq)[:3]

    P1, P2, G = _compression(X, R, seed) if R <= a else (None, None, X)
    bar.advance()
    offset = max(normsq - float((G * G).sum()), 0.0)  # energy outside the kept subspaces

    starts = []
    k1, k2 = G.shape[1:]
    if R <= min(k1, k2):
        U0 = _top_eigvecs(_gram_rows(G), R)
        V0 = _top_eigvecs(_gram_rows(G.transpose(1, 2)), R)
        starts.append(_unfolding_start(G, U0, V0))
        if L >= 2 and R >= 2:
            starts.append(_gevd_start(G, U0, V0))
    if R > min(k1, k2) or L * k1 * k2 * min(k1, k2) <= _CHEAP_BLOCK_START:
        starts.append(_block_start(G, R))
    scored = [(offset + _errsq(G, *s), s) for s in starts]
    bar.advance()

    # A lower starting error does not predict the better ALS result (the block start, say, often
    # stalls where the unfolding start converges), so every start gets a short race and the leader
    # gets the rest of the sweeps.
    race = min(_RACE_ITERS, iters) if len(scored) > 1 else 0
    raced = [_als(G, *s, e, offset=offset, iters=race, tol=tol, normsq=normsq, bar=_Bar(False, 0)) for e, s in scored]
    U, V, S, err = min(raced, key=lambda r: r[3])
    bar.advance()
    U, V, S, err = _als(G, U, V, S, err, offset=offset, iters=iters - race, tol=tol, normsq=normsq, bar=bar)
    if P1 is not None:
        U = P1 @ U
    if P2 is not None:
        V = P2 @ V
    if (P1 is not None or P2 is not None) and iters > 0:
        U, V, S, err = _als(X, U, V, S, err, offset=0.0, iters=_POLISH_ITERS, tol=tol, normsq=normsq, bar=bar)

    U, V, S, final_err, clipped = _finalize(X, U, V, S, normsq)
    if clipped:
        # The ordering had to change some σ to keep prefixes monotone, which costs the best fit when
        # its terms cancel one another; a start or a raced iterate may now come out ahead.
        for Uc, Vc, Sc in [s for _, s in scored] + [r[:3] for r in raced if race > 0]:
            Uc = Uc if P1 is None else P1 @ Uc
            Vc = Vc if P2 is None else P2 @ Vc
            alt = _finalize(X, Uc, Vc, Sc, normsq)
            if alt[3] < final_err:
                U, V, S, final_err = alt[:4]
    bar.advance()
    return U, V, S


def _zero_factors(a: int, b: int, L: int, R: int):
    U = torch.zeros(a, R, dtype=torch.float64)
    V = torch.zeros(b, R, dtype=torch.float64)
    U[torch.arange(R) % a, torch.arange(R)] = 1.0
    V[torch.arange(R) % b, torch.arange(R)] = 1.0
    return U, V, torch.zeros(L, R, dtype=torch.float64)


def _compression(X: torch.Tensor, R: int, seed: int):
    """Leading mode-1 / mode-2 subspaces and the core of X in them: (P1, P2, P1ᵀ·X_l·P2 stacked).

    A basis is None where it would not shrink its side (the core then keeps that side as it is).
    """
    L, a, b = X.shape
    k = R + max(R // 2, _MIN_OVERSAMPLE)
    # Choosing the subspaces runs in float32 (twice the GEMM rate): it only decides where the fit
    # works; the core and everything after are computed in float64.
    P1 = _top_eigvecs(_gram_rows(X, torch.float32), k) if k < a else None
    Y = X if P1 is None else P1.T @ X  # [L, k1, b]
    if k >= b:
        return P1, None, Y.contiguous()
    Yflat = Y.reshape(-1, b)
    # Mode-2 subspace of Y by a seeded Gaussian sketch with power iterations: its b×b Gram is the
    # dominant cost otherwise (b is the larger side).
    gen = torch.Generator().manual_seed(seed)
    Y32 = Yflat.float()
    omega = torch.randn(Yflat.shape[0], k, generator=gen, dtype=torch.float32)
    Q = torch.linalg.qr(Y32.T @ omega).Q
    for _ in range(_POWER_ITERS):
        Q = torch.linalg.qr(Y32.T @ (Y32 @ Q)).Q
    del Y32
    Q = torch.linalg.qr(Q.double()).Q
    # Rotate the sketch onto Y's singular directions so the basis is ordered; Y·P2 follows for free.
    YQ = Yflat @ Q
    Z = torch.linalg.svd(YQ, full_matrices=False).Vh.T
    return P1, Q @ Z, (YQ @ Z).reshape(L, -1, Z.shape[1])


def _gram_rows(X: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Σ_l X_l X_lᵀ, the Gram of the mode-1 unfolding, with the products in ``dtype``, summed in float64."""
    H = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64)
    for Xl in X:
        Xl = Xl.to(dtype)
        H += (Xl @ Xl.T).to(torch.float64)
    return H


def _top_eigvecs(H: torch.Tensor, k: int) -> torch.Tensor:
    _, vecs = torch.linalg.eigh(H)
    return vecs[:, -k:].flip(1).contiguous()


def _unfolding_start(X: torch.Tensor, U: torch.Tensor, V: torch.Tensor):
    """Leading singular vectors U, V of both unfoldings, σ by least squares."""
    S = _solve(_layer_inner(X, U, V), (U.T @ U) * (V.T @ V))
    return U, V, S


def _gevd_start(X: torch.Tensor, U0: torch.Tensor, V0: torch.Tensor):
    """Generalised-eigenvalue start: exact when X truly is a rank-R CP tensor with R ≤ min(m1, m2).

    In the leading R-dim subspaces U0, V0 of the unfoldings every slice is A·diag(s_l)·Bᵀ; two
    combinations T1, T2 of slices give T1·T2⁻¹ = A·D·A⁻¹, so its eigenvectors are A even when R
    exceeds L (where ALS from the unfolding start crawls). Complex pairs, which noise can create,
    are split into real and imaginary parts; ALS sorts out the rest.
    """
    core = U0.T @ X @ V0  # [L, R, R]
    L, R = core.shape[:2]
    # The two layer-mixing weights that keep the most of the core's energy.
    w = torch.linalg.svd(core.reshape(L, -1), full_matrices=False).U[:, :2]
    T1 = torch.einsum("l,lij->ij", w[:, 0], core)
    T2 = torch.einsum("l,lij->ij", w[:, 1], core)
    vals, vecs = torch.linalg.eig(torch.linalg.lstsq(T2.T, T1.T).solution.T)  # T1·T2⁻¹
    A = torch.empty(R, R, dtype=X.dtype)
    j = 0
    while j < R:
        if abs(float(vals[j].imag)) > 0 and j + 1 < R:
            A[:, j], A[:, j + 1] = vecs[:, j].real, vecs[:, j].imag
            j += 2
        else:
            A[:, j] = vecs[:, j].real
            j += 1
    B = torch.linalg.lstsq(A, T1 + T2).solution.T  # rows of A⁻¹·T are scaled rows of Bᵀ
    U, V = U0 @ A, V0 @ B
    U, _ = _normalize(U, torch.ones(1, R, dtype=X.dtype))
    V, _ = _normalize(V, torch.ones(1, R, dtype=X.dtype))
    S = _solve(_layer_inner(X, U, V), (U.T @ U) * (V.T @ V))
    return U, V, S


def _block_start(X: torch.Tensor, R: int):
    """Per-layer SVD factors side by side, keeping the R largest singular values over all layers."""
    L, a, b = X.shape
    P, sig, Qh = torch.linalg.svd(X, full_matrices=False)  # [L, a, k], [L, k], [L, k, b]
    k = sig.shape[1]
    order = torch.sort(sig.reshape(-1), descending=True, stable=True).indices[:R]
    layer, col = order // k, order % k
    U = P[layer, :, col].T.contiguous()
    V = Qh[layer, col, :].T.contiguous()
    S = torch.zeros(L, R, dtype=X.dtype)
    S[layer, torch.arange(R)] = sig[layer, col]
    return U, V, S


def _layer_inner(X: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """M[l, i] = u_iᵀ X_l v_i, with one GEMM over all layers."""
    L, a, b = X.shape
    if X.numel() > _FP32_GEMM_ENTRIES:  # see _FP32_GEMM_ENTRIES
        T = (X.reshape(L * a, b).float() @ V.float()).double().reshape(L, a, -1)
    else:
        T = (X.reshape(L * a, b) @ V).reshape(L, a, -1)
    return torch.einsum("lar,ar->lr", T, U)


def _errsq(X: torch.Tensor, U: torch.Tensor, V: torch.Tensor, S: torch.Tensor) -> float:
    M = _layer_inner(X, U, V)
    return _errsq_from(float((X * X).sum()), M, S, (U.T @ U) * (V.T @ V))


def _errsq_from(normsq: float, M: torch.Tensor, S: torch.Tensor, C: torch.Tensor) -> float:
    """‖X − Σ terms‖² = ‖X‖² − 2⟨X, model⟩ + ‖model‖², from M = ⟨X_l, u_i v_iᵀ⟩ and C = UᵀU ∘ VᵀV."""
    return max(normsq - 2.0 * float((S * M).sum()) + float((C * (S.T @ S)).sum()), 0.0)


def _solve(rhs: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """rhs · (gram + ridge)⁻¹ for a symmetric PSD gram (rows of rhs are independent problems)."""
    R = gram.shape[0]
    scale = float(gram.diagonal().mean()) if R else 0.0
    ridge = _RIDGE * scale if scale > 0 else _RIDGE
    A = gram + ridge * torch.eye(R, dtype=gram.dtype)
    chol, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(rhs.T, chol).T
    return torch.linalg.lstsq(A, rhs.T).solution.T


def _normalize(F: torch.Tensor, S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm columns of F; the norms move into S so the model is unchanged."""
    n = F.norm(dim=0)
    safe = torch.where(n > 0, n, torch.ones_like(n))
    return F / safe, S * n


def _als(X, U, V, S, err, *, offset, iters, tol, normsq, bar):
    """ALS sweeps on X [L, a, b] from (U, V, S) whose error² is ``err``; returns the best iterate.

    Each sweep is two GEMMs with X: Xᵀ-side for V, then T = X V, reused by the U and σ updates.
    """
    L, a, b = X.shape
    Xflat = X.reshape(L * a, b)
    if iters > 0 and X.numel() > _FP32_GEMM_ENTRIES:
        Xflat = Xflat.float()
    gemm = Xflat.dtype
    xnorm = normsq - offset
    best = (U, V, S, err)
    prev = math.sqrt(err / normsq)
    for _ in range(iters):
        B = (U[None] * S[:, None, :]).reshape(L * a, -1)
        V = _solve((Xflat.T @ B.to(gemm)).double(), (U.T @ U) * (S.T @ S))
        V, S = _normalize(V, S)
        T = (Xflat @ V.to(gemm)).double().reshape(L, a, -1)
        U = _solve(torch.einsum("lar,lr->ar", T, S), (V.T @ V) * (S.T @ S))
        U, S = _normalize(U, S)
        C = (U.T @ U) * (V.T @ V)
        M = torch.einsum("lar,ar->lr", T, U)
        S = _solve(M, C)
        err = offset + _errsq_from(xnorm, M, S, C)
        bar.advance()
        if err < best[3]:
            best = (U, V, S, err)
        rel = math.sqrt(err / normsq)
        if abs(prev - rel) < tol:
            break
        prev = rel
    return best


# --- ordering for the rank knob ---------------------------------------------------------------------


def _finalize(X: torch.Tensor, U, V, S, normsq: float):
    """Unit columns, fixed signs, float32-representable bases, columns ordered for the rank knob.

    Returns (U, V, S, error², number of columns whose σ was changed).
    """
    U, S = _normalize(U, S)
    V, S = _normalize(V, S)
    U, S = _fix_signs(U, S)
    V, S = _fix_signs(V, S)
    # Order with the bases exactly as they will be stored, so the guarantee survives the cast.
    U = U.float().double()
    V = V.float().double()
    M = _layer_inner(X, U, V)
    C = (U.T @ U) * (V.T @ V)
    perm, S, clipped = _order_columns(M, C, S)
    U, V, S, M, C = U[:, perm], V[:, perm], S[:, perm], M[:, perm], C[perm][:, perm]
    return U, V, S, _errsq_from(normsq, M, S, C), clipped


def _fix_signs(F: torch.Tensor, S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make each column's largest-magnitude entry positive (flipping σ too): a canonical sign."""
    idx = F.abs().argmax(dim=0)
    sign = torch.sign(F[idx, torch.arange(F.shape[1])])
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return F * sign, S * sign


def _order_columns(M: torch.Tensor, C: torch.Tensor, S: torch.Tensor):
    """Greedy order: next is the column that lowers the remaining error most.

    Adding term i to a prefix with residual E changes the error² by −Σ_l (2 s_li a_li − s_li² c_ii),
    a_li = ⟨E_l, u_i v_iᵀ⟩. When no remaining column lowers it (ALS can leave terms that only help
    together, e.g. two large terms that nearly cancel), the chosen column's σ is reset to its
    least-squares value a_li / c_ii in the layers where it hurts: one σ per layer is stored, so
    prefixes cannot be refitted separately and must be monotone as stored. Returns (permutation,
    possibly changed S, number of changed columns).
    """
    S = S.clone()
    A = M.clone()  # ⟨E_l, u_i v_iᵀ⟩ for the current prefix residual
    diag = C.diagonal()
    R = S.shape[1]
    taken = torch.zeros(R, dtype=torch.bool)
    perm: list[int] = []
    clipped = 0
    for _ in range(R):
        gain = (2.0 * S * A - S * S * diag).sum(0)
        gain[taken] = -math.inf
        i = int(torch.argmax(gain))
        if gain[i] < 0:
            # Layers where this term hurts get their least-squares σ against the prefix residual.
            col = S[:, i]
            hurts = 2.0 * col * A[:, i] - col * col * diag[i] < 0
            ls = A[:, i] / diag[i] if diag[i] > 0 else torch.zeros_like(col)
            S[:, i] = torch.where(hurts, ls, col)
            clipped += 1
        perm.append(i)
        taken[i] = True
        A -= S[:, i : i + 1] * C[i][None, :]
    return torch.tensor(perm, dtype=torch.long), S, clipped


# --- progress ---------------------------------------------------------------------------------------


class _Bar:
    """A rich progress bar over fit phases and ALS sweeps; a no-op unless asked for."""

    def __init__(self, enabled: bool, total: int) -> None:
        self._enabled = enabled
        self._total = total
        self._progress = None
        self._task = None
        self._ctx = nullcontext()

    def __enter__(self) -> _Bar:
        if self._enabled:
            from rich.progress import Progress

            self._progress = Progress(transient=True)
            self._ctx = self._progress
            self._ctx.__enter__()
            self._task = self._progress.add_task("fitting shared factors", total=self._total)
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)
