# shellcheck shell=bash
# Environment setup for building and testing sparse_tc on a machine with no GPU
# and no CUDA install.  SOURCE it, do not execute it:
#
#     . "$(dirname "$0")/env.sh"
#
# What it does (idempotent; a warm run downloads nothing and takes well under a second):
#   1. installs the pinned nightly toolchain (+ rust-src, llvm-bitcode-linker, llvm-tools)
#      if missing; rust-toolchain.toml at the repo root pins it for cargo.
#   2. makes cust's build script (find_cuda_helper) find a libcuda.so to link against:
#      an existing CUDA install is used as is; otherwise Debian's non-free `libcuda1` is
#      unpacked into <repo>/.cache/cuda/lib64 (without touching the system's apt sources),
#      and CUDA_LIBRARY_PATH / LD_LIBRARY_PATH point at it.  With that stub on a GPU-less
#      machine cuInit() returns CUDA_ERROR_NO_DEVICE (100), which the tests treat as "skip".
#      Never carry .cache/cuda to a GPU machine: the driver's own libcuda.so.1 must load.
#   3. defines `ensure_ptxas`, which fetches ptxas from the PyPI wheel nvidia-cuda-nvcc
#      into <repo>/.cache/ptxas/ and exports PTXAS.
#
# Safe under `set -euo pipefail` in the sourcing shell; does not change shell options.
# Progress goes to stderr, prefixed "[env]".
#
# Knobs (environment): SPARSE_TC_NO_CUDA_STUB=1 skips step 2 entirely.

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
# 2. libcuda for linking (and loading) cust
# ---------------------------------------------------------------------------

# Prepend $1 to the colon-separated variable named $2 unless already present.
_env_path_prepend() {
    local dir="$1" var="$2" cur
    cur="${!var:-}"
    case ":$cur:" in
        *":$dir:"*) ;;
        *) export "$var=$dir${cur:+:$cur}" ;;
    esac
}

# True if some directory that find_cuda_helper searches already holds libcuda.so.
_env_cuda_linkable() {
    local base bases=() p
    if [[ -n "${CUDA_LIBRARY_PATH:-}" ]]; then
        IFS=: read -r -a bases <<<"$CUDA_LIBRARY_PATH"
    fi
    bases+=(/opt/cuda /usr/local/cuda)
    for p in /usr/local/cuda-*; do [[ -e "$p" ]] && bases+=("$p"); done
    for base in "${bases[@]}"; do
        [[ -n "$base" ]] || continue
        for p in "$base/lib64/libcuda.so" "$base/lib64/stubs/libcuda.so" \
                 "$base/targets/x86_64-linux/lib/stubs/libcuda.so"; do
            [[ -e "$p" ]] && return 0
        done
    done
    return 1
}

_env_fetch_debian_libcuda() {
    local dest="$1" codename="" id="" work sources deb so
    # shellcheck disable=SC1091
    if [[ -r /etc/os-release ]]; then
        id="$(. /etc/os-release && printf '%s' "${ID:-}")"
        codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
    fi
    if [[ "$id" != debian || -z "$codename" ]]; then
        _env_log "ERROR: no libcuda found and this is not Debian (ID=$id VERSION_CODENAME=$codename);"
        _env_log "       install a CUDA driver/toolkit or set CUDA_LIBRARY_PATH=<dir with lib64/libcuda.so>"
        return 1
    fi
    _env_log "no libcuda on this machine: fetching Debian $codename non-free libcuda1 (stub for linking)"
    work="$SPARSE_TC_ROOT/.cache/apt"
    rm -rf "$work"
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/deb" "$work/x"
    sources="$work/sources.sources"
    cat >"$sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $codename
Components: main contrib non-free non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    local -a aptopts=(
        -q -o "Dir::Etc::sourcelist=$sources"
        -o Dir::Etc::sourceparts=/nonexistent
        -o "Dir::State::Lists=$work/lists"
        -o "Dir::Cache=$work/cache"
        -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
        -o APT::Sandbox::User=root
        -o Acquire::Languages=none
    )
    apt-get "${aptopts[@]}" update >"$work/update.log" 2>&1 || {
        _env_log "ERROR: private apt-get update failed; log:"; cat "$work/update.log" >&2; return 1; }
    (cd "$work/deb" && apt-get "${aptopts[@]}" download libcuda1) >"$work/download.log" 2>&1 || {
        _env_log "ERROR: apt-get download libcuda1 failed; log:"; cat "$work/download.log" >&2; return 1; }
    deb="$(ls "$work"/deb/libcuda1_*.deb)"
    dpkg -x "$deb" "$work/x"
    mkdir -p "$dest"
    # Copy libcuda.so* wherever the package keeps them (symlinks preserved).
    while IFS= read -r so; do
        cp -P "$so" "$dest/"
    done < <(find "$work/x" -name 'libcuda.so*' \( -type f -o -type l \))
    # Real file: libcuda.so.<ver>; make sure .so.1 and the unversioned link exist.
    so="$(find "$dest" -maxdepth 1 -type f -name 'libcuda.so.*' | head -n1)"
    if [[ -z "$so" ]]; then
        _env_log "ERROR: no libcuda.so.* file inside $deb"; return 1
    fi
    so="$(basename "$so")"
    [[ -e "$dest/libcuda.so.1" ]] || ln -sf "$so" "$dest/libcuda.so.1"
    [[ -e "$dest/libcuda.so" ]] || ln -sf libcuda.so.1 "$dest/libcuda.so"
    printf '%s\n' "$(basename "$deb")" >"$dest/.from-deb"
    rm -rf "$work"
    _env_log "libcuda stub: $(cat "$dest/.from-deb") -> $dest"
}

_env_cuda() {
    if [[ "${SPARSE_TC_NO_CUDA_STUB:-0}" == 1 ]]; then
        _env_log "SPARSE_TC_NO_CUDA_STUB=1: leaving libcuda setup alone"
        return 0
    fi
    local stub="$SPARSE_TC_ROOT/.cache/cuda"
    # Already set up by an earlier sourcing in this shell (or a parent): just re-export.
    if [[ -e "$stub/lib64/libcuda.so" && -e "$stub/lib64/libcuda.so.1" \
          && ! -e "$stub/.system-link" ]]; then
        export CUDA_LIBRARY_PATH="$stub"
        _env_path_prepend "$stub/lib64" LD_LIBRARY_PATH
        return 0
    fi
    if _env_cuda_linkable; then
        return 0   # a CUDA install / CUDA_LIBRARY_PATH that cust can use exists already
    fi
    local ldc sys
    ldc="$(ldconfig -p 2>/dev/null || true)"
    sys="$(awk '/libcuda\.so\.1 .*x86-64/ {print $NF; exit}' <<<"$ldc")"
    if [[ -n "$sys" ]]; then
        # A driver is installed (libcuda.so.1 in the loader cache) but no toolkit dir that
        # find_cuda_helper searches: give it a lib64/libcuda.so link to the real driver.
        # LD_LIBRARY_PATH stays untouched so the driver's own library loads at run time.
        local sysdir="$SPARSE_TC_ROOT/.cache/cuda-system"
        mkdir -p "$sysdir/lib64"
        ln -sfn "$sys" "$sysdir/lib64/libcuda.so"
        export CUDA_LIBRARY_PATH="$sysdir"
        _env_log "system libcuda $sys: linking through $sysdir/lib64"
        return 0
    fi
    _env_fetch_debian_libcuda "$stub/lib64"
    export CUDA_LIBRARY_PATH="$stub"
    _env_path_prepend "$stub/lib64" LD_LIBRARY_PATH
}

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
_env_cuda
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
