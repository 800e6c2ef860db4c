"""The API behind `fine-deploy devices` and `fine-deploy profile` (the CLI only calls these)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fine_deploy.console import wide_console
from fine_deploy.cost.lut import Lut


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def devices(as_json: bool = False, profiles: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Print the device profiles and their aliases (the host is listed without probing it)."""
    from rich.table import Table

    from fine_deploy.cost.profiles import list_profiles

    rows = list_profiles(profiles)
    if as_json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return rows
    table = Table(title="device profiles")
    for col in ("name", "aliases", "runtime", "precisions", "fp32 / fp16 TFLOP/s", "bandwidth", "usable memory"):
        table.add_column(col, no_wrap=col in ("name", "runtime"))
    for r in rows:
        precisions = ", ".join(r.get("precisions") or r.get("dtypes") or [])
        if "peak_flops" not in r:
            table.add_row(r["name"], ", ".join(map(str, r["aliases"])), r["runtime"], precisions,
                          "probed on first use", "", "")
            continue
        peak = r["peak_flops"]
        flops = f"{peak['fp32'] / 1e12:.2f}" + (f" / {peak['fp16'] / 1e12:.1f}" if "fp16" in peak else "")
        table.add_row(
            r["name"],
            ", ".join(map(str, r["aliases"])),
            r["runtime"],
            precisions,
            flops,
            f"{r['memory_bandwidth'] / 1e9:.0f} GB/s",
            _gib(r["usable_memory_bytes"]),
        )
    wide_console().print(table)
    return rows


def supernet_choices(supernet: str | os.PathLike | None = None) -> tuple[list[Any], dict[str, list[int]]]:
    """The layer shapes and per-shape rank options the planner prices for a supernet (the embedded
    default when None): every matrix at full width and at each option of each width knob alone,
    with its type's rank options (those a factored form can take, <= min(m1, m2))."""
    from fine_deploy.cost.trace import layer_shapes
    from fine_deploy.supernet.core import load_supernet

    sn = load_supernet(supernet)
    type_of = {m["name"]: t for t in sn.types for m in t.matrices}
    configs: list[dict[str, Any]] = [{}]
    for knob, options in (sn.spec.widths.get("knobs") or {}).items():
        configs += [{"widths": {knob: w}} for w in options]
    shapes, ranks = [], {}
    for config in configs:
        for name, shape in layer_shapes(sn, config):
            if name not in type_of:
                continue  # a layer that stays dense: the planner does not price it from the LUT
            shapes.append(shape)
            ok = sorted(r for r in type_of[name].rank_options if r <= shape.max_rank())
            ranks[shape.key()] = sorted(set(ranks.get(shape.key(), [])) | set(ok))
    return shapes, ranks


def profile_command(
    device: str,
    output: Path | None = None,
    runtime: str | None = None,
    supernet: Path | None = None,
    resume: bool = True,
) -> Lut:
    """Measure the LUT of `device` on this machine and print where it went and what it says."""
    from rich.console import Console

    from fine_deploy.cost.profiler import profile
    from fine_deploy.cost.profiles import resolve_name
    from fine_deploy.validate import output_file

    output_file(output, "-o", "lut.json")
    console = Console(stderr=True)
    name = resolve_name(device)
    if name != device:
        console.print(f"{device} -> {name}")
    shapes, ranks = supernet_choices(supernet)
    lut = profile(name, output, shapes=shapes, ranks=ranks, runtime=runtime, resume=resume)
    cal, p = lut.calibration, lut.protocol
    console.print(
        f"{len(lut.entries)} layer choices measured on {lut.runtime} "
        f"({p['estimator']} of {p['rounds'] * p['runs_per_round']} interleaved runs, "
        f"{p['threads']} thread, {p['clock']} clock); "
        f"whole-subnet check: median error {cal.get('median_abs_rel_error', float('nan')):.1%} "
        f"on {cal.get('subnets', 0)} subnets"
    )
    return lut
