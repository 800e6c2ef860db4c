"""Every benchmark script and its results file; regenerate them, or check which are stale.

    python -m benchmarks                   list the scripts and their results files
    python -m benchmarks --run NAME|all    re-run one script (or all, cheapest first) with its default arguments
    python -m benchmarks --check           list the stale results files (exit 1 if any)

`--run all` takes hours on a CPU host (real_size converts DiT-XL/2-sized models).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from benchmarks.provenance import HERE, RESULTS, SCRIPTS, check_results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--run", metavar="NAME|all", choices=[*SCRIPTS, "all"], help="re-run with default arguments")
    ap.add_argument("--check", action="store_true", help="list stale results files; exit 1 if any")
    args = ap.parse_args(argv)
    if args.run:
        failed = []
        for name in SCRIPTS if args.run == "all" else [args.run]:
            print(f"== python benchmarks/{name}.py", flush=True)
            # from the repository root: some scripts' default --json is relative to it
            if subprocess.run([sys.executable, str(HERE / f"{name}.py")], cwd=HERE.parent).returncode:
                failed.append(name)
        if failed:
            print(f"failed: {', '.join(failed)}")
        return 1 if failed else 0
    if args.check:
        stale = {f: why for f, why in check_results().items() if why}
        for f, why in stale.items():
            print(f"stale  {f}: {'; '.join(why)}")
        print(f"{len(stale)} stale results file(s)" if stale else "every results file is fresh")
        return 1 if stale else 0
    for name in SCRIPTS:
        out = RESULTS / f"{name}.json"
        missing = "" if out.is_file() else " (missing)"
        print(f"{name:<20} benchmarks/{name}.py -> {out.relative_to(HERE.parent)}{missing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
