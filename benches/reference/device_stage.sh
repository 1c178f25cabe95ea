#!/usr/bin/env bash
# One stage of a GPU session, each sized to fit one 10-minute device call. Runs from the repo
# root on the GPU machine with gpu-bundle/ unpacked there (`.ci/gpu-bundle` here; carry it
# packed, e.g. `tar -cJf .cache/carry/bundle.tar.xz -C gpu-bundle .`) and writes logs and
# CSVs to $OUT (or ./gpu-logs).
#
#   bash benches/reference/device_stage.sh tests      # every GPU suite, both PTX builds
#   bash benches/reference/device_stage.sh sanitize   # compute-sanitizer (benches/reference/sanitize.sh)
#   bash benches/reference/device_stage.sh e2e-small  # bench-e2e: LLaMA-2-7B and 13B, batch 1–32, 0–90%
#   bash benches/reference/device_stage.sh e2e-large  # bench-e2e: LLaMA-2-70B and OPT-66B (what fits)
#   bash benches/reference/device_stage.sh e2e-70b    # bench-e2e: LLaMA-2-70B dense (refused) and 70% on one H200
#   bash benches/reference/device_stage.sh hf         # Hugging Face transformers anchor rows
#   bash benches/reference/device_stage.sh quality    # SmolLM2 pruning table (needs .cache/models, .cache/texts carried)
#   bash benches/reference/device_stage.sh linear     # kernel benchmark with every format vs cuBLAS
#   bash benches/reference/device_stage.sh tune-dense # every dense plan on the 7B decode shapes
#   bash benches/reference/device_stage.sh nccl       # tensor parallel over NCCL: the GPU test, then bench-e2e --gpus
#                                                     # on every GPU count the machine has (2, 4, 8)
set -uo pipefail
out="${OUT:-$PWD/gpu-logs}"; mkdir -p "$out"
b=gpu-bundle
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
case "${1:?stage}" in
  tests)
    SANITIZE=0 SKIP_BENCH=1 bash $b/run-all.sh
    # cudarc allocates, we compute, cudarc reads back: exits non-zero on a mismatch.
    $b/bin/cudarc 2>&1 | tee "$out/cudarc.log" ;;
  sanitize)
    bash benches/reference/sanitize.sh ;;
  e2e-small)
    $b/bin/sparse-tc bench-e2e --models llama-2-7b,llama-2-13b --batch 1,8,16,32 \
      --sparsity 0,0.5,0.7,0.8,0.9 --csv "$out/e2e.csv" ;;
  e2e-large)
    $b/bin/sparse-tc bench-e2e --models llama-2-70b,opt-66b --batch 1,8,16 \
      --sparsity 0,0.7,0.8,0.9 --csv "$out/e2e.csv" ;;
  e2e-70b)
    # LLaMA-2-70B at 70%: 82 GB of packed weights, one 141 GB H200 (dense needs 137 GB).
    $b/bin/sparse-tc bench-e2e --models llama-2-70b --batch 1,8,16 --sparsity 0,0.7 --csv "$out/e2e.csv" ;;
  hf)
    python3 benches/reference/hf_bench.py --models llama-2-7b,llama-2-13b --batch 1,8,16,32 \
      --csv "$out/hf.csv" ;;
  quality)
    BIN=$b/bin/sparse-tc CSV="$out/quality.csv" WORK=/tmp/quality SKIP_BUILD=1 MODEL=${MODEL:?MODEL=path to the GGUF} bash benches/quality.sh ;;
  linear)
    $b/bin/bench_linear --shapes 36864x9216,9216x36864,27648x9216,11008x4096,4096x11008,4096x4096 \
      --n 1,8,16,32,64 --sparsity 0.5,0.6,0.7,0.8,0.9 --rows-pattern none --csv "$out/linear.csv" ;;
  tune-dense)
    # Every compiled dense block shape and split count on the decode shapes of LLaMA-2-7B
    # (q|k|v, o, gate|up, down, LM head) at 1 and 8 tokens.
    $b/bin/bench_linear --shapes 12288x4096,4096x4096,22016x4096,4096x11008,32000x4096 --n 1,8 \
      --no-sparse --dtype f16 --tune dense --csv "$out/tune_dense.csv" ;;
  nccl)
    # NCCL from PyTorch's wheel; NVLink multicast off (the device notes require it).
    nccl_lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(nvidia.nccl.__path__[0], "lib"))')
    export LD_LIBRARY_PATH="$nccl_lib:${LD_LIBRARY_PATH:-}" NCCL_NVLS_ENABLE=0
    $b/tests/tensor_parallel --test-threads=1 --show-output 2>&1 | tee "$out/nccl_test.log"
    gpus=$(nvidia-smi -L | wc -l)
    for n in 2 4 8; do
      (( n <= gpus )) || continue
      $b/bin/sparse-tc bench-e2e --gpus $n --models llama-2-70b,opt-66b --batch 8,16,32,64 \
        --sparsity 0,0.7,0.8 --csv "$out/e2e_tp.csv"
    done ;;
  *)
    echo "unknown stage $1" >&2; exit 2 ;;
esac
