//! A minimal cuBLAS binding, loaded at run time, used only as the dense baseline in benchmarks
//! and tests.
//!
//! The library itself never calls cuBLAS, so `libcublas` is opened with `dlopen` when
//! [`load`] is called and is never a link-time dependency: a machine without cuBLAS builds and
//! runs everything except the comparisons against it.
//!
//! Only what the baseline needs is bound: handle creation/destruction, the stream setter, the
//! version query and `cublasGemmEx`, wrapped as [`Cublas::linear`] — the `nn.Linear` product
//! `Y = X · Wᵀ` in row-major terms with 16-bit inputs and outputs and f32 accumulation.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The cuBLAS handle binds to the CUDA context current on this thread, so create the
//! // context first (declared first, it is also dropped after the handle).
//! let _ctx = cust::quick_init()?;
//! let blas = sparse_tc::cublas::load()?;
//! println!("cuBLAS {} from {}", blas.version()?, blas.path().display());
//! // unsafe { blas.linear(Dtype::F16, m, n, k, w_ptr, k, x_ptr, k, y_ptr, m)? };
//! # Ok(()) }
//! ```

use std::ffi::{c_int, c_void, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::element::Dtype;
use crate::error::{Error, Result};

/// Environment variable naming the cuBLAS shared library to load; tried before anything else.
pub const ENV_VAR: &str = "SPARSE_TC_CUBLAS";

// ---------------------------------------------------------------------------------------------
// ABI: the values below are fixed by cublas_api.h and library_types.h.
// ---------------------------------------------------------------------------------------------

/// `cublasHandle_t`: an opaque pointer to `struct cublasContext`.
type Handle = *mut c_void;
/// `cublasStatus_t` (a C enum, passed as `int`).
type Status = c_int;

const CUBLAS_STATUS_SUCCESS: Status = 0;
/// `cublasOperation_t::CUBLAS_OP_N`.
const CUBLAS_OP_N: c_int = 0;
/// `cublasOperation_t::CUBLAS_OP_T`.
const CUBLAS_OP_T: c_int = 1;
/// `cudaDataType_t::CUDA_R_16F` (IEEE half).
const CUDA_R_16F: c_int = 2;
/// `cudaDataType_t::CUDA_R_16BF` (bfloat16).
const CUDA_R_16BF: c_int = 14;
/// `cublasComputeType_t::CUBLAS_COMPUTE_32F` (f32 accumulation; alpha/beta are `float`).
const CUBLAS_COMPUTE_32F: c_int = 68;
/// `cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT` (heuristic choice).
const CUBLAS_GEMM_DEFAULT: c_int = -1;

/// `cublasStatus_t cublasCreate_v2(cublasHandle_t *handle)`
type CreateFn = unsafe extern "C" fn(handle: *mut Handle) -> Status;
/// `cublasStatus_t cublasDestroy_v2(cublasHandle_t handle)`
type DestroyFn = unsafe extern "C" fn(handle: Handle) -> Status;
/// `cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId)`
type SetStreamFn = unsafe extern "C" fn(handle: Handle, stream: cust::sys::CUstream) -> Status;
/// `cublasStatus_t cublasGetVersion_v2(cublasHandle_t handle, int *version)`
type GetVersionFn = unsafe extern "C" fn(handle: Handle, version: *mut c_int) -> Status;
/// ```c
/// cublasStatus_t cublasGemmEx(cublasHandle_t handle,
///     cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
///     const void *alpha, const void *A, cudaDataType_t Atype, int lda,
///     const void *B, cudaDataType_t Btype, int ldb,
///     const void *beta, void *C, cudaDataType_t Ctype, int ldc,
///     cublasComputeType_t computeType, cublasGemmAlgo_t algo)
/// ```
type GemmExFn = unsafe extern "C" fn(
    handle: Handle,
    transa: c_int,
    transb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const c_void,
    a: *const c_void,
    a_type: c_int,
    lda: c_int,
    b: *const c_void,
    b_type: c_int,
    ldb: c_int,
    beta: *const c_void,
    c: *mut c_void,
    c_type: c_int,
    ldc: c_int,
    compute_type: c_int,
    algo: c_int,
) -> Status;

/// The name of a `cublasStatus_t` code, e.g. `CUBLAS_STATUS_INVALID_VALUE` for 7.
pub fn status_name(status: i32) -> &'static str {
    match status {
        0 => "CUBLAS_STATUS_SUCCESS",
        1 => "CUBLAS_STATUS_NOT_INITIALIZED",
        3 => "CUBLAS_STATUS_ALLOC_FAILED",
        7 => "CUBLAS_STATUS_INVALID_VALUE",
        8 => "CUBLAS_STATUS_ARCH_MISMATCH",
        11 => "CUBLAS_STATUS_MAPPING_ERROR",
        13 => "CUBLAS_STATUS_EXECUTION_FAILED",
        14 => "CUBLAS_STATUS_INTERNAL_ERROR",
        15 => "CUBLAS_STATUS_NOT_SUPPORTED",
        16 => "CUBLAS_STATUS_LICENSE_ERROR",
        _ => "unknown cublasStatus_t",
    }
}

/// Turns a status into `Ok(())` or an [`Error::Cublas`] naming the call and the status.
fn check(call: &str, status: Status) -> Result<()> {
    if status == CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cublas(failure(call, status)))
    }
}

/// `"<call> failed: <STATUS_NAME> (<code>)"`.
fn failure(call: &str, status: Status) -> String {
    format!("{call} failed: {} ({status})", status_name(status))
}

// ---------------------------------------------------------------------------------------------
// The handle.
// ---------------------------------------------------------------------------------------------

/// A loaded cuBLAS library with one `cublasHandle_t`.
///
/// The handle belongs to the CUDA context that was current on the thread that called [`load`];
/// every call must happen while that context is current, and the `Cublas` must be dropped
/// before the context is destroyed (declare the `cust` context first so it is dropped last).
/// The type holds a raw handle and is therefore neither `Send` nor `Sync`.
pub struct Cublas {
    handle: Handle,
    destroy: DestroyFn,
    set_stream: SetStreamFn,
    get_version: GetVersionFn,
    gemm_ex: GemmExFn,
    path: PathBuf,
    // Field order is drop order: the function pointers above point into `_lib`, which must stay
    // loaded until the handle is destroyed (in `Drop::drop`, before any field is dropped);
    // `_lib` depends on `_lt`, so `_lt` is closed last.
    _lib: libloading::Library,
    _lt: Option<libloading::Library>,
}

impl fmt::Debug for Cublas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cublas").field("path", &self.path).field("handle", &self.handle).finish()
    }
}

/// Loads cuBLAS and creates a handle bound to the CUDA context current on this thread.
///
/// The caller must make a CUDA context current on this thread first (e.g. with
/// `cust::quick_init()`) and keep it alive and current for every use of the returned value.
/// (Without one, `cublasCreate_v2` either fails, typically with
/// `CUBLAS_STATUS_NOT_INITIALIZED`, or — as cuBLAS 13 was observed to do — silently binds to
/// the primary context of the current device, which is not the context `cust` created.)
///
/// Candidates, tried in this order (the first that opens and exports every needed symbol wins):
/// 1. the path in the environment variable `SPARSE_TC_CUBLAS`, if set;
/// 2. the sonames `libcublas.so.13`, `libcublas.so.12`, `libcublas.so` (the dynamic loader's
///    search path: `LD_LIBRARY_PATH`, the ld.so cache, ...);
/// 3. `/usr/local/cuda/lib64/libcublas.so.13`, `.so.12` and `.so`;
/// 4. the copies shipped in NVIDIA's Python wheels (as installed with PyTorch):
///    `{site,dist}-packages/nvidia/cu13/lib/libcublas.so.13` and
///    `{site,dist}-packages/nvidia/cublas/lib/libcublas.so.12` under `/usr/local/lib/python3*/`,
///    `/usr/lib/python3*/` and `/opt/*/.venv/lib/python3*/`.
///
/// For a candidate given by path, `libcublasLt` from the same directory is opened first with
/// `RTLD_NOW | RTLD_GLOBAL`, so that libcublas' dependency on it resolves even when that
/// directory is not on the loader's search path.
///
/// # Errors
/// [`Error::Cublas`] listing every candidate tried and why it failed, or naming the failing
/// `cublasCreate_v2` status.
pub fn load() -> Result<Cublas> {
    load_from(&candidates(std::env::var_os(ENV_VAR))).map_err(|e| match e {
        Error::Cublas(msg) if msg.starts_with(NOT_LOADED) => Error::Cublas(format!(
            "{msg}\n  (wheel copies were looked for as \
             {{site,dist}}-packages/nvidia/{{cu13,cublas}}/lib/libcublas.so.{{13,12}} under {}; \
             any found are listed above)",
            PYTHON_ROOTS.join(", "),
        )),
        other => other,
    })
}

/// How the "nothing could be loaded" error message starts.
const NOT_LOADED: &str = "could not load libcublas";

/// Loads the first of `candidates` that works and creates a handle (see [`load`]).
///
/// A candidate containing a `/` is a path (its directory's `libcublasLt` is preloaded); any
/// other is a soname resolved by the dynamic loader.
///
/// # Errors
/// [`Error::Cublas`] listing every candidate tried, or naming the failing `cublasCreate_v2`.
pub fn load_from(candidates: &[PathBuf]) -> Result<Cublas> {
    let mut tried = Vec::with_capacity(candidates.len());
    for cand in candidates {
        // A library that opens but lacks a symbol (e.g. a too-old cuBLAS) is skipped like one
        // that does not open; a failing `cublasCreate_v2` ends the search (it would fail the
        // same way with every copy).
        match open_candidate(cand).and_then(|(lib, lt)| Ok((resolve(&lib)?, lib, lt))) {
            Ok((fns, lib, lt)) => return create(cand.clone(), fns, lib, lt),
            Err(why) => tried.push(format!("  {}: {why}", cand.display())),
        }
    }
    Err(Error::Cublas(format!(
        "{NOT_LOADED} (set {ENV_VAR} to its path); tried:\n{}",
        if tried.is_empty() { "  (no candidates)".to_string() } else { tried.join("\n") },
    )))
}

/// The candidates [`load`] tries, given the value of `SPARSE_TC_CUBLAS` (pure apart from
/// listing the Python directories that exist).
pub fn candidates(env: Option<OsString>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    for soname in ["libcublas.so.13", "libcublas.so.12", "libcublas.so"] {
        out.push(PathBuf::from(soname));
    }
    for soname in ["libcublas.so.13", "libcublas.so.12", "libcublas.so"] {
        out.push(Path::new("/usr/local/cuda/lib64").join(soname));
    }
    for py in python_dirs() {
        for pkgs in ["site-packages", "dist-packages"] {
            for rel in ["nvidia/cu13/lib/libcublas.so.13", "nvidia/cublas/lib/libcublas.so.12"] {
                let p = py.join(pkgs).join(rel);
                if p.is_file() {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// Human-readable form of the Python library roots searched for wheel copies of cuBLAS.
const PYTHON_ROOTS: [&str; 3] =
    ["/usr/local/lib/python3*/", "/usr/lib/python3*/", "/opt/*/.venv/lib/python3*/"];

/// Existing directories matching `PYTHON_ROOTS`, globbed by hand, sorted within each root.
fn python_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in ["/usr/local/lib", "/usr/lib"] {
        out.extend(subdirs_starting_with(Path::new(root), "python3"));
    }
    for opt in subdirs_starting_with(Path::new("/opt"), "") {
        out.extend(subdirs_starting_with(&opt.join(".venv/lib"), "python3"));
    }
    out
}

/// The sorted subdirectories of `dir` whose names start with `prefix` (none if unreadable).
fn subdirs_starting_with(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(prefix)))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

/// The `libcublasLt` that sits next to a `libcublas` path (`libcublas.so.12` →
/// `libcublasLt.so.12`), or `None` if `path` is a bare soname or not named `libcublas*`.
fn lt_path(path: &Path) -> Option<PathBuf> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("libcublas")?;
    if rest.starts_with("Lt") {
        return None;
    }
    Some(dir.join(format!("libcublasLt{rest}")))
}

/// Opens one candidate (preloading `libcublasLt` for a path); the error says why it failed.
fn open_candidate(
    cand: &Path,
) -> std::result::Result<(libloading::Library, Option<libloading::Library>), String> {
    let lt = match lt_path(cand) {
        // A missing or unloadable Lt is not fatal here: libcublas may still find its own
        // (e.g. through its RUNPATH); if not, opening libcublas reports the real problem.
        Some(lt) if lt.is_file() => open_flags(&lt, true).ok(),
        _ => None,
    };
    let lib = open_flags(cand, false).map_err(|e| {
        // dlerror() messages usually start with the file name, which the caller prints already.
        let msg = e.to_string();
        let prefix = format!("{}: ", cand.display());
        msg.strip_prefix(&prefix).map_or(msg.clone(), str::to_owned)
    })?;
    Ok((lib, lt))
}

/// `dlopen(path, RTLD_NOW | (global ? RTLD_GLOBAL : RTLD_LOCAL))`.
#[cfg(unix)]
fn open_flags(
    path: &Path,
    global: bool,
) -> std::result::Result<libloading::Library, libloading::Error> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_LOCAL, RTLD_NOW};
    let flags = RTLD_NOW | if global { RTLD_GLOBAL } else { RTLD_LOCAL };
    // SAFETY: loading cuBLAS runs only its (well-behaved) initialisers.
    unsafe { Library::open(Some(path), flags) }.map(Into::into)
}

#[cfg(not(unix))]
fn open_flags(
    path: &Path,
    _global: bool,
) -> std::result::Result<libloading::Library, libloading::Error> {
    // SAFETY: loading cuBLAS runs only its (well-behaved) initialisers.
    unsafe { libloading::Library::new(path) }
}

/// Resolves a symbol as a plain function pointer of type `T`.
///
/// # Safety
/// `T` must be the exact C signature of `name`, and the pointer is only valid while `lib` is
/// loaded.
unsafe fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> std::result::Result<T, String> {
    // SAFETY: forwarded to the caller.
    unsafe { lib.get::<T>(name.as_bytes()) }.map(|s| *s).map_err(|e| e.to_string())
}

/// The entry points this binding uses.
struct Fns {
    create: CreateFn,
    destroy: DestroyFn,
    set_stream: SetStreamFn,
    get_version: GetVersionFn,
    gemm_ex: GemmExFn,
}

/// Resolves every entry point in `lib`; the error names the first missing one.
fn resolve(lib: &libloading::Library) -> std::result::Result<Fns, String> {
    // SAFETY: the types are the C signatures from cublas_api.h (see their definitions); the
    // pointers are stored next to `lib` in `Cublas`, which keeps it loaded while they are used.
    unsafe {
        Ok(Fns {
            create: sym(lib, "cublasCreate_v2")?,
            destroy: sym(lib, "cublasDestroy_v2")?,
            set_stream: sym(lib, "cublasSetStream_v2")?,
            get_version: sym(lib, "cublasGetVersion_v2")?,
            gemm_ex: sym(lib, "cublasGemmEx")?,
        })
    }
}

/// Creates the handle in the current context.
fn create(
    path: PathBuf,
    fns: Fns,
    lib: libloading::Library,
    lt: Option<libloading::Library>,
) -> Result<Cublas> {
    let mut handle: Handle = std::ptr::null_mut();
    // SAFETY: `handle` is a valid out-pointer; `lib` is loaded.
    let status = unsafe { (fns.create)(&mut handle) };
    if status != CUBLAS_STATUS_SUCCESS {
        return Err(Error::Cublas(format!(
            "{} (library {}; is a CUDA context current on this thread?)",
            failure("cublasCreate_v2", status),
            path.display()
        )));
    }
    Ok(Cublas {
        handle,
        destroy: fns.destroy,
        set_stream: fns.set_stream,
        get_version: fns.get_version,
        gemm_ex: fns.gemm_ex,
        path,
        _lib: lib,
        _lt: lt,
    })
}

/// Validated `cublasGemmEx` integer arguments for [`Cublas::linear`]:
/// `[m, n, k, lda, ldb, ldc]` in cuBLAS (column-major) terms.
///
/// Checks that every dimension is nonzero, that all values fit in `i32`, and that
/// `ldw ≥ k`, `ldx ≥ k`, `ldy ≥ m`.
///
/// # Errors
/// [`Error::Shape`] describing the first violated condition.
pub fn linear_args(
    m: usize,
    n: usize,
    k: usize,
    ldw: usize,
    ldx: usize,
    ldy: usize,
) -> Result<[i32; 6]> {
    if m == 0 || n == 0 || k == 0 {
        return Err(Error::Shape(format!("cuBLAS linear: zero dimension (m={m}, n={n}, k={k})")));
    }
    if ldw < k {
        return Err(Error::Shape(format!("cuBLAS linear: ldw={ldw} < k={k}")));
    }
    if ldx < k {
        return Err(Error::Shape(format!("cuBLAS linear: ldx={ldx} < k={k}")));
    }
    if ldy < m {
        return Err(Error::Shape(format!("cuBLAS linear: ldy={ldy} < m={m}")));
    }
    let mut out = [0i32; 6];
    for (slot, (name, v)) in
        out.iter_mut().zip([("m", m), ("n", n), ("k", k), ("ldw", ldw), ("ldx", ldx), ("ldy", ldy)])
    {
        *slot = i32::try_from(v).map_err(|_| {
            Error::Shape(format!("cuBLAS linear: {name}={v} does not fit in a 32-bit int"))
        })?;
    }
    Ok(out)
}

impl Cublas {
    /// The file or soname cuBLAS was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cuBLAS version number (`cublasGetVersion_v2`), e.g. `120804` for 12.8.4.
    ///
    /// # Errors
    /// [`Error::Cublas`] if the call fails.
    pub fn version(&self) -> Result<i32> {
        let mut v: c_int = 0;
        // SAFETY: live handle, valid out-pointer.
        check("cublasGetVersion_v2", unsafe { (self.get_version)(self.handle, &mut v) })?;
        Ok(v)
    }

    /// Makes subsequent calls on this handle run on `stream` (`cublasSetStream_v2`); a null
    /// stream selects the legacy default stream. Get the raw stream of a `cust` stream with
    /// [`cust::stream::Stream::as_inner`].
    ///
    /// The stream must belong to the handle's context and stay alive while work is queued on
    /// it through this handle; set another stream (or null) before destroying it.
    ///
    /// # Errors
    /// [`Error::Cublas`] if the call fails.
    // Safe although `stream` is a raw pointer: cuBLAS only records it here; it is used by the
    // `unsafe` [`Cublas::linear`], whose contract requires the recorded stream to be valid.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn set_stream(&self, stream: cust::sys::CUstream) -> Result<()> {
        // SAFETY: live handle; cuBLAS only records the stream.
        check("cublasSetStream_v2", unsafe { (self.set_stream)(self.handle, stream) })
    }

    /// `Y = X · Wᵀ` (the `nn.Linear` product), all matrices ROW-MAJOR, queued on the handle's
    /// stream (asynchronous; synchronise the stream before reading `Y`):
    ///
    /// * `W`: `m × k`, row `i` at `w + 2·i·ldw` bytes, `ldw ≥ k`;
    /// * `X`: `n × k`, row `j` at `x + 2·j·ldx` bytes, `ldx ≥ k`;
    /// * `Y`: `n × m`, row `j` at `y + 2·j·ldy` bytes, `ldy ≥ m` (overwritten; β = 0).
    ///
    /// Elements are `dtype` (f16 or bf16) in all three; products are accumulated in f32
    /// (`CUBLAS_COMPUTE_32F`, α = 1, β = 0, `CUBLAS_GEMM_DEFAULT`). In cuBLAS' column-major
    /// terms this is `C(m×n, ldc = ldy) = Aᵀ · B` with `A` = W read as column-major `k × m`
    /// (`lda = ldw`, `CUBLAS_OP_T`) and `B` = X read as column-major `k × n` (`ldb = ldx`,
    /// `CUBLAS_OP_N`).
    ///
    /// # Safety
    /// `w`, `x` and `y` must be device pointers, valid in the CUDA context the handle belongs
    /// to (which must be current on this thread), aligned to 2 bytes, of at least
    /// `((m−1)·ldw + k)`, `((n−1)·ldx + k)` and `((n−1)·ldy + m)` elements of `dtype`
    /// respectively; `y` must not overlap `w` or `x`; no other work may write `w` or `x`, or
    /// access `y`, concurrently with this call on the stream, and all three must stay
    /// allocated until the stream has finished it. The stream last given to
    /// [`Cublas::set_stream`] (if any) must still exist and belong to the same context.
    ///
    /// # Errors
    /// [`Error::Shape`] for invalid dimensions or leading dimensions (see [`linear_args`]),
    /// [`Error::InvalidArgument`] for a null pointer, [`Error::Cublas`] if cuBLAS rejects the
    /// call or fails to launch it.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn linear(
        &self,
        dtype: Dtype,
        m: usize,
        n: usize,
        k: usize,
        w: u64,
        ldw: usize,
        x: u64,
        ldx: usize,
        y: u64,
        ldy: usize,
    ) -> Result<()> {
        let [m, n, k, lda, ldb, ldc] = linear_args(m, n, k, ldw, ldx, ldy)?;
        if w == 0 || x == 0 || y == 0 {
            return Err(Error::InvalidArgument("cuBLAS linear: null device pointer".into()));
        }
        let ty = match dtype {
            Dtype::F16 => CUDA_R_16F,
            Dtype::Bf16 => CUDA_R_16BF,
        };
        let alpha: f32 = 1.0;
        let beta: f32 = 0.0;
        // SAFETY: live handle; dimensions validated above; the pointer contract is the caller's;
        // alpha/beta are host f32 as CUBLAS_COMPUTE_32F with the default host pointer mode
        // requires, and are read before cublasGemmEx returns.
        let status = unsafe {
            (self.gemm_ex)(
                self.handle,
                CUBLAS_OP_T,
                CUBLAS_OP_N,
                m,
                n,
                k,
                (&alpha as *const f32).cast(),
                w as usize as *const c_void,
                ty,
                lda,
                x as usize as *const c_void,
                ty,
                ldb,
                (&beta as *const f32).cast(),
                y as usize as *mut c_void,
                ty,
                ldc,
                CUBLAS_COMPUTE_32F,
                CUBLAS_GEMM_DEFAULT,
            )
        };
        check("cublasGemmEx", status)
    }
}

impl Drop for Cublas {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `cublasCreate_v2` and is destroyed exactly once,
        // before `lib` is unloaded. A failure (e.g. the context is already gone) can only be
        // ignored here.
        let _ = unsafe { (self.destroy)(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_args_accepts_valid_shapes() {
        assert_eq!(linear_args(4, 3, 8, 8, 8, 4).unwrap(), [4, 3, 8, 8, 8, 4]);
        // Padded leading dimensions are fine.
        assert_eq!(linear_args(4, 3, 8, 16, 9, 5).unwrap(), [4, 3, 8, 16, 9, 5]);
        let big = i32::MAX as usize;
        assert_eq!(
            linear_args(1, 1, big, big, big, 1).unwrap(),
            [1, 1, i32::MAX, i32::MAX, i32::MAX, 1]
        );
    }

    #[test]
    fn linear_args_rejects_zero_dims() {
        for (m, n, k) in [(0, 1, 1), (1, 0, 1), (1, 1, 0)] {
            let e = linear_args(m, n, k, 1, 1, 1).unwrap_err();
            assert!(matches!(e, Error::Shape(ref s) if s.contains("zero")), "{e}");
        }
    }

    #[test]
    fn linear_args_rejects_short_leading_dims() {
        let e = linear_args(4, 3, 8, 7, 8, 4).unwrap_err();
        assert!(matches!(e, Error::Shape(ref s) if s.contains("ldw=7")), "{e}");
        let e = linear_args(4, 3, 8, 8, 7, 4).unwrap_err();
        assert!(matches!(e, Error::Shape(ref s) if s.contains("ldx=7")), "{e}");
        let e = linear_args(4, 3, 8, 8, 8, 3).unwrap_err();
        assert!(matches!(e, Error::Shape(ref s) if s.contains("ldy=3")), "{e}");
    }

    #[test]
    fn linear_args_rejects_values_beyond_i32() {
        let big = i32::MAX as usize + 1;
        let e = linear_args(big, 1, 1, 1, 1, big).unwrap_err();
        assert!(
            matches!(e, Error::Shape(ref s) if s.contains("m=") && s.contains("32-bit")),
            "{e}"
        );
        let e = linear_args(1, big, 1, 1, 1, 1).unwrap_err();
        assert!(matches!(e, Error::Shape(ref s) if s.contains("n=")), "{e}");
        let e = linear_args(1, 1, big, big, big, 1).unwrap_err();
        assert!(matches!(e, Error::Shape(ref s) if s.contains("k=")), "{e}");
        let e = linear_args(1, 1, 1, big, 1, 1).unwrap_err();
        assert!(matches!(e, Error::Shape(ref s) if s.contains("ldw=")), "{e}");
        let e = linear_args(1, 1, 1, 1, 1, big).unwrap_err();
        assert!(matches!(e, Error::Shape(ref s) if s.contains("ldy=")), "{e}");
    }

    #[test]
    fn status_names() {
        assert_eq!(status_name(1), "CUBLAS_STATUS_NOT_INITIALIZED");
        assert_eq!(status_name(3), "CUBLAS_STATUS_ALLOC_FAILED");
        assert_eq!(status_name(7), "CUBLAS_STATUS_INVALID_VALUE");
        assert_eq!(status_name(8), "CUBLAS_STATUS_ARCH_MISMATCH");
        assert_eq!(status_name(11), "CUBLAS_STATUS_MAPPING_ERROR");
        assert_eq!(status_name(13), "CUBLAS_STATUS_EXECUTION_FAILED");
        assert_eq!(status_name(14), "CUBLAS_STATUS_INTERNAL_ERROR");
        assert_eq!(status_name(15), "CUBLAS_STATUS_NOT_SUPPORTED");
        assert_eq!(status_name(16), "CUBLAS_STATUS_LICENSE_ERROR");
        assert_eq!(status_name(99), "unknown cublasStatus_t");
        let e = check("cublasGemmEx", 7).unwrap_err();
        assert_eq!(e.to_string(), "cuBLAS: cublasGemmEx failed: CUBLAS_STATUS_INVALID_VALUE (7)");
        assert!(check("x", 0).is_ok());
    }

    #[test]
    fn candidate_order() {
        let c = candidates(Some("/custom/libcublas.so.12".into()));
        let expect = [
            "/custom/libcublas.so.12",
            "libcublas.so.13",
            "libcublas.so.12",
            "libcublas.so",
            "/usr/local/cuda/lib64/libcublas.so.13",
            "/usr/local/cuda/lib64/libcublas.so.12",
            "/usr/local/cuda/lib64/libcublas.so",
        ];
        assert!(c.len() >= expect.len());
        for (got, want) in c.iter().zip(expect) {
            assert_eq!(got, Path::new(want));
        }
        // Without the variable (or with it empty) the list starts at the sonames.
        assert_eq!(candidates(None)[0], Path::new("libcublas.so.13"));
        assert_eq!(candidates(Some(OsString::new()))[0], Path::new("libcublas.so.13"));
        // Wheel candidates are only listed when present.
        for p in &c[expect.len()..] {
            assert!(p.is_file() && p.to_string_lossy().contains("-packages/nvidia/"), "{p:?}");
        }
    }

    #[test]
    fn lt_next_to_cublas() {
        assert_eq!(
            lt_path(Path::new("/a/b/libcublas.so.12")),
            Some(PathBuf::from("/a/b/libcublasLt.so.12"))
        );
        assert_eq!(lt_path(Path::new("/a/libcublas.so")), Some(PathBuf::from("/a/libcublasLt.so")));
        assert_eq!(lt_path(Path::new("libcublas.so.12")), None);
        assert_eq!(lt_path(Path::new("/a/libcublasLt.so.12")), None);
        assert_eq!(lt_path(Path::new("/a/other.so")), None);
    }

    #[test]
    fn load_from_lists_what_was_tried() {
        let cands = [
            PathBuf::from("/nonexistent/dir/libcublas.so.12"),
            PathBuf::from("libsparse_tc_no_such_cublas.so.99"),
        ];
        let msg = match load_from(&cands) {
            Err(Error::Cublas(msg)) => msg,
            other => panic!("expected Error::Cublas, got {other:?}"),
        };
        for c in &cands {
            assert!(msg.contains(&*c.to_string_lossy()), "{msg}");
        }
        assert!(msg.contains(ENV_VAR), "{msg}");
    }

    /// On a machine without cuBLAS (like the build machine), `load` must fail cleanly with a
    /// message listing every candidate; where cuBLAS is installed this test checks nothing.
    #[test]
    fn load_without_cublas_lists_candidates() {
        let cands = candidates(std::env::var_os(ENV_VAR));
        match load() {
            Err(Error::Cublas(msg)) if msg.starts_with("could not load libcublas") => {
                for c in &cands {
                    assert!(msg.contains(&*c.to_string_lossy()), "{c:?} missing from: {msg}");
                }
                for s in
                    ["libcublas.so.13", "libcublas.so.12", "/usr/local/cuda/lib64/libcublas.so"]
                {
                    assert!(msg.contains(s), "{msg}");
                }
                for root in PYTHON_ROOTS {
                    assert!(msg.contains(root), "{msg}");
                }
            }
            // cuBLAS present: either a handle was created or creation failed for lack of a
            // context; both are fine here.
            Ok(_) | Err(Error::Cublas(_)) => {}
            Err(e) => panic!("unexpected error kind: {e:?}"),
        }
    }
}
