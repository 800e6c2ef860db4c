"""Real-size walk-through: published configurations with random weights through the CLI, step by step.

    python benchmarks/real_size.py [--models dit-xl-2 sd15-unet pixart-alpha-512] [--work DIR]
                                   [--json benchmarks/results/real_size.json]

Each model is built by stock diffusers at its published configuration (seeded random weights: no trained
weights can be had offline), saved with save_pretrained, then taken through exactly what a user runs, each
step a fresh `fine-deploy` process:

    convert --from-diffusers SRC -o SN
    plan --device host --mem 16GB  (cold: empty cache dir)      -> plan_cold.json
    plan --device host --mem 16GB  (warm: same cache dir)       -> plan_warm.json
    plan ... --latency 0.6 x the cold plan's predicted latency  -> plan_bound.json (a binding budget)
    export --plan plan_bound.json --format onnx                  (parity vs PyTorch checked by export itself)
    export --plan plan_cold.json --format onnx                   (the full model: over 2 GB, external data)

Per step: wall time and the peak RSS of the step's process (ru_maxrss of a wrapper's only child). Timing is
one run per step on a shared 2-core machine (wall clock; other load is recorded as the load average before
and after), so figures are indicative to ±20% (see the brief's noise note); they are not ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    # DiT-XL/2 (Peebles & Xie): 28 blocks, width 1152, 16 heads, 256x256 images -> 32x32x4 latents
    "dit-xl-2": ("DiTTransformer2DModel", dict(num_layers=28, num_attention_heads=16, attention_head_dim=72,
                                               in_channels=4, out_channels=8, sample_size=32, patch_size=2,
                                               num_embeds_ada_norm=1000, norm_type="ada_norm_zero")),
    # Stable Diffusion 1.5's UNet (runwayml config): 64x64x4 latents, CLIP-L text width 768
    "sd15-unet": ("UNet2DConditionModel", dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                               block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                                               attention_head_dim=8,
                                               down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                                 "CrossAttnDownBlock2D", "DownBlock2D"),
                                               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D",
                                                               "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))),
    # PixArt-α 512 (PixArt-alpha/PixArt-XL-2-512x512): 28 blocks, width 1152, T5-XXL captions (4096)
    "pixart-alpha-512": ("PixArtTransformer2DModel", dict(num_layers=28, num_attention_heads=16, attention_head_dim=72,
                                                          in_channels=4, out_channels=8, sample_size=64, patch_size=2,
                                                          caption_channels=4096, cross_attention_dim=1152,
                                                          norm_type="ada_norm_single", interpolation_scale=1,
                                                          use_additional_conditions=False)),
}
TARGETS = {"convert_s": 600, "convert_rss_gb": 12, "plan_cold_s": 60, "plan_warm_s": 2, "plan_bound_s": 2,
           "export_s": 600, "export_full_s": 600, "parity_rel": 1e-4}

_WRAP = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
         "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def step(args: list[str], env: dict[str, str], log: Path) -> dict:
    cmd = [sys.executable, "-c", _WRAP, sys.executable, "-m", "fine_deploy.cli", *map(str, args)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log.write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
    rss = next((int(line.split()[1]) for line in res.stderr.splitlines() if line.startswith("MAXRSS_KB")), 0)
    last = [line for line in (res.stdout + res.stderr).splitlines() if line.strip() and "MAXRSS" not in line]
    # the code a step ran is the commit at its start: a convert reused by a later run keeps its own
    return {"cmd": "fine-deploy " + " ".join(map(str, args)), "git_commit": git_commit(), "rc": res.returncode,
            "wall_s": round(wall, 1),
            "peak_rss_gb": round(rss / 2**20, 2), "last_line": last[-1][:300] if last else ""}


def run_model(key: str, work: Path, mem: str, old: dict | None = None) -> dict:
    import torch

    import fine_deploy.backbones as bb

    cls_name, cfg = MODELS[key]
    d = work / key
    d.mkdir(parents=True, exist_ok=True)
    src = d / "src"
    t0 = time.perf_counter()
    if not (src / "config.json").exists():
        torch.manual_seed(0)
        model = bb.adapter_for(cls_name).model_class()(**cfg)
        model.save_pretrained(src, safe_serialization=True)
        del model
    build_s = time.perf_counter() - t0
    n_params = source_parameters(src)
    cache = d / "cache"
    env = {**os.environ, "FINE_DEPLOY_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out: dict = {"model": key, "class": cls_name, "config": cfg, "params": n_params, "build_s": round(build_s, 1),
                 "load_before": os.getloadavg()[0], "steps": {}}
    sn = d / "sn"
    s = out["steps"]
    print(f"[{key}] convert ...", flush=True)
    if not (sn / "supernet.json").exists():
        s["convert"] = step(["convert", "--from-diffusers", src, "-o", sn], env, d / "convert.log")
        if s["convert"]["rc"]:
            return out
    elif old and "convert" in old.get("steps", {}):  # the supernet of that run is reused
        s["convert"] = old["steps"]["convert"]
    print(f"[{key}] plan (cold) ...", flush=True)
    if cache.exists():
        import shutil

        shutil.rmtree(cache)
    plan_args = ["plan", "--device", "host", "--mem", mem, "--supernet", sn]
    s["plan_cold"] = step([*plan_args, "-o", d / "plan_cold.json"], env, d / "plan_cold.log")
    if s["plan_cold"]["rc"]:
        return out
    s["plan_warm"] = step([*plan_args, "-o", d / "plan_warm.json"], env, d / "plan_warm.log")
    full = json.loads((d / "plan_cold.json").read_text())["predicted"]["latency_s"]
    budget_ms = round(0.6 * full * 1e3, 3)
    print(f"[{key}] plan (latency {budget_ms} ms) ...", flush=True)
    s["plan_bound"] = step([*plan_args, "--latency", f"{budget_ms}ms", "-o", d / "plan_bound.json"], env,
                           d / "plan_bound.log")
    if s["plan_bound"]["rc"]:
        return out
    bound = json.loads((d / "plan_bound.json").read_text())
    out["bound_plan"] = {"budget_s": budget_ms / 1e3, "predicted_latency_s": bound["predicted"]["latency_s"],
                         "binding": bound.get("binding"), "solver": bound.get("solver")}
    print(f"[{key}] export onnx ...", flush=True)
    exp = d / "onnx"
    if exp.exists():
        import shutil

        shutil.rmtree(exp)
    s["export_onnx"] = step(["export", "--plan", d / "plan_bound.json", "--format", "onnx", "-o", exp], env,
                            d / "export.log")
    out["parity"], out["onnx"] = [], {}
    if s["export_onnx"]["rc"] == 0:
        record_export(out, exp, "bound")
    # the full plan: the user's whole model, over protobuf's 2 GB at these sizes (external data)
    print(f"[{key}] export onnx (full plan) ...", flush=True)
    exp_full = d / "onnx_full"
    if exp_full.exists():
        import shutil

        shutil.rmtree(exp_full)
    s["export_onnx_full"] = step(["export", "--plan", d / "plan_cold.json", "--format", "onnx", "-o", exp_full],
                                 env, d / "export_full.log")
    if s["export_onnx_full"]["rc"] == 0:
        record_export(out, exp_full, "full")
        import shutil

        shutil.rmtree(exp_full)  # GBs of scratch
    out["load_after"] = os.getloadavg()[0]
    out["meets"] = verdict(out)
    return out


def source_parameters(src: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in src.glob("*.safetensors"):
        with safe_open(str(f), framework="np") as h:
            for k in h.keys():
                shape = h.get_slice(k).get_shape()
                n += math.prod(shape)
    return n


def record_export(out: dict, exp: Path, which: str) -> None:
    m = json.loads((exp / "manifest.json").read_text())
    out["parity"] += [{**p, "plan": which} for p in m["parity"]]
    out["onnx"][which] = {"external_data": m["checks"]["onnx"]["external_data"],
                          "bytes": sum(f.stat().st_size for f in exp.rglob("*") if f.is_file())}


def verdict(out: dict) -> dict:
    s = out["steps"]

    def get(k: str, f: str):
        return s[k][f] if k in s and s[k]["rc"] == 0 else None

    par = max((p["rel"] for p in out.get("parity", [])), default=None)
    got = {"convert_s": get("convert", "wall_s"), "convert_rss_gb": get("convert", "peak_rss_gb"),
           "plan_cold_s": get("plan_cold", "wall_s"), "plan_warm_s": get("plan_warm", "wall_s"),
           "plan_bound_s": get("plan_bound", "wall_s"), "export_s": get("export_onnx", "wall_s"),
           "export_full_s": get("export_onnx_full", "wall_s"), "parity_rel": par}
    return {k: {"value": v, "target": TARGETS[k], "ok": v is not None and v <= TARGETS[k]} for k, v in got.items()}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--work", default=None, help="scratch folder (kept: re-runs reuse saved sources and supernets)")
    ap.add_argument("--mem", default="16GB")
    ap.add_argument("--json", default="benchmarks/results/real_size.json")
    args = ap.parse_args()
    work = Path(args.work or Path(tempfile.gettempdir()) / "fine-deploy-real-size")
    path = Path(args.json)
    old = json.loads(path.read_text()) if path.exists() else {}
    results = {r["model"]: r for r in old.get("results", [])}
    for key in args.models:
        results[key] = run_model(key, work, args.mem, results.get(key))
        record = {"schema": 1, "benchmark": "real_size", "git_commit": git_commit(), "args": vars(args),
                  "inputs": {k: hashlib.sha256(json.dumps(MODELS[k], sort_keys=True).encode()).hexdigest()[:16]
                             for k in results},
                  "protocol": "one CLI process per step, wall clock, peak RSS of that process; 2-core shared host",
                  "targets": TARGETS, "results": [results[k] for k in MODELS if k in results]}
        path.write_text(json.dumps(record, indent=2) + "\n")
        print_table(record)


def print_table(record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    tab = Table(title="real size (random weights at published configs), wall s / peak RSS GB per CLI step")
    for c in ("model", "params", "convert", "plan cold", "plan warm", "plan bound", "export bound", "export full",
              "parity"):
        tab.add_column(c)
    for r in record["results"]:
        def cell(k: str, s: dict = r["steps"]) -> str:
            if k not in s:
                return "-"
            x = s[k]
            return f"{x['wall_s']} s / {x['peak_rss_gb']} GB" + ("" if x["rc"] == 0 else " FAILED")

        par = max((p["rel"] for p in r.get("parity", [])), default=None)
        tab.add_row(r["model"], f"{(r.get('params') or 0) / 1e6:.0f}M", cell("convert"), cell("plan_cold"),
                    cell("plan_warm"), cell("plan_bound"), cell("export_onnx"), cell("export_onnx_full"),
                    f"{par:.1e}" if par else "-")
    Console(width=160).print(tab)


if __name__ == "__main__":
    main()
