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
    calib: Path | None = typer.Option(None, "--calib", help="Images (.npy/.safetensors) for gradient importance."),
) -> None:
    """Turn a dense diffusers model into a supernet (shared-factor fit + channel orders)."""
    from fine_deploy.supernet.convert import convert

    convert(from_diffusers, output, max_rank=max_rank, als_iters=als_iters, calib=calib)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
