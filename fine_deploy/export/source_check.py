"""Export's check against the model a supernet was converted from.

Parity against the supernet's own PyTorch subnet proves the file computes the subnet; it says nothing
about the user's model. For a converted supernet, export also runs the *source* diffusers model on the
same inputs: a plan whose subnet is the full model of a supernet with exact top options must match it
within the parity tolerance (1e-5 fp32) or nothing is written; any other plan gets its measured
distance from the source recorded (an approximation by choice, not an error).

Where the source is: `--against DIR` when given, else the folder `convert` recorded
(`provenance.source_path`) when it is still there with the same weights. A user who converts and exports
on one machine gets the check without asking; one who moved the model names it; a recorded folder that
is gone or changed is skipped with a note, since exporting elsewhere is normal, but a named one that is
not the converted model is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fine_deploy.errors import FineDeployError
from fine_deploy.export import parity as par
from fine_deploy.supernet.convert import source_weights_sha256
from fine_deploy.supernet.core import SubnetConfig, Supernet


def find_source(sn: Supernet, against: str | Path | None) -> tuple[Path | None, str | None]:
    """(source folder to compare with, or None; why not, when None)."""
    prov = sn.spec.provenance
    want = prov.get("source_weights_sha256")
    if against is not None:
        path = Path(against)
        if not (path / "config.json").is_file():
            raise FineDeployError(f"--against {path}: no config.json; pass the diffusers model folder the supernet "
                                  "was converted from")
        if want and source_weights_sha256(path) != want:
            raise FineDeployError(f"--against {path}: its weights are not the ones this supernet was converted from "
                                  f"(sha256 differs from {want[:12]}); pass the original folder")
        return path, None
    if prov.get("source") != "diffusers":
        return None, None  # a trained supernet has no source model
    recorded = prov.get("source_path")
    if not recorded:
        return None, "the supernet does not record its source folder; pass --against SOURCE_DIR to compare"
    path = Path(recorded)
    if not (path / "config.json").is_file():
        return None, f"source {path} is not there; pass --against SOURCE_DIR to compare with the source model"
    if want and source_weights_sha256(path) != want:
        return None, f"source {path} changed since convert; pass --against SOURCE_DIR to compare"
    return path, None


def is_full(sn: Supernet, config: SubnetConfig) -> bool:
    """Whether a subnet config is the supernet's full model (every knob at its top option)."""
    full_w = all(w == sn.full_width(k) for k, w in config.widths.items())
    full_d = config.depth is None or config.depth == sn.full_depth
    return full_w and full_d and all(config.ranks.get(t.name, t.max_rank) == t.max_rank for t in sn.types)


def check_against_source(sn: Supernet, config: SubnetConfig, source: Path, inputs: dict[str, torch.Tensor],
                         out: np.ndarray, meta: dict, *, precision: str = "fp32") -> dict[str, Any]:
    """Run the source model on the export's inputs and compare `out` (the artifact's output) with it."""
    from fine_deploy.export.io_names import run_torch
    from fine_deploy.supernet.convert import load_diffusers_model

    model = load_diffusers_model(source).float()
    y = run_torch(model, inputs, sn.adapter).numpy()
    exact = is_full(sn, config) and sn.exact_top
    bound = par.bound(precision) if exact else par.Bound(None, None)  # not exact: measured, never refused
    tol = bound.rel
    p = par.compare(out, y, runtime="export", reference=f"source model {source}", tolerance=tol, inputs=meta,
                    min_psnr_db=bound.min_psnr_db)
    d = np.asarray(out, np.float64) - y
    rel_l2 = float(np.sqrt((d**2).sum() / max(float((y.astype(np.float64) ** 2).sum()), 1e-300)))
    rec = {"path": str(source), "expected_exact": exact, "rel": p.rel, "rel_l2": rel_l2,
           "tolerance": tol, "min_psnr_db": bound.min_psnr_db, "psnr_db": p.to_json()["psnr_db"], "passed": p.passed}
    if exact and not p.passed:
        raise FineDeployError(
            f"the full plan should reproduce the source model {source} but differs by rel. error {p.rel:.2e} "
            f"(PSNR {p.psnr_db:.1f} dB; bound {bound}); nothing was written — re-convert the model or report a bug")
    return rec
