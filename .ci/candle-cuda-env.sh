# shellcheck shell=bash
# Build environment for the feature `candle-cuda` (candle's CUDA backend) on a machine without
# CUDA. SOURCE it after .ci/env.sh:
#
#     . .ci/env.sh && . .ci/candle-cuda-env.sh
#     cargo build --release --features candle-cuda --example candle
#
# candle-kernels compiles CUDA C++ with nvcc, and cudarc (candle's driver crate) links
# libcuda, cuBLAS(Lt), cuRAND and NVRTC. This fetches a CUDA 13.0 nvcc from PyPI (wheels
# nvidia-cuda-nvcc, -nvvm, -crt, -runtime, -cccl; about 100 MB) into .cache/cuda-13.0/ and
# makes link stubs of the four libraries (every function cudarc declares; the sonames of the
# real ones, which the GPU machine provides at run time). 13.0, not newer: PTX from a newer
# nvcc is refused by a 13.0 driver, and cudarc 0.19 knows toolkits up to 13.4.
# The programs built need at run time: libcuda.so.1 (the driver), libcudart.so.13,
# libcublas.so.13, libcublasLt.so.13, libcurand.so.10 (any CUDA 13 install, or the
# nvidia-* wheels of a PyTorch built for CUDA 13).
#
# Exports PATH (nvcc), CUDA_ROOT (cudarc's -L), CUDA_COMPUTE_CAP=90 (candle's kernels for
# sm_90a: H100/H200; there is no nvidia-smi to ask). Idempotent.

_cc_log() { printf '[candle-cuda-env] %s\n' "$*" >&2; }

_candle_cuda_env() {
    local root="$SPARSE_TC_ROOT/.cache/cuda-13.0" tk wheels pkgs p n v cudarc
    tk="$root/nvidia/cu13"
    pkgs="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85"
    if [[ ! -x $tk/bin/nvcc || ! -f $tk/lib/stubs/libcuda.so ]]; then
        wheels="$root/wheels"
        mkdir -p "$wheels"
        _cc_log "fetching CUDA 13.0 nvcc from PyPI into $root"
        # shellcheck disable=SC2086
        python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheels" $pkgs >&2 || return 1
        for p in $pkgs; do
            n=$(tr - _ <<<"${p%%==*}"); v=${p##*==}
            unzip -q -o "$wheels/${n}-${v}-"*.whl -x '*.dist-info/*' -d "$root" || return 1
        done
        ln -sf libcudart.so.13 "$tk/lib/libcudart.so"
        # Link stubs from cudarc's own declarations (the version cargo resolved).
        (cd "$SPARSE_TC_ROOT" && cargo fetch -q) || return 1
        cudarc=$(cd "$SPARSE_TC_ROOT" && cargo metadata --format-version 1 --features candle-cuda 2>/dev/null \
            | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])') || return 1
        _candle_cuda_stub "$cudarc/src/driver/sys/mod.rs" libcuda.so.1 "$tk/lib/stubs" 0 || return 1
        _candle_cuda_stub "$cudarc/src/cublas/sys/mod.rs" libcublas.so.13 "$tk/lib/stubs" 1 || return 1
        _candle_cuda_stub "$cudarc/src/cublaslt/sys/mod.rs" libcublasLt.so.13 "$tk/lib/stubs" 1 || return 1
        _candle_cuda_stub "$cudarc/src/curand/sys/mod.rs" libcurand.so.10 "$tk/lib/stubs" 1 || return 1
        _candle_cuda_stub "$cudarc/src/nvrtc/sys/mod.rs" libnvrtc.so.13 "$tk/lib/stubs" 1 || return 1
    fi
    export PATH="$tk/bin:$PATH" CUDA_ROOT="$tk" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
}

# A shared library `soname` in `out` that exports (empty) every function declared in the
# bindings `src`, for linking only; `versioned` = 1 tags the symbols with the soname as
# NVIDIA's libraries do, so the references match a link against the real ones.
_candle_cuda_stub() {
    local src=$1 soname=$2 out=$3 versioned=$4 tmp
    tmp=$(mktemp -d)
    mkdir -p "$out"
    grep -oE '^\s+(pub )?fn [A-Za-z_][A-Za-z0-9_]*\(' "$src" | sed -E 's/.*fn ([A-Za-z0-9_]+)\(/\1/' \
        | grep -E '^(cu|nvrtc|curand)' | sort -u | awk '{print "void " $1 "(void){}"}' > "$tmp/stub.c"
    local ver=()
    if [[ $versioned == 1 ]]; then
        echo "$soname { global: *; };" > "$tmp/ver.map"
        ver=("-Wl,--version-script=$tmp/ver.map")
    fi
    gcc -shared -fPIC -o "$out/$soname" "$tmp/stub.c" "-Wl,-soname,$soname" "${ver[@]}" || { rm -rf "$tmp"; return 1; }
    ln -sf "$soname" "$out/${soname%%.so*}.so"
    rm -rf "$tmp"
}

_candle_cuda_env
