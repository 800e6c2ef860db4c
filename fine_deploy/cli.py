"""The `fine-deploy` command line: a thin typer layer, one function per command, no logic.

Every command calls one API function of the same name; a FineDeployError becomes one line on
stderr and a non-zero exit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from fine_deploy.errors import FineDeployError

app = typer.Typer(
    name="fine-deploy",
    help="Plan, fold, export and benchmark right-sized diffusion models from one supernet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def command(*args: Any, **kwargs: Any) -> Callable:
    """Register a command whose FineDeployError turns into one line and a non-zero exit."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            try:
                return fn(*a, **k)
            except FineDeployError as e:
                typer.echo(f"fine-deploy: error: {e}", err=True)
                raise typer.Exit(e.exit_code) from None

        return app.command(*args, **kwargs)(wrapper)

    return deco


SupernetArg = typer.Argument(None, help="Supernet directory; the embedded default when omitted.")
SupernetOpt = typer.Option(None, "--supernet", help="Supernet directory; the embedded default when omitted.")


# --- supernet core -------------------------------------------------------------------------------


@command("inspect")
def inspect_cmd(
    supernet: Path | None = SupernetArg,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Show a supernet: types, ranks, widths, depth, parameters and reconstruction error."""
    from fine_deploy.supernet.inspect import inspect

    inspect(supernet, as_json=as_json)


@command("convert")
def convert_cmd(
    from_diffusers: Path = typer.Option(..., "--from-diffusers", help="A diffusers model folder."),
    output: Path = typer.Option(..., "-o", "--output", help="Supernet directory to write."),
    max_rank: int | None = typer.Option(None, "--max-rank", help="Largest rank kept per type."),
    als_iters: int = typer.Option(25, "--als-iters", help="Alternating least squares sweeps."),
    calib: Path | None = typer.Option(None, "--calib", help="Images (.npy/.safetensors) for gradient importance "
                                      "and the conversion error."),
    exact_top: bool = typer.Option(True, "--exact-top/--no-exact-top",
                                   help="Keep the source weights as each type's top rank option (exact full model)."),
) -> None:
    """Turn a dense diffusers model (or a whole pipeline folder) into a supernet (shared-factor fit + channel
    orders; a pipeline's text encoders, tokenizers, VAE and scheduler are carried unchanged); prints the
    conversion error against the source model."""
    from fine_deploy.supernet.convert import convert, convert_summary

    sn = convert(from_diffusers, output, max_rank=max_rank, als_iters=als_iters, calib=calib, exact_top=exact_top,
                 quiet=False)
    print(convert_summary(sn))


# --- cost: device profiles and the profiler ------------------------------------------------------


@command("devices")
def devices_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the device profiles and their aliases."""
    from fine_deploy.cost.commands import devices

    devices(as_json=as_json)


@command("profile")
def profile_cmd(
    device: str = typer.Option("host", "--device", help="Device profile name or alias (see `devices`)."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="LUT file; <cache>/measured/<device>-<runtime>.json by default."
    ),
    runtime: str | None = typer.Option(
        None, "--runtime", help="Backend to measure on; the device's own when usable here."
    ),
    supernet: Path | None = SupernetOpt,
    fresh: bool = typer.Option(False, "--fresh", help="Measure everything again instead of resuming."),
    calibrate_subnets: int = typer.Option(
        24, "--calibrate-subnets", help="Whole subnets exported and timed to calibrate the plan's latency (0: none)."
    ),
) -> None:
    """Measure what every layer choice costs on this machine's runtime, then whole subnets of the supernet
    (the default when --supernet is omitted): the LUT `plan` prices with."""
    from fine_deploy.export.calibrate import profile_supernet

    profile_supernet(device, output, runtime=runtime, supernet=supernet, resume=not fresh, points=calibrate_subnets)


# --- bench and report ----------------------------------------------------------------------------


@command("bench")
def bench_cmd(
    artifacts: list[Path] = typer.Argument(..., help="Artifact dirs or model files (run interleaved)."),
    runs: int = typer.Option(30, "--runs", "-n", help="Timed runs per model."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the result here (bench.json)."),
    steps: int = typer.Option(1, "--steps", help="Sampler steps, for the per-image latency."),
    shape: list[str] = typer.Option([], "--shape", help="Input shape override NAME=1x4x16x16 (repeatable)."),
    threads: int | None = typer.Option(
        None, "--threads", help="Intra-op threads (default: its plan's protocol, else the runtime's)."
    ),
    batch: int = typer.Option(1, "--batch", help="Batch size for inputs with a dynamic leading dim."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed runs per model first."),
    time_budget: float | None = typer.Option(
        None, "--time-budget", help="Seconds of timing instead of --runs."
    ),
    order: str = typer.Option("interleaved", "--order", help="interleaved (run by run) or sequential."),
    spinning: bool = typer.Option(
        False, "--spinning/--no-spinning", help="ONNX Runtime thread spin-waiting."
    ),
    backend: str = typer.Option(
        "auto", "--backend", help="auto, onnxruntime-cpu|cuda|tensorrt, tensorrt, coreml."
    ),
    calibrate: bool = typer.Option(
        True, "--calibrate/--no-calibrate", help="Also time the calibration GEMM."
    ),
    spin_up: float = typer.Option(1.0, "--spin-up", help="Busy seconds before timing (a cold core is slower)."),
    until_decided: bool = typer.Option(
        False, "--until-decided", help="Two artifacts (baseline, current): time until the verdict is decided."
    ),
    threshold: str = typer.Option("5%", "--threshold", help="With --until-decided: the change to decide about."),
    block: int | None = typer.Option(
        None, "--block", help="Consecutive runs of one model per turn (default: its plan's protocol, else 1)."
    ),
) -> None:
    """Time exported artifacts: median/mean/std/p90/p99, throughput, per-image latency, memory."""
    from fine_deploy.bench.run import bench

    bench(
        artifacts, runs, json_path, steps=steps, shapes=shape, threads=threads, batch=batch, warmup=warmup,
        time_budget_s=time_budget, order=order, spinning=spinning, backend=backend, calibrate=calibrate,
        spinup_s=spin_up, until_decided=until_decided, threshold=threshold, block=block,
    )


@command("report")
def report_cmd(
    baseline: str = typer.Option(..., "--baseline", help="Baseline bench.json (or bench.json::MODEL)."),
    current: str = typer.Option(..., "--current", help="Current bench.json (or bench.json::MODEL)."),
    threshold: str = typer.Option("5%", "--threshold", help="Smallest change that counts, e.g. 5%."),
    fmt: str = typer.Option("md", "--format", help="md, json or junit."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Report file (default: stdout)."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG of the distributions."),
    normalize: bool = typer.Option(False, "--normalize", help="Divide by each run's calibration GEMM time."),
    alpha: float = typer.Option(0.01, "--alpha", help="False-alarm rate at no change."),
    beta: float = typer.Option(0.05, "--beta", help="Miss rate at a change of exactly the threshold."),
    metric: str = typer.Option("auto", "--metric", help="auto, wall, or cpu: process CPU time (CPU backends)."),
    history: list[Path] = typer.Option(
        [], "--history", help="A/A history: bench.json files (or a folder of them) of separate baseline runs."
    ),
) -> None:
    """Compare current against baseline per model; exit 1 on a regression, 3 when undecided."""
    from fine_deploy.bench.report import report

    code = report(baseline, current, threshold, fmt, output, plot, normalize, alpha, metric, history, beta).exit_code
    if code:
        raise typer.Exit(code)


@command("export")
def export_cmd(
    plan: Path = typer.Option(..., "--plan", help="plan.json written by `fine-deploy plan`."),
    format: str = typer.Option(..., "--format", help="onnx | trt | coreml | diffusers"),
    output: Path = typer.Option(..., "-o", "--output", help="Artifact directory to write."),
    supernet: Path | None = SupernetOpt,
    fp16: bool = typer.Option(False, "--fp16", help="fp16 weights (ONNX, Core ML, diffusers) / fp16 engine (trt)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Dynamic batch axis (ONNX, TensorRT)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (17..20)."),
    batch: int | None = typer.Option(None, "--batch", help="Batch size; the plan's when omitted."),
    resolution: int | None = typer.Option(None, "--resolution", help="Image side; the plan's when omitted."),
    deployment_target: str = typer.Option("iOS16", "--deployment-target", help="Core ML minimum target."),
    against: Path | None = typer.Option(None, "--against", help="The diffusers folder the supernet was converted "
                                        "from (default: the one convert recorded, when it is still there)."),
    precision: str | None = typer.Option(None, "--precision", help="fp32 | fp16 | bf16 | int8 | pal8 | pal6 | pal4 "
                                         "(what the format can write); the plan's when omitted."),
    calib: Path | None = typer.Option(None, "--calib", help="Static int8 calibration images (.npy/.safetensors "
                                      "[N, C, H, W] in [-1, 1]); the supernet's training data when omitted."),
    int8_mode: str = typer.Option("static", "--int8-mode", help="static (Q/DQ, calibrated) | dynamic (ONNX only)."),
) -> None:
    """Fold the plan's subnet into its kernel forms and write a checked artifact + manifest.json."""
    from fine_deploy.export import export
    from fine_deploy.train.data import recipe_calibration

    export(plan, format, output, supernet=supernet, fp16=fp16, dynamic_batch=dynamic_batch, opset=opset,
           batch=batch, resolution=resolution, deployment_target=deployment_target, quiet=False, against=against,
           precision=precision, calib=calib, int8_mode=int8_mode, recipe_calib=recipe_calibration)


@command("plan")
def plan_cmd(
    device: str = typer.Option(..., "--device", help="Device profile or alias (`fine-deploy devices`)."),
    mem: str = typer.Option(..., "--mem", help="Memory budget: 4GB, 3.5GiB, 512MB (device-capped)."),
    latency: str | None = typer.Option(None, "--latency", help="Latency: 20ms, 2s (per image with --steps)."),
    steps: int | None = typer.Option(None, "--steps", help="Denoising steps: makes --latency a per-image budget."),
    batch: int = typer.Option(1, "--batch", help="Batch size the plan is priced at."),
    resolution: int | None = typer.Option(None, "--resolution", help="Image side; the supernet's by default."),
    max_loss: float | None = typer.Option(None, "--max-loss", help="Fastest subnet with quality loss under this."),
    supernet: Path | None = SupernetOpt,
    offload: str = typer.Option("none", "--offload", help="A pipeline's components resident at once: none (all) | "
                                "sequential (one at a time)."),
    lut: Path | None = typer.Option(None, "--lut", help="Measured LUT; the device's measured one if present."),
    output: Path = typer.Option(..., "-o", "--output", help="plan.json to write."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON instead of the table."),
    pareto: Path | None = typer.Option(None, "--pareto", help="Write pareto.json + pareto.png to this folder."),
    precision: str = typer.Option("auto", "--precision", help="auto (choose per type among the device's "
                                  "precisions) | fp32 | fp16 | bf16 | int8 | fp8 | pal8 | pal6 | pal4 (pin one)."),
) -> None:
    """Pick ranks, widths, depth, kernel forms and precisions that fit the budgets (exact MILP)."""
    from fine_deploy.planner.plan import plan

    plan(device, mem, latency=latency, steps=steps, batch=batch, resolution=resolution, max_loss=max_loss,
         supernet=supernet, offload=offload, lut=lut, output=output, as_json=as_json, pareto=pareto,
         precision=precision)


# --- training (issue 7) --------------------------------------------------------------------------


@command("train")
def train_cmd(
    recipe: str | None = typer.Option(None, "--recipe", help="Shipped recipe (dit-digits, unet-digits, ...) or a "
                                      "YAML path."),
    output: Path = typer.Option(..., "-o", "--output", help="Supernet directory to write."),
    steps: int | None = typer.Option(None, "--steps",
                                     help="Total training steps (default: the recipe's; recovery 500)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT.ckpt/."),
    evaluate: bool = typer.Option(True, "--evaluate/--no-evaluate", help="Measure sensitivity and the metric."),
    from_supernet: Path | None = typer.Option(None, "--from-supernet", help="Recovery: a converted supernet."),
    teacher: Path | None = typer.Option(None, "--teacher",
                                        help="Recovery: the diffusers folder it was converted from."),
    data: str | None = typer.Option(None, "--data", help="Recovery: 'digits' or an image folder (default: data-free, "
                                    "the teacher's own samples)."),
    lr: float = typer.Option(2e-3, "--lr", help="Recovery: learning rate of U, V, σ."),
    batch_size: int = typer.Option(32, "--batch-size", help="Recovery: batch size."),
) -> None:
    """FINE / OFA pre-training of a supernet from a recipe, or (--from-supernet, --teacher) recovery training of a
    converted supernet by distilling its source model (under `accelerate launch` for several processes)."""
    if from_supernet is not None or teacher is not None:
        from fine_deploy.train.recover import recover

        if from_supernet is None or teacher is None or recipe is not None:
            raise FineDeployError("recovery takes --from-supernet S and --teacher DIR (and no --recipe)")
        sn = recover(from_supernet, teacher, output, data=data, steps=steps or 500, lr=lr, batch_size=batch_size,
                     resume=resume, evaluate=evaluate)
        if sn is not None:
            rec = sn.spec.provenance["recovery"]
            after = ", ".join(f"P={k} {v:.3g}" for k, v in rec["heldout_rel_mse_after"].items())
            typer.echo(f"{output}: {rec['steps']} recovery steps on {rec['data']}; held-out rel. MSE vs the teacher "
                       f"{after or 'not measured'}")
        return
    if recipe is None:
        raise FineDeployError("give --recipe NAME (pre-training) or --from-supernet S --teacher DIR (recovery)")
    from fine_deploy.train.pretrain import train

    sn = train(recipe, output, steps=steps, resume=resume, evaluate=evaluate)
    if sn is not None:
        p = sn.spec.provenance
        typer.echo(f"{output}: {p['steps']} steps, held-out loss {p.get('heldout_loss', '-')}")


@command("retrain")
def retrain_cmd(
    plan: Path = typer.Option(..., "--plan", help="plan.json from `fine-deploy plan`."),
    output: Path = typer.Option(..., "-o", "--output", help="SUBNET directory to write (supernet + plan.json)."),
    data: str | None = typer.Option(None, "--data", help="'digits' or an image folder (default: the training data)."),
    steps: int = typer.Option(200, "--steps", help="σ-only training steps."),
    fraction: float = typer.Option(0.1, "--fraction", help="Fraction of the training images used."),
    supernet: Path | None = SupernetOpt,
) -> None:
    """FINE light retraining: only the planned subnet's σ, U/V frozen; writes SUBNET with its plan."""
    from fine_deploy.train.retrain import retrain

    out = retrain(plan, output, data=data, steps=steps, fraction=fraction, supernet=supernet)
    typer.echo(f"{out}: export it with `fine-deploy export --plan {out / 'plan.json'} ...`")


# --- sample (issue 8) ----------------------------------------------------------------------------


@command("sample")
def sample_cmd(
    artifact: str = typer.Argument(..., help="Export dir, plan.json, supernet dir or `default`."),
    steps: int = typer.Option(25, "--steps", help="Sampler steps."),
    seed: int = typer.Option(0, "--seed", help="Image i uses seed + i."),
    n: int = typer.Option(16, "--n", "-n", help="Number of images."),
    output: Path = typer.Option(..., "-o", "--output", help="Grid PNG to write (sample.json beside it)."),
    compare: bool = typer.Option(False, "--compare", help="Also the full model, same seeds: diff + Fréchet."),
    sampler: str = typer.Option("ddim", "--sampler", help="ddim (deterministic) or ddpm (ancestral)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Classifier-free guidance (model's default)."),
    labels: str | None = typer.Option(None, "--labels", help="Class labels, e.g. 0,1,2 (default: 0..K-1 cycled)."),
    backend: str = typer.Option("auto", "--backend", help="auto, onnxruntime-cpu|cuda|tensorrt, tensorrt, coreml."),
    threads: int | None = typer.Option(None, "--threads", help="Intra-op threads (runtime default)."),
    supernet: Path | None = SupernetOpt,
    json_path: Path | None = typer.Option(None, "--json", help="Record file (default: OUTPUT with .json)."),
    prompt: str | None = typer.Option(None, "--prompt", help="Text prompt (a whole text-to-image pipeline)."),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="The guidance's unconditional prompt."),
) -> None:
    """Sample images from an artifact / plan / supernet; --compare puts the full model beside it."""
    from fine_deploy.sample import sample
    from fine_deploy.sample.api import parse_labels

    sample(artifact, steps=steps, seed=seed, n=n, output=output, compare=compare, sampler=sampler, guidance=guidance,
           labels=parse_labels(labels), backend=backend, threads=threads, supernet=supernet, json_path=json_path,
           prompt=prompt, negative_prompt=negative_prompt, quiet=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
