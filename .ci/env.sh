# shellcheck shell=bash
# Environment setup for building and testing sparse_tc (with or without a GPU or CUDA).
# SOURCE it, do not execute it:
#
#     . "$(dirname "$0")/env.sh"
#
# What it does (idempotent; a warm run downloads nothing and takes well under a second):
#   1. installs the pinned nightly toolchain (+ rust-src, llvm-bitcode-linker, llvm-tools)
#      if missing; rust-toolchain.toml at the repo root pins it for cargo.  Afterwards plain
#      `cargo build/test/run` work in any shell in the repo without sourcing this file: nothing
#      links CUDA (vendor/cust_raw loads libcuda.so.1 at run time; without it cuInit() returns
#      CUDA_ERROR_NO_DEVICE, which the tests treat as "skip").
#   2. exports SPARSE_TC_PTX_FROM_SOURCE=1 (as .cargo/config.toml does for cargo in the repo):
#      host/build.rs builds gpu/ to PTX instead of using the shipped host/ptx/.
#   3. defines `ensure_ptxas`, which fetches ptxas from the PyPI wheel nvidia-cuda-nvcc
#      into <repo>/.cache/ptxas/ and exports PTXAS.
#
# Safe under `set -euo pipefail` in the sourcing shell; does not change shell options.
# Progress goes to stderr, prefixed "[env]".

SPARSE_TC_TOOLCHAIN="nightly-2026-10-30"
SPARSE_TC_NVCC_WHEEL_VERSION="13.5.37"

# Repo root, from this file's location (works when sourced from any cwd).
SPARSE_TC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
export SPARSE_TC_ROOT

_env_log() { printf '[env] %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------
# 1. Toolchain
# ---------------------------------------------------------------------------
_env_toolchain() {
    if ! command -v rustup >/dev/null 2>&1; then
        _env_log "ERROR: rustup not found on PATH (expected ~/.cargo/bin/rustup)"
        return 1
    fi
    local tc="$SPARSE_TC_TOOLCHAIN" installed comps missing=() c
    installed="$(rustup toolchain list 2>/dev/null || true)"
    if ! grep -q "^${tc}-" <<<"$installed"; then
        _env_log "installing toolchain $tc"
        # --no-self-update: never let this replace the machine's rustup binary
        # (a fresh RUSTUP_HOME defaults to auto self-update, which here is a downgrade).
        rustup toolchain install "$tc" --no-self-update --profile minimal \
            -c rust-src -c llvm-bitcode-linker -c llvm-tools >&2
        return 0
    fi
    comps="$(rustup component list --installed --toolchain "$tc" 2>/dev/null || true)"
    for c in rust-src llvm-bitcode-linker llvm-tools; do
        grep -q "^${c}\(-\|\$\)" <<<"$comps" || missing+=("$c")
    done
    if ((${#missing[@]})); then
        _env_log "adding components to $tc: ${missing[*]}"
        rustup component add --toolchain "$tc" "${missing[@]}" >&2
    fi
}

# ---------------------------------------------------------------------------
# 2. PTX from gpu/ (not the shipped host/ptx/)
# ---------------------------------------------------------------------------
export SPARSE_TC_PTX_FROM_SOURCE=1

# ---------------------------------------------------------------------------
# 3. ptxas (on demand)
# ---------------------------------------------------------------------------
ensure_ptxas() {
    local dir="$SPARSE_TC_ROOT/.cache/ptxas" ver="$SPARSE_TC_NVCC_WHEEL_VERSION" tmp whl
    local bin="$dir/ptxas"
    if [[ -x "$bin" && -f "$dir/.version" && "$(cat "$dir/.version")" == "$ver" ]]; then
        export PTXAS="$bin"
        return 0
    fi
    _env_log "fetching ptxas from PyPI nvidia-cuda-nvcc==$ver"
    mkdir -p "$dir"
    tmp="$(mktemp -d "$dir/dl.XXXXXX")"
    if ! python3 -m pip download -q --no-deps --only-binary=:all: \
            "nvidia-cuda-nvcc==$ver" -d "$tmp" >&2; then
        _env_log "ERROR: pip download nvidia-cuda-nvcc==$ver failed"
        rm -rf "$tmp"; return 1
    fi
    whl="$(ls "$tmp"/nvidia_cuda_nvcc-*.whl)"
    if ! python3 - "$whl" "$bin.tmp" <<'PY'
import sys, zipfile, shutil
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.endswith("/bin/ptxas")]
    if not names:
        sys.exit("no */bin/ptxas in " + whl)
    with z.open(names[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
    then
        rm -rf "$tmp" "$bin.tmp"; return 1
    fi
    chmod 0755 "$bin.tmp"
    mv -f "$bin.tmp" "$bin"
    printf '%s\n' "$ver" >"$dir/.version"
    rm -rf "$tmp"
    export PTXAS="$bin"
    _env_log "ptxas: $bin"
}

# ---------------------------------------------------------------------------
_env_toolchain
# rust-toolchain.toml pins the nightly inside the repo (cargo there uses it); check it.
_env_check_active() {
    local active
    active="$(cd "$SPARSE_TC_ROOT" && rustup show active-toolchain 2>/dev/null || true)"
    case "$active" in
        "$SPARSE_TC_TOOLCHAIN"-*) ;;
        *) _env_log "WARNING: active toolchain in $SPARSE_TC_ROOT is '$active', not $SPARSE_TC_TOOLCHAIN" \
                    "(RUSTUP_TOOLCHAIN set? rust-toolchain.toml missing?)" ;;
    esac
}
_env_check_active
