#!/usr/bin/env bash
# Latency-regression gate on the project's own exported model, the way CI stores a baseline: separate
# `bench` processes, compared by `report` through the between-run noise model learned from A/A history.
#
#   1. export the default model (embedded supernet) from this checkout: the "current" artifact;
#   2. export it from the baseline code too (FD_GATE_BASE_REF, default origin/main, else main, unpacked
#      with git archive) unless FD_GATE_BASELINE_ARTIFACT names a stored export; when that ref is missing or has
#      this checkout's tree, the baseline is this export itself (an A/A run);
#   3. bench the baseline FD_GATE_HISTORY times, each in a process of its own: the A/A history that
#      teaches `report` this machine's between-run noise;
#   4. bench the current artifact once, in its own process, and `report` it against the first baseline
#      run with --history: exit 0 passes, 1 is a regression, 3 undecided -> step 5;
#   5. undecided: bench baseline and current interleaved with --until-decided and report on that file;
#   6. self-test (FD_GATE_SELFTEST=1, default): inject real extra layers into the current model
#      (python -m fine_deploy.bench.slowdown: a twin of every 2nd MatMul/Gemm/Conv, ~ +10% here) and
#      require the same gate to say "regressed"; a gate that cannot fail fails here.
# Exit: the gate's verdict (0 pass, 1 regression, 3 undecided), or 1 when the self-test was not caught.
# Env: FD_GATE_CURRENT_ARTIFACT (skip step 1), FD_GATE_RUNS (rounds per bench, 300), THRESHOLD (5%).
# Usage: scripts/ci_regression_check.sh [OUT_DIR]   (artifacts, bench files and reports stay in OUT_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
OUT="${1:-$(mktemp -d)}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
FD=(python -m fine_deploy.cli)   # this checkout's package (the cwd shadows any other install)
RUNS="${FD_GATE_RUNS:-300}"
HISTORY="${FD_GATE_HISTORY:-8}"
THRESHOLD="${THRESHOLD:-5%}"
# --block 1: the noise model and its A/A history were learned one run per turn
BENCH_ARGS=(--runs "$RUNS" --threads 1 --warmup 10 --block 1)
start=$(date +%s)

export_default() {  # $1: source tree, $2: output export dir
  (cd "$1" && "${FD[@]}" plan --device host --mem 4GB -o "$2.plan.json" >/dev/null \
    && "${FD[@]}" export --plan "$2.plan.json" --format onnx -o "$2" >/dev/null)
}

# 1. current
if [ -n "${FD_GATE_CURRENT_ARTIFACT:-}" ]; then
  CUR="$OUT/current"; rm -rf "$CUR"; cp -r "$FD_GATE_CURRENT_ARTIFACT" "$CUR"
else
  CUR="$OUT/current"; rm -rf "$CUR"; export_default "$ROOT" "$CUR"
fi

# 2. baseline
BASE="$OUT/baseline"; rm -rf "$BASE"
if [ -n "${FD_GATE_BASELINE_ARTIFACT:-}" ]; then
  cp -r "$FD_GATE_BASELINE_ARTIFACT" "$BASE"; how="stored export $FD_GATE_BASELINE_ARTIFACT"
else
  ref="${FD_GATE_BASE_REF:-}"
  if [ -z "$ref" ]; then
    for r in origin/main main; do
      if git rev-parse -q --verify "$r^{commit}" >/dev/null 2>&1; then ref="$r"; break; fi
    done
  fi
  if [ -n "$ref" ] && [ "$(git rev-parse "$ref^{tree}")" != "$(git rev-parse "HEAD^{tree}")" ]; then
    rm -rf "$OUT/base-src" && mkdir -p "$OUT/base-src"
    git archive "$ref" | tar -x -C "$OUT/base-src"   # the baseline's code, no git metadata touched
    export_default "$OUT/base-src" "$BASE"
    rm -rf "$OUT/base-src"
    how="exported from $ref"
  else
    cp -r "$CUR" "$BASE"; how="this checkout (no other baseline ref: an A/A run)"
  fi
fi
echo "ci_regression_check: baseline $how; current $CUR"

# 3. A/A history: separate processes of the baseline
mkdir -p "$OUT/history"
for i in $(seq 1 "$HISTORY"); do
  "${FD[@]}" bench "$BASE" "${BENCH_ARGS[@]}" --json "$OUT/history/baseline-$i.json" >/dev/null
done

gate() {  # $1: current bench.json, $2: report stem, [$3: current artifact for --until-decided]
  set +e
  "${FD[@]}" report --baseline "$OUT/history/baseline-1.json" --current "$1" --history "$OUT/history" \
    --threshold "$THRESHOLD" -o "$2.md" --plot "$2.png"
  local rc=$?
  "${FD[@]}" report --baseline "$OUT/history/baseline-1.json" --current "$1" --history "$OUT/history" \
    --threshold "$THRESHOLD" --format junit -o "$2.xml"
  if [ "$rc" -eq 3 ] && [ -n "${3:-}" ]; then
    echo "ci_regression_check: $2 undecided from separate runs; benching both interleaved until decided" >&2
    "${FD[@]}" bench "$BASE" "$3" "${BENCH_ARGS[@]}" --until-decided --threshold "$THRESHOLD" \
      --time-budget 240 --json "$2.decide.json" >/dev/null
    local b c
    b="$(basename "$BASE")"; c="$(basename "$3")"
    "${FD[@]}" report --baseline "$2.decide.json::$b" --current "$2.decide.json::$c" \
      --threshold "$THRESHOLD" -o "$2.decide.md"
    rc=$?
    cat "$2.decide.md" >> "$2.md"
  fi
  set -e
  return "$rc"
}

# 4./5. the gate
"${FD[@]}" bench "$CUR" "${BENCH_ARGS[@]}" --json "$OUT/current.json"
rc=0; gate "$OUT/current.json" "$OUT/report" "$CUR" || rc=$?
cat "$OUT/report.md"

# 6. self-test: the gate must fail on a real slowdown of this model
if [ "${FD_GATE_SELFTEST:-1}" = "1" ]; then
  rm -rf "$OUT/slow"
  python -m fine_deploy.bench.slowdown "$CUR" "$OUT/slow" --every 2
  "${FD[@]}" bench "$OUT/slow" "${BENCH_ARGS[@]}" --json "$OUT/slow.json" >/dev/null
  src=0; gate "$OUT/slow.json" "$OUT/selftest" "$OUT/slow" || src=$?
  if [ "$src" -ne 1 ]; then
    cat "$OUT/selftest.md"
    echo "ci_regression_check: FAIL: the gate did not flag the injected slowdown (report exit $src)" >&2
    exit 1
  fi
  echo "ci_regression_check: self-test OK: the injected slowdown was flagged"
fi

echo "ci_regression_check: $(( $(date +%s) - start )) s, results in $OUT"
case "$rc" in
  0) echo "ci_regression_check: OK: no latency regression" ;;
  1) echo "ci_regression_check: FAIL: latency regression (see $OUT/report.md)" >&2 ;;
  3) echo "ci_regression_check: FAIL: undecided even after --until-decided; re-run the job" >&2 ;;
  *) echo "ci_regression_check: FAIL: report exited $rc" >&2 ;;
esac
exit "$rc"
