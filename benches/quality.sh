#!/usr/bin/env bash
# The pruning quality table (issue 19): SmolLM2-135M-Instruct pruned by magnitude, Wanda and
# SparseGPT at 50/60/70% and 2:4 (and Wanda+OWL at 70%), each written as a sparse checkpoint,
# evaluated by perplexity on the evaluation text and timed decoding (batch 1, the dense
# model stored dense, pruned ones sparse); appends CSV rows to $CSV.
#
#   benches/quality.sh                       # GPU if present, else CPU
#   EVAL_TOKENS=20480 CALIB_SAMPLES=32 CALIB_LEN=256 CSV=quality.csv benches/quality.sh
#   DENSE_ROW=0 METHODS=sparsegpt SPECS="0.6:unstructured 0.5:2:4" benches/quality.sh   # part of it
#                                   (the Wanda + OWL row at 70% always runs)
#
# Needs the model (.ci/fetch-smollm2) and the texts (.ci/fetch-texts); fetches both. On a GPU
# machine without Rust: SKIP_BUILD=1 BIN=gpu-bundle/bin/sparse-tc MODEL=path/to.gguf, with
# .cache/texts carried.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  . .ci/env.sh
  cargo build --release --bin sparse-tc >&2
  .ci/fetch-texts >/dev/null
fi
model=${MODEL:-$(.ci/fetch-smollm2 | tail -1)}
bin=${BIN:-target/release/sparse-tc}
csv=${CSV:-quality.csv}
work=${WORK:-$(mktemp -d)}
eval_tokens=${EVAL_TOKENS:-20480}
context=${CONTEXT:-512}
samples=${CALIB_SAMPLES:-32}
len=${CALIB_LEN:-256}
[[ -f $csv ]] || echo "device,model,method,pattern,sparsity,owl,calib_tokens,eval_tokens,context,perplexity,prune_s,decode_tok_s" > "$csv"

row() { # method pattern sparsity owl checkpoint prune_seconds
  local out ppl device scored
  out=$($bin perplexity --model "$5" --text .cache/texts/eval.txt --context "$context" --max-tokens "$eval_tokens" 2>/dev/null | tail -1)
  echo "$out" >&2
  ppl=$(sed -E 's/.*perplexity ([0-9.]+).*/\1/' <<<"$out")
  scored=$(sed -E 's/.* over ([0-9]+) tokens.*/\1/' <<<"$out")
  device=$(sed -E 's/.* on (.*) \((sm_|[0-9]+ threads).*/\1/; s/.*\[[a-z]+ on //' <<<"$out")
  local format=sparse; [[ $1 == dense ]] && format=dense
  local speed
  speed=$($bin generate --model "$5" --format "$format" --prompt "Once upon a time" --max-tokens "${GEN_TOKENS:-128}" 2>/dev/null \
    | grep -oE '[0-9.]+ tokens/s' | head -1 | cut -d' ' -f1)
  echo "$device,SmolLM2-135M-Instruct,$1,$2,$3,$4,$((samples * len)),$scored,$context,$ppl,$6,${speed:-}" >> "$csv"
}

[[ ${DENSE_ROW:-1} == 1 ]] && row dense - 0 - "$model" 0
for method in ${METHODS:-magnitude wanda sparsegpt}; do
  for spec in ${SPECS:-0.5:unstructured 0.6:unstructured 0.7:unstructured 0.5:2:4}; do
    s=${spec%%:*}; pattern=${spec#*:}
    ck="$work/$method-$s-${pattern/:/of}"
    t0=$(date +%s.%N)
    $bin prune --model "$model" --method "$method" --sparsity "$s" --pattern "$pattern" \
      --calib-samples "$samples" --calib-len "$len" --out "$ck" 2>&1 | grep -E '^(pruned|wrote)' >&2
    t1=$(date +%s.%N)
    row "$method" "$pattern" "$s" - "$ck" "$(awk "BEGIN{print $t1 - $t0}")"
    rm -rf "$ck"
  done
done
ck="$work/wanda-owl-0.7"
t0=$(date +%s.%N)
$bin prune --model "$model" --method wanda --sparsity 0.7 --owl --calib-samples "$samples" --calib-len "$len" --out "$ck" 2>&1 | grep -E '^(pruned|wrote)' >&2
t1=$(date +%s.%N)
row wanda unstructured 0.7 owl "$ck" "$(awk "BEGIN{print $t1 - $t0}")"
rm -rf "$ck"
