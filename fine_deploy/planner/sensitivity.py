"""The quality side of the plan: the supernet's sensitivity table, or a data-free proxy of it.

For a converted supernet whose top options are the source weights (`Supernet.exact_top`) the full model
is the source model, so this table is measured against the source (`"reference": "source"`); the plan adds
convert's full-model conversion error (`spec.conversion`) where the full model only approximates it.

Until training measures `spec.sensitivity` on held-out data, the planner uses a proxy that needs no
data: for every knob value, the subnet that changes only that knob is run on fixed random inputs and
its relative output error against the full supernet, ||y_v - y_full||² / ||y_full||², is the loss of
that value. Squared errors are used because the errors of independent perturbations add in
expectation, which is what the planner's additive objective assumes. The proxy is cached per
supernet content hash in the user cache dir, and every plan made from it says `proxy: true`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from fine_deploy.fileio import read_cache, write_cache
from fine_deploy.paths import cache_dir

PROXY_METRIC = "relative_output_mse_random_inputs"
PROXY_VERSION = 2
PROXY_BATCH = 4
PROXY_SEED = 1234
PROXY_BUDGET_S = 20.0  # above this, the proxy measures fewer values (see proxy_sensitivity)


def _cache_path(content_hash: str) -> Path:
    return cache_dir() / f"sensitivity-proxy-v{PROXY_VERSION}-{content_hash[:32]}.json"


def _knob_configs(sn) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(section, knob, value, subnet config json) for every non-full knob value."""
    out = []
    for t in sn.types:
        for r in t.rank_options:
            if r != t.max_rank:
                out.append(("ranks", t.name, r, {"ranks": {t.name: r}}))
    for knob, values in (sn.spec.widths.get("knobs") or {}).items():
        for w in values:
            if w != max(values):
                out.append(("widths", knob, w, {"widths": {knob: w}}))
    full_depth = sn.spec.depth.get("full")
    for d in sn.spec.depth.get("options") or []:
        if d != full_depth:
            out.append(("depth", "depth", d, {"depth": d}))
    return out


def _with_rank(model, sn, t, r: int):
    """Fold type t at rank r into `model`'s weights in place; returns the weights to put back."""
    saved = {}
    for m in t.matrices:
        W = sn.weight(m["name"], r)
        for p in m["parts"]:
            a, b = p["rows"]
            w = model.get_submodule(p["module"]).weight
            saved[p["module"]] = w.detach().clone()
            w.copy_(W[a:b].reshape(w.shape))
    return saved


@contextlib.contextmanager
def one_thread():
    """torch on one intra-op thread: the same float sums on every machine (reproducible figures), and
    no thread oversubscription on a busy host, where 2 threads ran these tiny models ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def proxy_sensitivity(sn, *, batch: int = PROXY_BATCH, seed: int = PROXY_SEED, progress: bool = True,
                      budget_s: float = PROXY_BUDGET_S) -> dict[str, Any]:
    """The sensitivity table layout of `spec.sensitivity`, filled by the random-input proxy.

    A rank value is measured by folding only that type at that rank into the full model (and putting
    the weights back): one model build for every rank of every type instead of one each. When measuring
    every knob value would take longer than `budget_s` (published sizes: a 0.7B forward alone takes
    seconds), the proxy shrinks what it runs, in this order, and records each step in `measured`:
    the adapter's proxy resolution (UNets at a quarter of their side), batch 1, every torch thread, then
    one rank per type with the others scaled along that type's measured reconstruction error
    (loss ∝ relative weight error², the small-perturbation law), and the depth/width values at the ends
    and middle of their range with the others interpolated linearly.
    """
    ad = sn.adapter
    n_jobs = len(_knob_configs(sn))

    def forward_seconds(res: int | None) -> float:
        probe = ad.example_inputs(sn.spec.config, 1, res, seed, sn.text_tokens)
        t0 = time.perf_counter()
        with torch.no_grad():
            ad.run(model, probe)
        return time.perf_counter() - t0

    # timed once, at the small side where the model has one: a native forward of a 0.6B PixArt is ~20x dearer
    res = ad.proxy_resolution(sn.spec.config)
    with one_thread():
        model = sn.subnet(sn.full_config())
        forward_s = forward_seconds(res)
    native_s = forward_s * (1.0 if res is None else (int(sn.spec.config["sample_size"]) / res) ** 2)
    if native_s * batch * n_jobs <= budget_s:  # small models: every value at the model's own side, as always
        with one_thread():
            return _proxy(sn, model, batch, None, seed, progress, True, native_s)
    return _proxy(sn, model, 1, res, seed, progress, forward_s * n_jobs <= budget_s, forward_s)


def _sampled(values: list[int], full_value: int) -> list[int]:
    """The values a reduced proxy measures: both ends and the middle of the non-full range."""
    rest = sorted(v for v in values if v != full_value)
    return sorted({rest[0], rest[len(rest) // 2], rest[-1]}) if rest else []


def _interpolate(points: dict[int, float], values: list[int]) -> dict[str, float]:
    xs = sorted(points)
    out = {}
    for v in values:
        if v in points:
            out[str(v)] = points[v]
            continue
        hi = next(x for x in xs if x > v)
        lo = max((x for x in xs if x < v), default=hi)
        w = 0.0 if hi == lo else (v - lo) / (hi - lo)
        out[str(v)] = (1 - w) * points[lo] + w * points[hi]
    return out


def _proxy(sn, model, batch: int, res: int | None, seed: int, progress: bool, full: bool,
           forward_s: float) -> dict[str, Any]:
    ad = sn.adapter
    inputs = ad.example_inputs(sn.spec.config, batch, res, seed, sn.text_tokens)
    with torch.no_grad():
        y_full = ad.run(model, inputs).double()
    denom = float((y_full**2).sum()) or 1.0

    def err(net) -> float:
        with torch.no_grad():
            y = ad.run(net, inputs).double()
        return float(((y - y_full) ** 2).sum()) / denom

    types = {t.name: t for t in sn.types}
    jobs = _knob_configs(sn)
    if not full:
        keep = {}
        for t in sn.types:  # the middle non-full option; scaled to the others by reconstruction error
            rest = [r for r in t.rank_options if r != t.max_rank]
            if rest and all(str(r) in t.reconstruction_error for r in rest):
                keep[t.name] = rest[len(rest) // 2]
        sampled = {"depth": _sampled(sn.spec.depth.get("options") or [], sn.spec.depth.get("full"))}
        for k, values in (sn.spec.widths.get("knobs") or {}).items():
            sampled[k] = _sampled(values, max(values))
        jobs = [j for j in jobs if (j[0] == "ranks" and keep.get(j[1], j[2]) == j[2])
                or (j[0] != "ranks" and j[2] in sampled[j[1]])]
    table: dict[str, Any] = {
        "metric": PROXY_METRIC,
        "baseline": 0.0,
        "proxy": True,
        # the full model is the reference; for a converted supernet with exact top options that *is* the source
        "reference": "source" if sn.exact_top else "full supernet",
        "proxy_version": PROXY_VERSION,
        "inputs": {"batch": batch, "seed": seed, "resolution": res},
        "measured": {"every_value": full, "forward_s": round(forward_s, 4), "jobs": len(jobs),
                     "budget_s": PROXY_BUDGET_S},
        "ranks": {t.name: {str(t.max_rank): 0.0} for t in sn.types},
        "widths": {k: {str(max(v)): 0.0} for k, v in (sn.spec.widths.get("knobs") or {}).items()},
        "depth": {str(sn.spec.depth["full"]): 0.0} if sn.spec.depth.get("options") else {},
    }
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("quality proxy (random inputs)", total=len(jobs))
        for section, knob, value, cfg in jobs:
            if section == "ranks":
                with torch.no_grad():
                    saved = _with_rank(model, sn, types[knob], value)
                table["ranks"][knob][str(value)] = err(model)
                with torch.no_grad():
                    for name, w in saved.items():
                        model.get_submodule(name).weight.copy_(w)
            else:
                e = err(sn.subnet(cfg))
                if section == "depth":
                    table["depth"][str(value)] = e
                else:
                    table["widths"][knob][str(value)] = e
            bar.advance(task)
    if not full:
        for t in sn.types:
            got = table["ranks"][t.name]
            if len(got) == len(t.rank_options):
                continue
            (r0, e0), = ((int(k), v) for k, v in got.items() if int(k) != t.max_rank)
            w0 = t.reconstruction_error[str(r0)] ** 2 or 1e-30
            for r in t.rank_options:
                if r != t.max_rank:
                    got[str(r)] = e0 * t.reconstruction_error[str(r)] ** 2 / w0
        if table["depth"]:
            table["depth"] = _interpolate({int(k): v for k, v in table["depth"].items()}, sn.spec.depth["options"])
        for k, values in (sn.spec.widths.get("knobs") or {}).items():
            table["widths"][k] = _interpolate({int(w): v for w, v in table["widths"][k].items()}, values)
    return table


def _usable(table: dict[str, Any], sn) -> bool:
    """A measured table counts when it covers every knob value the planner may choose."""
    if not table or not table.get("ranks"):
        return False
    try:
        for t in sn.types:
            for r in t.rank_options:
                float(table["ranks"][t.name][str(r)])
        for k, values in (sn.spec.widths.get("knobs") or {}).items():
            for w in values:
                float(table["widths"][k][str(w)])
        for d in sn.spec.depth.get("options") or []:
            float(table["depth"][str(d)])
    except (KeyError, TypeError, ValueError):
        return False
    return True


def sensitivity_table(sn, *, cache: bool = True, progress: bool = True) -> dict[str, Any]:
    """spec.sensitivity when training filled it for every knob value (or recovery training measured the proxy
    against its teacher), else the cached random-input proxy."""
    stored = sn.spec.sensitivity
    if _usable(stored, sn) and (not stored.get("proxy") or stored.get("reference") == "source"):
        return stored
    return cached_proxy(sn, cache=cache, progress=progress)


def cached_proxy(sn, *, cache: bool = True, progress: bool = True) -> dict[str, Any]:
    """The random-input proxy table of `sn`, from the user cache when it is there."""
    path = _cache_path(sn.content_hash)
    table = read_cache(path) if cache else None
    if table is not None and table.get("proxy_version") == PROXY_VERSION and _usable(table, sn):
        return table
    table = proxy_sensitivity(sn, progress=progress)
    if cache:
        write_cache(path, table)
    return table


# --- quality per precision (issue 14) -----------------------------------------------------------------------

PRECISION_VERSION = 1
# how each precision's weights are simulated in torch for the measurement (weights only: activations stay fp32)
QUANTISERS = {
    "fp32": "exact",
    "fp16": "cast to float16",
    "bf16": "cast to bfloat16",
    "fp8": "per-tensor scaled cast to float8_e4m3fn",
    "int8": "per-output-channel symmetric 8-bit fake quantisation",
    "pal8": "uniform 256-entry palette per tensor (k-means-free approximation of Core ML's palettisation)",
    "pal6": "uniform 64-entry palette per tensor (k-means-free approximation of Core ML's palettisation)",
    "pal4": "uniform 16-entry palette per tensor (k-means-free approximation of Core ML's palettisation)",
}
STAR = "*"  # every parameter outside the factorised layers (plan.json's "*" precision)


def fake_quantise(w: torch.Tensor, precision: str) -> torch.Tensor:
    """`w` as it reads back after being stored at `precision` (QUANTISERS says how each is simulated)."""
    from fine_deploy.cost.precisions import PALETTES

    x = w.detach().float()
    if precision == "fp32":
        return x
    if precision == "fp16":
        return x.half().float()
    if precision == "bf16":
        return x.bfloat16().float()
    if x.ndim < 2:  # biases and norm scales: the exporters keep them in a float format
        return x.half().float()
    if precision == "fp8":
        scale = x.abs().max().clamp_min(1e-30) / 448.0  # E4M3's largest finite value
        return (x / scale).to(torch.float8_e4m3fn).float() * scale
    if precision == "int8":
        flat = x.reshape(x.shape[0], -1)
        scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-30) / 127.0
        return ((flat / scale).round().clamp(-127, 127) * scale).reshape(x.shape)
    if precision in PALETTES:
        lo, hi = x.min(), x.max()
        steps = 2 ** PALETTES[precision] - 1
        step = ((hi - lo) / steps).clamp_min(1e-30)
        return (((x - lo) / step).round() * step + lo).half().float()
    raise ValueError(f"no quantiser for precision {precision!r}")


def _precision_path(content_hash: str) -> Path:
    return cache_dir() / f"sensitivity-precision-v{PRECISION_VERSION}-{content_hash[:32]}.json"


def _type_params(model, sn) -> dict[str, list[str]]:
    """Type name -> the module weights its matrices are folded into; STAR -> every other parameter."""
    out: dict[str, list[str]] = {}
    taken = set()
    for t in sn.types:
        names = sorted({f"{p['module']}.weight" for m in t.matrices for p in m["parts"]})
        out[t.name] = names
        taken.update(names)
    out[STAR] = sorted(n for n, _ in model.named_parameters() if n not in taken)
    return out


def precision_losses(sn, table: dict[str, Any], precisions: list[str] | tuple[str, ...], *, cache: bool = True,
                     progress: bool = True) -> dict[str, Any]:
    """Per type (and STAR), the relative output error of the full model with only that type's weights stored at
    each precision, on the proxy's batch and metric, so a precision step and a rank step weigh on one scale.

    Kept in its own cache file per supernet hash (a sensitivity table cached before precisions existed stays
    valid); precisions missing from it are measured and added. Errors of weights at a precision and at a lower
    rank are taken to add up, as the rank entries of different types are (the planner's additive objective)."""
    path = _precision_path(sn.content_hash)
    rec: dict[str, Any] = (read_cache(path) if cache else None) or {}
    inputs = table.get("inputs") or {"batch": PROXY_BATCH, "seed": PROXY_SEED, "resolution": None}
    if rec.get("inputs") != inputs:
        rec = {}
    want = [p for p in precisions if p != "fp32"]
    losses: dict[str, dict[str, float]] = rec.get("losses") or {}
    missing = [p for p in want if any(p not in losses.get(g, {}) for g in [*(t.name for t in sn.types), STAR])]
    if missing:
        ad = sn.adapter
        with one_thread(), torch.no_grad():
            model = sn.subnet(sn.full_config())
            groups = _type_params(model, sn)
            x = ad.example_inputs(sn.spec.config, inputs["batch"], inputs["resolution"], inputs["seed"],
                                  sn.text_tokens)
            y_full = ad.run(model, x).double()
            denom = float((y_full**2).sum()) or 1.0
            params = dict(model.named_parameters())
            with Progress(transient=True, disable=not progress) as bar:
                task = bar.add_task("quality per precision", total=len(missing) * len(groups))
                for p in missing:
                    for g, names in groups.items():
                        saved = {n: params[n].detach().clone() for n in names}
                        for n in names:
                            params[n].copy_(fake_quantise(params[n], p))
                        y = ad.run(model, x).double()
                        losses.setdefault(g, {})[p] = float(((y - y_full) ** 2).sum()) / denom
                        for n in names:
                            params[n].copy_(saved[n])
                        bar.advance(task)
        rec = {"version": PRECISION_VERSION, "metric": PROXY_METRIC, "inputs": inputs,
               "quantisers": {p: QUANTISERS[p] for p in sorted({*rec.get("quantisers", {}), *missing})},
               "losses": losses}
        if cache:
            write_cache(path, rec)
    scale, how = 1.0, None
    if table.get("metric") != PROXY_METRIC:
        scale = _proxy_scale(sn, table, cache=cache, progress=progress)
        how = (f"{PROXY_METRIC} x {scale:.6g}: the least-squares ratio of the table's {table.get('metric')} to "
               "the proxy's figure over every rank entry, so that precision and rank steps weigh on one scale")
    out = {g: {"fp32": 0.0, **{p: scale * v[p] for p in want if p in v}} for g, v in losses.items()}
    for g in [*(t.name for t in sn.types), STAR]:
        out.setdefault(g, {"fp32": 0.0})
    return {"metric": table.get("metric", PROXY_METRIC), "measured_as": PROXY_METRIC, "scaled": how,
            "inputs": inputs, "weights_only": True,
            "quantisers": {p: QUANTISERS[p] for p in ["fp32", *want]}, "losses": out}


def _proxy_scale(sn, table: dict[str, Any], *, cache: bool, progress: bool) -> float:
    """Table metric per unit of the proxy's relative output MSE, fitted through the origin on the rank entries
    both measure (a trained table's held-out loss increase and the proxy's error of the same rank)."""
    proxy = cached_proxy(sn, cache=cache, progress=progress)
    num = den = 0.0
    for t in sn.types:
        for r in t.rank_options:
            a = float(table["ranks"][t.name][str(r)])
            b = float(proxy["ranks"][t.name][str(r)])
            num += a * b
            den += b * b
    return num / den if den > 0 and num > 0 else 1.0
