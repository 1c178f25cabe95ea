//! Programmatic dependent launch (CUDA 12 driver API `cuLaunchKernelEx` with the
//! programmatic-stream-serialization attribute): a kernel queued this way may be scheduled
//! while the kernel before it on the stream is still running, and synchronises with that
//! kernel itself (device module `griddep`: `griddepcontrol.wait`, or the SpMM's completion
//! flags of device module `flag`).
//!
//! `cust` 0.3 binds the CUDA 11.4 driver API, which predates `cuLaunchKernelEx`, so the
//! entry point is looked up at run time with `cuGetProcAddress`; where the driver lacks it
//! the caller falls back to an ordinary launch. The structures below mirror `cuda.h` (12.x).

use std::ffi::c_void;

/// `CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`.
const PROGRAMMATIC_STREAM_SERIALIZATION: u32 = 6;

/// `CUlaunchAttribute`: the attribute id, padding to 8 bytes, and the 64-byte value union.
#[repr(C)]
struct LaunchAttribute {
    id: u32,
    pad: [u8; 4],
    value: LaunchAttributeValue,
}

/// `CUlaunchAttributeValue` (a 64-byte, 8-aligned union) as its member
/// `programmaticStreamSerializationAllowed` (an `int`) and the rest of the bytes.
#[repr(C, align(8))]
struct LaunchAttributeValue {
    allowed: i32,
    rest: [u8; 60],
}

/// `CUlaunchConfig`.
#[repr(C)]
struct LaunchConfig {
    grid: [u32; 3],
    block: [u32; 3],
    shared_mem_bytes: u32,
    stream: cust::sys::CUstream,
    attrs: *const LaunchAttribute,
    num_attrs: u32,
}

/// `cuLaunchKernelEx`.
type LaunchKernelEx = unsafe extern "C" fn(
    *const LaunchConfig,
    cust::sys::CUfunction,
    *mut *mut c_void,
    *mut *mut c_void,
) -> cust::sys::CUresult;

/// The driver's `cuLaunchKernelEx`, if it has one (CUDA 12.0+).
#[derive(Clone, Copy)]
pub(crate) struct DependentLauncher(LaunchKernelEx);

impl DependentLauncher {
    /// Looks the entry point up in the driver of the current context; `None` if absent.
    pub(crate) fn find() -> Option<Self> {
        let mut pfn: *mut c_void = std::ptr::null_mut();
        // SAFETY: a NUL-terminated symbol name and a pointer-sized out slot; the driver is
        // initialised (called after cuInit). 12000 asks for the CUDA 12.0 ABI of the symbol,
        // whose signature `LaunchKernelEx` is.
        let rc = unsafe { cust::sys::cuGetProcAddress(c"cuLaunchKernelEx".as_ptr(), &mut pfn, 12000, 0) };
        if rc != cust::sys::cudaError_enum::CUDA_SUCCESS || pfn.is_null() {
            return None;
        }
        // SAFETY: the driver returned the CUDA 12.0 `cuLaunchKernelEx`, whose C signature is
        // `LaunchKernelEx`.
        Some(DependentLauncher(unsafe { std::mem::transmute::<*mut c_void, LaunchKernelEx>(pfn) }))
    }

    /// Queues `func` on `stream` as a programmatic dependent of the kernel queued before it.
    ///
    /// # Safety
    /// As `cuLaunchKernelEx`: `func` is a kernel of a loaded module, `args` its argument list
    /// (addresses of each argument, in order), the operands outlive the queued work; and the
    /// kernel keeps the contract of device module `griddep`: it touches memory the kernel
    /// before it writes only after `griddepcontrol.wait` or another synchronisation with
    /// that kernel's blocks, and every thread calls `griddepcontrol.wait` before it exits.
    pub(crate) unsafe fn launch(
        self, func: cust::sys::CUfunction, stream: cust::sys::CUstream, grid: (u32, u32, u32), block: u32, smem: u32,
        args: &mut [*mut c_void],
    ) -> cust::sys::CUresult {
        let value = LaunchAttributeValue { allowed: 1, rest: [0; 60] };
        let attr = LaunchAttribute { id: PROGRAMMATIC_STREAM_SERIALIZATION, pad: [0; 4], value };
        let config = LaunchConfig {
            grid: [grid.0, grid.1, grid.2],
            block: [block, 1, 1],
            shared_mem_bytes: smem,
            stream,
            attrs: &attr,
            num_attrs: 1,
        };
        (self.0)(&config, func, args.as_mut_ptr(), std::ptr::null_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_match_cuda_h() {
        // sizeof(CUlaunchAttribute) = 72, sizeof(CUlaunchConfig) = 56 on 64-bit targets.
        assert_eq!(std::mem::size_of::<LaunchAttribute>(), 72);
        assert_eq!(std::mem::size_of::<LaunchConfig>(), 56);
        assert_eq!(std::mem::offset_of!(LaunchConfig, stream), 32);
        assert_eq!(std::mem::offset_of!(LaunchAttribute, value), 8);
        assert_eq!(std::mem::align_of::<LaunchAttribute>(), 8);
    }
}
