"""convert: a dense diffusers model folder -> a supernet (shared-factor fit + channel orders)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from fine_deploy.backbones import adapter_for, adapter_of
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import sha256_file
from fine_deploy.supernet.core import Supernet, basis_names, source_name
from fine_deploy.supernet.spec import SupernetSpec, TypeSpec
from fine_deploy.supernet.types import WeightType, dense_parameters, find_types

# Cap on the default rank of a type: exact_rank (L·min(m1, m2)) reproduces the dense weights, but its
# bases outgrow the dense weights themselves for large L and ALS above min(m1, m2) gets no compressed
# core (about a minute per sweep for a DiT-XL fc1), so big types stop at min(m1, m2).
DEFAULT_RANK_CAP_FACTOR = 1
# Types with at most this many stacked entries (L·m1·m2) are fitted at their exact rank; larger ones are capped
# (and keep their source weights as the exact top option, see model_to_supernet).
EXACT_FIT_ENTRIES = 1 << 22


def rank_ladder(max_rank: int, steps: int = 8) -> list[int]:
    """Rank options: evenly spaced fractions of max_rank, rounded to multiples of 8 when large enough."""
    opts = set()
    for i in range(1, steps + 1):
        r = max_rank * i / steps
        q = 8 if max_rank >= 64 else 1
        opts.add(max(1, min(max_rank, int(round(r / q)) * q)))
    opts.add(max_rank)
    return sorted(opts)


def stacked_weights(model: nn.Module, t: WeightType) -> torch.Tensor:
    """[L, m1, m2] stack of the type's matrices (conv kernels flattened to out x in*kh*kw)."""
    mats = []
    for m in t.matrices:
        rows = [model.get_submodule(p.module).weight.detach().reshape(p.rows[1] - p.rows[0], -1) for p in m.parts]
        mats.append(torch.cat(rows, 0))
    return torch.stack(mats).float()


def load_diffusers_model(path: Path) -> nn.Module:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FineDeployError(f"{path}: no config.json; pass a folder written by a diffusers model's save_pretrained")
    try:
        cls_name = json.loads(cfg_path.read_text()).get("_class_name")
    except json.JSONDecodeError as e:
        raise FineDeployError(f"{cfg_path}: not valid JSON ({e.msg})") from None
    cls = adapter_for(cls_name or "<missing _class_name>").model_class()
    try:
        return cls.from_pretrained(str(path), use_safetensors=True).eval()
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FineDeployError(f"{path}: diffusers could not load the model ({first})") from None


def source_weights_sha256(folder: Path) -> str | None:
    """The hash a converted supernet records of its source model's weights (its first safetensors file), by
    which export and recovery recognise the source folder later; None when it has none."""
    weights = sorted(Path(folder).glob("*.safetensors"))
    return sha256_file(weights[0]) if weights else None


def load_calibration(path: Path) -> torch.Tensor:
    """Calibration images [N, C, H, W] in [-1, 1] from .npy (no pickles) or .safetensors (first tensor)."""
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise FineDeployError(f"{path}: not a readable .npy array ({e})") from None
        x = torch.from_numpy(np.asarray(arr, dtype=np.float32))
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        x = next(iter(load_file(str(path)).values())).float()
    else:
        raise FineDeployError(f"{path}: calibration data must be a .npy or .safetensors image array [N, C, H, W]")
    if x.ndim != 4:
        raise FineDeployError(f"{path}: calibration array has shape {list(x.shape)}; expected [N, C, H, W]")
    return x


def model_to_supernet(
    model: nn.Module,
    *,
    max_rank: int | None = None,
    als_iters: int = 25,
    calib: torch.Tensor | None = None,
    provenance: dict | None = None,
    source_top: bool = False,
) -> Supernet:
    """Fit shared factors per type. With `source_top`, a type whose factors stop below the exact rank
    L·min(m1, m2) keeps its source weights as its top rank option (`TypeSpec.source_top`), so the full
    subnet is `model` itself; training starts from random models and does not keep them."""
    from fine_deploy.supernet.cp import fit_shared_factors, prefix_errors

    ad = adapter_of(model)
    types = find_types(model)
    tensors: dict[str, torch.Tensor] = {}
    type_specs = []
    with Progress(transient=True) as progress:
        task = progress.add_task("fitting shared factors", total=len(types))
        for t in types:
            W = stacked_weights(model, t)
            exact = t.exact_rank()
            cap = exact if t.layers * t.m1 * t.m2 <= EXACT_FIT_ENTRIES else DEFAULT_RANK_CAP_FACTOR * min(t.m1, t.m2)
            R = min(exact, max_rank or cap)
            f = fit_shared_factors(W, R, iters=als_iters)
            R = f.U.shape[1]
            keep_source = source_top and R < exact
            ladder = rank_ladder(R)
            ts = TypeSpec.from_weight_type(t, exact if keep_source else R, ladder + ([exact] if keep_source else []))
            ts.source_top = keep_source
            ts.reconstruction_error = {
                str(r): float(e) for r, e in zip(ladder, prefix_errors(W, f, ladder), strict=True)
            }
            u, v = basis_names(t.name)
            tensors[u], tensors[v] = f.U.float().contiguous(), f.V.float().contiguous()
            for i, m in enumerate(t.matrices):
                tensors[f"sigma.{m.name}"] = f.S[i].float().contiguous()
                if keep_source:  # the source weight, bit for bit (float32 like every stored tensor)
                    tensors[source_name(m.name)] = W[i].contiguous()
            if keep_source:
                ts.reconstruction_error[str(exact)] = 0.0
            type_specs.append(ts)
            progress.advance(task)
    dense = dense_parameters(model, types)
    params = dict(model.named_parameters())
    for name in dense:
        tensors[f"dense.{name}"] = params[name].detach().float().contiguous()
    cfg = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    spec = SupernetSpec(
        backbone=type(model).__name__,
        config=json.loads(json.dumps(cfg)),
        types=type_specs,
        dense=dense,
        widths=ad.width_section(model, calib),
        depth=({"full": int(cfg[ad.depth_key]), "options": ad.depth_options(cfg), "init": "linear-sigma"}
               if ad.depth_stack else {}),
        provenance=provenance or {},
    )
    return Supernet(spec, tensors)


def convert(
    from_diffusers: str | Path,
    output: str | Path,
    *,
    max_rank: int | None = None,
    als_iters: int = 25,
    calib: str | Path | None = None,
    exact_top: bool = True,
    quiet: bool = True,
) -> Supernet:
    """Load a diffusers model folder, fit shared factors per type, compute channel orders, write SUPERNET.

    With `exact_top` (the default) every type's top rank option reproduces the source weights, so a plan
    with nothing binding exports the user's model; `--no-exact-top` leaves them out (a smaller file whose
    full model is only the fit). Either way the conversion error against the source model is measured,
    stored in supernet.json (`conversion`) and, unless `quiet`, printed.

    A pipeline folder (model_index.json) is checked whole first; its denoiser is factorised and its other
    components (text encoders, tokenizers, VAE, scheduler) are carried unchanged into SUPERNET/components/."""
    from fine_deploy.pipelines.folder import describe, is_pipeline_folder, read_pipeline_folder

    src = Path(from_diffusers)
    if max_rank is not None and max_rank < 1:
        raise FineDeployError(f"--max-rank must be ≥ 1, got {max_rank}")
    folder = read_pipeline_folder(src) if is_pipeline_folder(src) else None
    model = load_diffusers_model(folder.denoiser if folder else src)
    x = load_calibration(Path(calib)) if calib is not None else None
    prov = {
        "source": "diffusers",
        "source_class": type(model).__name__,
        "source_weights_sha256": source_weights_sha256(folder.denoiser if folder else src),
        # where the source was: export compares a full plan against it when it is still there
        "source_path": str((folder.denoiser if folder else src).resolve()),
        "als_iters": als_iters,
        "exact_top": exact_top,
    }
    pipeline = {}
    if folder is not None:
        from fine_deploy.pipelines.folder import token_lengths

        comps = describe(folder, int(model.config.sample_size))
        pipeline = {"class": folder.pipeline.class_name, "denoiser": folder.pipeline.denoiser,
                    "model_index": folder.index, "dropped": folder.dropped, "components": comps,
                    "text_tokens": folder.pipeline.text_tokens(
                        list(token_lengths(folder.pipeline, lambda tok: folder.components[tok].path).values()),
                        dict(model.config))}
    sn = model_to_supernet(model, max_rank=max_rank, als_iters=als_iters, calib=x, provenance=prov,
                           source_top=exact_top)
    if folder is not None:
        sn.spec.pipeline = pipeline
        sn.component_sources = {n: c.path for n, c in folder.components.items()}
    from fine_deploy.supernet.fidelity import conversion_lines, conversion_record

    sn.spec.conversion = conversion_record(sn, model, x, progress=not quiet)
    sn.save(output)
    if not quiet:
        print("\n".join(conversion_lines(sn.spec.conversion)))
    return sn


def convert_summary(sn: Supernet) -> str:
    """One line for the CLI: what was factorised and what was carried."""
    line = f"{sn.path}: {sn.spec.backbone} factorised into {len(sn.types)} types"
    if sn.components:
        carried = [f"{n} ({c['class']}{', %.3gM params' % (c['params'] / 1e6) if c.get('params') else ''})"
                   for n, c in sn.components.items()]
        line += f"; {sn.spec.pipeline['class']} components carried: {', '.join(carried)}"
        if sn.spec.pipeline.get("dropped"):
            line += f"; not carried (optional): {', '.join(sn.spec.pipeline['dropped'])}"
    return line
