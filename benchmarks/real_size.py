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

from provenance import git_commit, provenance

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
# The whole SD 1.5 pipeline (issue 13): CLIP ViT-L/14 text encoder (123M), the UNet above (860M), the KL VAE
# (84M), PNDM scheduler, a CLIP tokenizer of 77 tokens (its vocabulary written locally: no download)
PIPELINES = {
    "sd15-pipeline": dict(
        text_encoder=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                          projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                 block_out_channels=(128, 256, 512, 512),
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
        scheduler=dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                       steps_offset=1),
    ),
}
PIPELINE_PLANS = [("jetson-orin-nano-4gb", "4GB", "none"), ("jetson-orin-nano-4gb", "4GB", "sequential"),
                  ("iphone-15-pro", "3GB", "none"), ("iphone-15-pro", "3GB", "sequential")]
TARGETS = {"convert_s": 600, "convert_rss_gb": 12, "plan_cold_s": 60, "plan_warm_s": 2, "plan_bound_s": 2,
           "export_s": 600, "export_full_s": 600, "parity_rel": 1e-4}

_WRAP = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
         "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def step(args: list[str], env: dict[str, str], log: Path) -> dict:
    cmd = [sys.executable, "-c", _WRAP, sys.executable, "-m", "fine_deploy.cli", *map(str, args)]
    commit = git_commit()  # the code this step runs: the commit at its start (later commits may land meanwhile)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log.write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
    rss = next((int(line.split()[1]) for line in res.stderr.splitlines() if line.startswith("MAXRSS_KB")), 0)
    last = [line for line in (res.stdout + res.stderr).splitlines() if line.strip() and "MAXRSS" not in line]
    # the code a step ran is the commit at its start: a convert reused by a later run keeps its own
    return {"cmd": "fine-deploy " + " ".join(map(str, args)), "git_commit": commit, "rc": res.returncode,
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
    cold = json.loads((d / "plan_cold.json").read_text())
    out["supernet"] = {"path": str(sn), "sha256": cold["supernet"]["sha256"]}  # hashed by plan, not reloaded here
    full = cold["predicted"]["latency_s"]
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


def build_pipeline(key: str, src: Path) -> None:
    """The SD 1.5 pipeline folder by stock diffusers + transformers (seeded random weights)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_pipelines import write_tokenizer

    cfg = PIPELINES[key]
    torch.manual_seed(0)
    tok = write_tokenizer(src / "tokenizer", tokens=77)
    StableDiffusionPipeline(
        vae=AutoencoderKL(**cfg["vae"]), text_encoder=CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
        tokenizer=tok, unet=UNet2DConditionModel(**MODELS["sd15-unet"][1]), scheduler=PNDMScheduler(**cfg["scheduler"]),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_pretrained(str(src))


def run_pipeline(key: str, work: Path, old: dict | None = None) -> dict:
    """convert the pipeline folder, plan it for the Jetson Orin Nano 4 GB and the iPhone 15 Pro (all components
    resident and sequential offload), export the Jetson plan to ONNX with every component."""
    d = work / key
    d.mkdir(parents=True, exist_ok=True)
    src = d / "src"
    t0 = time.perf_counter()
    if not (src / "model_index.json").exists():
        build_pipeline(key, src)
    build_s = time.perf_counter() - t0
    params = {c: source_parameters(src / c) for c in ("text_encoder", "unet", "vae")}
    cache = d / "cache"
    env = {**os.environ, "FINE_DEPLOY_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out: dict = {"model": key, "class": "StableDiffusionPipeline", "config": PIPELINES[key], "params": params,
                 "build_s": round(build_s, 1), "load_before": os.getloadavg()[0], "steps": {}, "plans": {}}
    s = out["steps"]
    sn = d / "sn"
    print(f"[{key}] convert ...", flush=True)
    if not (sn / "supernet.json").exists():
        s["convert"] = step(["convert", "--from-diffusers", src, "-o", sn], env, d / "convert.log")
        if s["convert"]["rc"]:
            return out
    elif old and "convert" in old.get("steps", {}):
        s["convert"] = old["steps"]["convert"]
    reused = old is not None and s.get("convert") is old.get("steps", {}).get("convert")
    for device, mem, offload in PIPELINE_PLANS:
        name = f"plan_{device}_{offload}"
        done = (old or {}).get("steps", {}).get(name)
        if reused and done and done["rc"] == 0 and (d / f"{name}.json").exists():
            s[name] = done  # the supernet of that run is reused, and so are its plans (made cold)
        else:
            print(f"[{key}] {name} ...", flush=True)
            s[name] = step(["plan", "--device", device, "--mem", mem, "--offload", offload, "--supernet", sn,
                            "-o", d / f"{name}.json"], env, d / f"{name}.log")
        if s[name]["rc"] == 0:
            doc = json.loads((d / f"{name}.json").read_text())
            out["supernet"] = {"path": str(sn), "sha256": doc["supernet"]["sha256"]}
            pr = doc["predicted"]
            out["plans"][name] = {"memory_bytes": pr["memory_bytes"],
                                  "denoiser_memory_bytes": pr["denoiser_memory_bytes"],
                                  "memory_share": pr["pipeline"]["memory_share"],
                                  "components": {n: {k: c[k] for k in ("params", "weight_bytes", "activation_bytes",
                                                                        "latency_s")}
                                                 for n, c in pr["pipeline"]["components"].items()},
                                  "budget": mem, "offload": offload}
    first = next((f"plan_{dv}_{o}" for dv, _, o in PIPELINE_PLANS if s.get(f"plan_{dv}_{o}", {}).get("rc") == 0), None)
    if first is not None:
        print(f"[{key}] export onnx ({first}) ...", flush=True)
        exp = d / "onnx"
        if exp.exists():
            import shutil

            shutil.rmtree(exp)
        s["export_onnx"] = step(["export", "--plan", d / f"{first}.json", "--format", "onnx", "-o", exp], env,
                                d / "export.log")
        out["parity"], out["onnx"] = [], {}
        if s["export_onnx"]["rc"] == 0:
            record_export(out, exp, first)
            m = json.loads((exp / "manifest.json").read_text())
            out["onnx"]["components"] = {n: c.get("model") or c.get("files") for n, c in m["components"].items()}
    out["load_after"] = os.getloadavg()[0]
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
                          "bytes": sum(f.stat().st_size for f in exp.rglob("*") if f.is_file()),
                          # the export's own check against the converted source model (issue 19)
                          "source": m["checks"].get("source")}


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




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=[*MODELS, *PIPELINES], choices=[*MODELS, *PIPELINES])
    ap.add_argument("--work", default=None, help="scratch folder (kept: re-runs reuse saved sources and supernets)")
    ap.add_argument("--mem", default="16GB")
    ap.add_argument("--reconvert", action="store_true", help="convert again even where a supernet is in --work")
    ap.add_argument("--json", default="benchmarks/results/real_size.json")
    args = ap.parse_args()
    work = Path(args.work or Path(tempfile.gettempdir()) / "fine-deploy-real-size")
    path = Path(args.json)
    old = json.loads(path.read_text()) if path.exists() else {}
    results = {r["model"]: r for r in old.get("results", [])}
    for key in args.models:
        if args.reconvert:
            import shutil

            shutil.rmtree(work / key / "sn", ignore_errors=True)
        results[key] = (run_pipeline(key, work, results.get(key)) if key in PIPELINES
                        else run_model(key, work, args.mem, results.get(key)))
        configs = {**MODELS, **PIPELINES}
        inputs = {k: hashlib.sha256(json.dumps(configs[k], sort_keys=True).encode()).hexdigest()[:16] for k in results}
        # a model's results may come from an earlier run (--models re-runs some): its steps carry their commits
        prov = provenance(args, {k: r.get("supernet") for k, r in results.items()}, **inputs)
        record = {"schema": 1, "benchmark": "real_size", "provenance": prov, "git_commit": prov["git_commit"],
                  "args": prov["args"], "inputs": inputs,
                  "protocol": "one CLI process per step, wall clock, peak RSS of that process; 2-core shared host",
                  "targets": TARGETS, "results": [results[k] for k in configs if k in results]}
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
        if "plans" in r:  # a whole pipeline: printed by print_pipeline
            continue

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
    for r in record["results"]:
        if "plans" in r:
            print_pipeline(r)


def print_pipeline(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    tab = Table(title=f"{r['model']}: {', '.join(f'{k} {v / 1e6:.0f}M' for k, v in r['params'].items())}")
    for c in ("step", "wall s / peak RSS GB", "memory (pipeline)", "denoiser", "shares"):
        tab.add_column(c)
    for name, st in r["steps"].items():
        p = r["plans"].get(name, {})
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in p.get("memory_share", {}).items())
        tab.add_row(name, f"{st['wall_s']} / {st['peak_rss_gb']}" + ("" if st["rc"] == 0 else " FAILED"),
                    f"{p['memory_bytes'] / 2**30:.2f} GiB" if p else "-",
                    f"{p['denoiser_memory_bytes'] / 2**30:.2f} GiB" if p else "-", shares or st["last_line"][:60])
    Console(width=160).print(tab)


if __name__ == "__main__":
    main()
