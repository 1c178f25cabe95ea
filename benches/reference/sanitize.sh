#!/usr/bin/env bash
# compute-sanitizer over the GPU suites of gpu-bundle/ (run from the repo root on the GPU
# machine): every tool in TOOLS over the kernel suites (dense, spmm, bitmap) with both PTX
# builds, then memcheck over the other GPU suites (ops, attention, model, graph, prune,
# threads, interop).
# Appends to $OUT/sanitizer.log; one summary line per run on stdout.
set -uo pipefail
out="${OUT:-$PWD/gpu-logs}"; mkdir -p "$out"
t=gpu-bundle/tests
run() { # tool ptx suite
  local name="$1 $3${2:+ (SPARSE_TC_PTX=$2)}"
  SPARSE_TC_PTX=$2 SPARSE_TC_SANITIZER=1 compute-sanitizer --tool "$1" --error-exitcode 99 "$t/$3" --test-threads=1 > "$out/s.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc $(grep -E 'ERROR SUMMARY|test result' "$out/s.log" | tr '\n' ' ')"
  { echo "=== $name (rc=$rc)"; cat "$out/s.log"; } >> "$out/sanitizer.log"; rm -f "$out/s.log"
}
for tool in ${TOOLS:-memcheck racecheck synccheck initcheck}; do
  for ptx in "" sm_80; do
    for suite in ${KERNEL_SUITES:-dense spmm bitmap}; do [[ -x $t/$suite ]] && run "$tool" "$ptx" "$suite"; done
  done
done
for suite in ${MODEL_SUITES:-ops attention model graph prune threads interop}; do [[ -x $t/$suite ]] && run memcheck "" "$suite"; done
