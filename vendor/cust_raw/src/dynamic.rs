//! Run-time loading of the CUDA driver (sparse_tc's change to cust_raw; see vendor/README.md).
//!
//! The generated functions in `cuda.rs` each own one [`Symbol`]: on the first call it loads
//! the driver library (once per process, shared by all symbols) and looks the function up by
//! its exact name, as the linker would have bound it; the pointer, or the fact that it is
//! missing, is cached, so later calls cost one atomic load and an indirect call.
//!
//! Without a driver every function returns an error instead: `cuInit` returns
//! `CUDA_ERROR_NO_DEVICE` (what a real driver says on a machine with no GPU), every other
//! function `CUDA_ERROR_NOT_INITIALIZED` (what the driver says before a successful `cuInit`).
//! A driver that loads but lacks a function (older than the bindings) makes that function
//! return `CUDA_ERROR_NOT_FOUND`.

use crate::cuda::CUresult;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Library names tried in order: the driver's soname first (what `-lcuda` resolves to at run
/// time), then the development link name.
#[cfg(not(windows))]
const LIBRARIES: &[&str] = &["libcuda.so.1", "libcuda.so"];
#[cfg(windows)]
const LIBRARIES: &[&str] = &["nvcuda.dll"];

/// The driver library, loaded on first use and never unloaded (`None`: none could be loaded).
fn driver() -> Option<&'static libloading::Library> {
    static DRIVER: OnceLock<Option<libloading::Library>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            // SAFETY: loading the CUDA driver runs its initialisers, which have no
            // preconditions; it stays loaded for the rest of the process.
            LIBRARIES.iter().find_map(|name| unsafe { libloading::Library::new(name) }.ok())
        })
        .as_ref()
}

/// States of [`Symbol`] besides a resolved address.
const UNRESOLVED: usize = 0;
const NO_LIBRARY: usize = 1;
const NO_SYMBOL: usize = 2;

/// One driver function: its name and, once resolved, its address (or why it has none).
pub(crate) struct Symbol {
    name: &'static CStr,
    state: AtomicUsize,
}

impl Symbol {
    pub(crate) const fn new(name: &'static CStr) -> Self {
        Symbol { name, state: AtomicUsize::new(UNRESOLVED) }
    }

    /// The function's address, or the status to return in its place.
    #[inline]
    pub(crate) fn get(&self) -> Result<*mut c_void, CUresult> {
        match self.state.load(Ordering::Acquire) {
            UNRESOLVED => self.resolve(),
            state => self.interpret(state),
        }
    }

    #[cold]
    fn resolve(&self) -> Result<*mut c_void, CUresult> {
        let state = match driver() {
            None => NO_LIBRARY,
            // SAFETY: the symbol is only ever called through the signature bindgen gave it
            // (the generated caller transmutes it to exactly that function type).
            Some(lib) => match unsafe { lib.get::<*mut c_void>(self.name.to_bytes_with_nul()) } {
                Ok(address) if (*address as usize) > NO_SYMBOL => *address as usize,
                _ => NO_SYMBOL,
            },
        };
        // Threads racing here store the same value.
        self.state.store(state, Ordering::Release);
        self.interpret(state)
    }

    fn interpret(&self, state: usize) -> Result<*mut c_void, CUresult> {
        match state {
            NO_LIBRARY if self.name == c"cuInit" => Err(CUresult::CUDA_ERROR_NO_DEVICE),
            NO_LIBRARY => Err(CUresult::CUDA_ERROR_NOT_INITIALIZED),
            NO_SYMBOL => Err(CUresult::CUDA_ERROR_NOT_FOUND),
            address => Ok(address as *mut c_void),
        }
    }
}

/// `cuGetErrorName` without a driver: the status's name (`CUDA_ERROR_NO_DEVICE`), as the
/// driver would give it, so that errors can still be printed.
pub(crate) unsafe fn error_name_without_driver(error: CUresult, p_str: *mut *const c_char) -> CUresult {
    describe(error, p_str, "")
}

/// `cuGetErrorString` without a driver: the status's name and that no driver is loaded
/// (`cust::error::CudaError`'s `Display` asks for this; it fails on an error status).
pub(crate) unsafe fn error_string_without_driver(error: CUresult, p_str: *mut *const c_char) -> CUresult {
    describe(error, p_str, " (no CUDA driver: libcuda could not be loaded)")
}

unsafe fn describe(error: CUresult, p_str: *mut *const c_char, suffix: &'static str) -> CUresult {
    if p_str.is_null() {
        return CUresult::CUDA_ERROR_INVALID_VALUE;
    }
    // One leaked C string per (status, suffix) ever asked for: at most a few hundred bytes.
    static TEXTS: Mutex<Vec<(CUresult, &'static str, &'static CStr)>> = Mutex::new(Vec::new());
    let mut texts = TEXTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let text = match texts.iter().find(|(e, s, _)| *e == error && *s == suffix) {
        Some(&(_, _, text)) => text,
        None => {
            let text: &'static CStr =
                Box::leak(CString::new(format!("{error:?}{suffix}")).expect("no NUL in a name").into_boxed_c_str());
            texts.push((error, suffix, text));
            text
        }
    };
    *p_str = text.as_ptr();
    CUresult::CUDA_SUCCESS
}
