#!/usr/bin/env bash
# Prints the folders (colon-separated, for LD_LIBRARY_PATH) that hold the CUDA 13 libraries a
# `candle-cuda` program links: the runtime, cuBLAS(Lt) and cuRAND, from the machine's CUDA
# install or the nvidia-* wheels of its Python (PyTorch's). Prints nothing when none is found.
for l in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
  # shellcheck disable=SC2046
  find /usr/local/cuda*/ $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) \
    -name "$l" 2>/dev/null | head -1 | xargs -r dirname
done | sort -u | paste -sd:
