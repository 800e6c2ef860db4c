#!/usr/bin/env bash
# Latency-regression gate that cannot be flaky because of the CI machine: builds a tiny real ONNX
# artifact A, an identical copy A', and B with +10% work; benches all three interleaved run by run
# in ONE process (so machine drift hits all alike), then reports A' against A and B against A.
#   - A' vs A must not be "regressed" (else the measurement itself is broken): exit 1.
#   - B vs A should be "regressed"; a miss is printed as a warning, not a failure.
# Usage: scripts/ci_regression_check.sh [OUT_DIR]   (reports and bench.json are kept in OUT_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-$(mktemp -d)}"
mkdir -p "$OUT"
start=$(date +%s)

python - "$OUT" <<'PY'
import json, shutil, sys
from pathlib import Path
from fine_deploy.bench.synthetic import write_matmul_chain

out = Path(sys.argv[1])
for name, depth, seed in (("a", 10, 0), ("b", 11, 1)):
    d = out / name
    # static 256x256 input: a folder with one model file and no manifest (a manifest.json is an export's,
    # with the fields fine_deploy.schemas.MANIFEST requires)
    write_matmul_chain(d / "model.onnx", depth, size=256, rows=256, seed=seed)
shutil.rmtree(out / "a_again", ignore_errors=True)
shutil.copytree(out / "a", out / "a_again")
PY

# One intra-op thread: on a runner shared with other jobs, a multi-threaded run waits for its slowest
# preempted thread. The gate compares process CPU time (--metric cpu), which other jobs taking the
# cores do not inflate; the wall-time report is printed beside it.
fine-deploy bench "$OUT/a" "$OUT/a_again" "$OUT/b" --runs 60 --warmup 5 --threads 1 --json "$OUT/bench.json"

set +e
A="$OUT/bench.json::a"
fine-deploy report --baseline "$A" --current "$OUT/bench.json::a_again" --metric cpu -o "$OUT/aa.md"
aa=$?
fine-deploy report --baseline "$A" --current "$OUT/bench.json::a_again" --metric cpu --format junit -o "$OUT/aa.xml"
fine-deploy report --baseline "$A" --current "$OUT/bench.json::b" --metric cpu -o "$OUT/ab.md"
ab=$?
fine-deploy report --baseline "$A" --current "$OUT/bench.json::b" -o "$OUT/ab-wall.md"
set -e
cat "$OUT/aa.md" "$OUT/ab.md" "$OUT/ab-wall.md"
echo "ci_regression_check: $(( $(date +%s) - start )) s, results in $OUT"
if [ "$aa" -eq 1 ]; then
  echo "ci_regression_check: FAIL: the same model against itself was judged a regression" >&2
  exit 1
elif [ "$aa" -ne 0 ]; then
  echo "ci_regression_check: FAIL: report exited $aa" >&2
  exit "$aa"
fi
if [ "$ab" -ne 1 ]; then
  echo "ci_regression_check: warning: +10% work was not flagged (noisy machine?); not failing" >&2
fi
echo "ci_regression_check: OK"
