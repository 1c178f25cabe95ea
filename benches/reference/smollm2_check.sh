#!/usr/bin/env bash
# The SmolLM2 end-to-end check on a GPU machine (run from the repo root after
# `.ci/gpu-bundle` was unpacked there; needs PyPI `gguf` for transformers' GGUF loader):
# the demo (pruned 50%, dense and sparse), our logits and 32 greedy tokens on five prompts,
# the safetensors export, the pruned model stored sparse vs dense, and the Hugging Face
# reference comparison (benches/reference/hf_check.py). Logs to $OUT (or ./gpu-logs).
#
#   MODEL=path/to/SmolLM2-135M-Instruct.Q4_1.gguf bash benches/reference/smollm2_check.sh
set -uo pipefail
out="${OUT:-$PWD/gpu-logs}"; mkdir -p "$out"
bin=gpu-bundle/bin/sparse-tc
model="${MODEL:?MODEL=path to the GGUF}"
prompts=("The capital of France is" "def fibonacci(n):" "Water boils at a temperature of"
         "Once upon a time, there was a little" "The three primary colors are")
args=(); for p in "${prompts[@]}"; do args+=(--prompt "$p"); done
work="$(mktemp -d)"
$bin generate --model "$model" --chat --prompt "What is the capital of France?" --sparsity 0.5 --format both --max-tokens 48 2>&1 | tee "$out/demo.log"
$bin logits --model "$model" "${args[@]}" --generate 32 --format dense --out "$work/ours" 2>&1 | tail -2
$bin logits --model "$model" "${args[@]}" --generate 32 --sparsity 0.5 --format dense --out "$work/pruned_dense" 2>&1 | tail -1
$bin logits --model "$model" "${args[@]}" --generate 32 --sparsity 0.5 --format sparse --out "$work/pruned_sparse" 2>&1 | tail -1
$bin export --model "$model" --out "$work/export" 2>&1 | tail -1
python3 benches/reference/hf_check.py --gguf "$model" --ours "$work/ours" --export "$work/export" \
  --sparse "$work/pruned_sparse" --dense-pruned "$work/pruned_dense" --report "$out/hf_check.json" 2>&1 \
  | grep -v Warning | tee "$out/hf_check.log"
cp "$work"/*.json "$out/"
