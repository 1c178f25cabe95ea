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
#   bash benches/reference/device_stage.sh e2e-70b    # bench-e2e: LLaMA-2-70B and OPT-66B at 70% on one GPU
#   bash benches/reference/device_stage.sh e2e-bitmap # bench-e2e: LLaMA-2-7B and 13B, bitmap vs Tiled-CSL linears
#   bash benches/reference/device_stage.sh model      # the model suite, both PTX builds, and memcheck over it
#   bash benches/reference/device_stage.sh demo       # the README demo's steps, three questions, perplexity
#   bash benches/reference/device_stage.sh hf         # Hugging Face transformers anchor rows
#   bash benches/reference/device_stage.sh quality    # SmolLM2 pruning table (needs .cache/models, .cache/texts carried)
#   bash benches/reference/device_stage.sh linear     # kernel benchmark with every format vs cuBLAS
#   bash benches/reference/device_stage.sh bitmap-ab  # the bitmap suite (both builds), then the kernel against
#                                                     # a previous build's bench_linear (bin/bench_linear_base)
#   bash benches/reference/device_stage.sh ncu-bitmap # Nsight Compute profile of the bitmap kernel (27648x9216, N=8, 50%)
#   bash benches/reference/device_stage.sh tune-dense # every dense plan on the 7B decode shapes
#   bash benches/reference/device_stage.sh tune-sparse # every bitmap / Tiled-CSL plan (warp heights, splits,
#                                                     # block counts) on the 7B/13B layers where each format is used
#   bash benches/reference/device_stage.sh candle     # candle's CUDA backend with SparseLinear: test, example, memcheck
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
    # LLaMA-2-70B and OPT-66B at 70%: 89 / 94 GB in Tiled-CSL, which fits one 141 GB H200
    # (dense needs 137 GB); on an 80 GB GPU they load in the bitmap format (about 51 GB).
    $b/bin/sparse-tc bench-e2e --models llama-2-70b,opt-66b --batch 1,8,16 --sparsity 0.7 --csv "$out/e2e.csv" ;;
  e2e-bitmap)
    # Every model linear in the bitmap format against Tiled-CSL, LLaMA-2-7B and 13B.
    for f in sparse bitmap; do
      $b/bin/sparse-tc bench-e2e --models llama-2-7b,llama-2-13b --batch 1,8 --sparsity 0.5,0.7 \
        --sparse-format $f --csv "$out/e2e_bitmap.csv"
    done ;;
  model)
    # The model suite in both PTX builds (its SmolLM2 tests run when MODEL's GGUF is at
    # .cache/models), then memcheck over it.
    for ptx in "" sm_80; do
      SPARSE_TC_PTX=$ptx $b/tests/model --test-threads=1 --show-output > "$out/model${ptx:+_$ptx}.log" 2>&1
      echo "model ${ptx:-default build}: rc=$? $(grep -E '^test result|SKIPPED' "$out/model${ptx:+_$ptx}.log" | tr '\n' ' ')"
    done
    KERNEL_SUITES=" " MODEL_SUITES=model bash benches/reference/sanitize.sh ;;
  demo)
    # The README demo's steps with the bundle's binary: Wanda 50% (default calibration: 128
    # windows on a GPU), then dense and sparse answers to a few questions, and the pruned
    # model's perplexity on the evaluation text.
    bin=$b/bin/sparse-tc; ck=/tmp/demo-wanda-0.5
    /usr/bin/time -f "prune %e s" $bin prune --model "${MODEL:?MODEL=path to the GGUF}" --method wanda --sparsity 0.5 --out $ck
    for q in "What is the capital of France?" "Why is the sky blue?" "Give me three tips for staying healthy."; do
      $bin generate --model "$MODEL" --chat --prompt "$q" --format dense --max-tokens 48
      $bin generate --model $ck --chat --prompt "$q" --format sparse --max-tokens 48
    done
    $bin perplexity --model $ck --format sparse --text .cache/texts/eval.txt --context 512 ;;
  hf)
    python3 benches/reference/hf_bench.py --models llama-2-7b,llama-2-13b --batch 1,8,16,32 \
      --csv "$out/hf.csv" ;;
  quality)
    BIN=$b/bin/sparse-tc CSV="$out/quality.csv" WORK=/tmp/quality SKIP_BUILD=1 MODEL=${MODEL:?MODEL=path to the GGUF} bash benches/quality.sh ;;
  linear)
    $b/bin/bench_linear --shapes 36864x9216,9216x36864,27648x9216,11008x4096,4096x11008,4096x4096 \
      --n 1,8,16,32,64 --sparsity 0.5,0.6,0.7,0.8,0.9 --rows-pattern none --csv "$out/linear.csv" ;;
  bitmap-ab)
    # Issue 20's kernel: its suite in both PTX builds, then the benchmark alternated twice
    # with the bench_linear of the commit before (carried as $b/bin/bench_linear_base), on
    # the target shapes; compare the two CSVs' bitmap rows (each against its own cuBLAS).
    for ptx in "" sm_80; do
      SPARSE_TC_PTX=$ptx $b/tests/bitmap --test-threads=1 > "$out/bitmap${ptx:+_$ptx}.log" 2>&1
      echo "bitmap ${ptx:-default build}: rc=$? $(grep -E '^test result|SKIPPED' "$out/bitmap${ptx:+_$ptx}.log" | tr '\n' ' ')"
    done
    args=(--shapes "${AB_SHAPES:-27648x9216,36864x9216,9216x36864,11008x4096}" --n "${AB_N:-8,16}"
      --sparsity "${AB_SPARSITY:-0.5,0.7,0.9}" --dtype f16 --rows-pattern none)
    for round in 1 2; do
      if [[ -x $b/bin/bench_linear_base ]]; then
        $b/bin/bench_linear_base "${args[@]}" --csv "$out/bitmap_ab_base.csv" > "$out/bitmap_ab_base_$round.log" 2>&1
        echo "base round $round: rc=$?"
      fi
      $b/bin/bench_linear "${args[@]}" --csv "$out/bitmap_ab_new.csv" > "$out/bitmap_ab_new_$round.log" 2>&1
      echo "new round $round: rc=$?"
    done ;;
  ncu-bitmap)
    ncu --kernel-name regex:bitmap_linear --launch-count 1 --section SpeedOfLight --section Occupancy \
      --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
      --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section InstructionStats \
      $b/bin/bench_linear --shapes 27648x9216 --n 8 --sparsity "${NCU_SPARSITY:-0.5}" --dtype f16 \
      --rows-pattern none --reps 50 --csv /tmp/ncu_bench.csv > "$out/ncu_bitmap_${NCU_SPARSITY:-0.5}.txt" 2>&1
    echo "ncu: rc=$?" ;;
  tune-dense)
    # Every compiled dense block shape and split count on the decode shapes of LLaMA-2-7B
    # (q|k|v, o, gate|up, down, LM head) at 1 and 8 tokens.
    $b/bin/bench_linear --shapes 12288x4096,4096x4096,22016x4096,4096x11008,32000x4096 --n 1,8 \
      --no-sparse --dtype f16 --tune dense --csv "$out/tune_dense.csv" ;;
  tune-sparse)
    # The plans behind `sparse::bitmap::launch` (50–70%) and the Tiled-CSL defaults (80–90%)
    # on the LLaMA-2-7B/13B layers, 8 and 16 tokens (NOTES 74, 75).
    shapes=4096x4096,11008x4096,4096x11008,12288x4096,22016x4096,15360x5120,5120x13824,27648x5120
    $b/bin/bench_linear --shapes $shapes --n 8,16 --sparsity 0.5,0.6,0.7 --dtype f16 --rows-pattern none \
      --tune bitmap --csv "$out/tune_bitmap.csv"
    $b/bin/bench_linear --shapes $shapes --n 8,16 --sparsity 0.8,0.9 --dtype f16 --rows-pattern none \
      --tune sparse --csv "$out/tune_sparse.csv" ;;
  candle)
    # Built with the feature candle-cuda, which links CUDA 13 libraries: found on the machine.
    libs=$(bash benches/reference/cuda_libs.sh)
    echo "libraries from: $libs"
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    $b/tests/candle --test-threads=1 --show-output > "$out/candle_test.log" 2>&1
    echo "candle test: rc=$? $(grep -E '^test result|SKIPPED|^test .*(ok|FAILED)$' "$out/candle_test.log" | tr '\n' ' ')"
    $b/bin/candle 2>&1 | tee "$out/candle_example.log"; echo "candle example: rc=${PIPESTATUS[0]}"
    SPARSE_TC_SANITIZER=1 compute-sanitizer --tool memcheck --error-exitcode 99 $b/tests/candle --test-threads=1 \
      > "$out/candle_memcheck.log" 2>&1
    echo "candle memcheck: rc=$? $(tail -n 1 "$out/candle_memcheck.log")" ;;
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
