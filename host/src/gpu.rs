//! The GPU handle: context, stream and the kernel module (loaded once per handle).

use crate::dependent_launch::DependentLauncher;
use crate::error::{Error, Result};
use crate::memory::{DeviceAlloc, Owner};
use cust::context::{Context, CurrentContext};
use cust::device::{Device, DeviceAttribute};
use cust::module::Module;
use cust::stream::{Stream, StreamFlags};
use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// A CUDA device with this crate's kernels loaded.
///
/// Holds the device's primary context, one non-blocking stream on which every operation of
/// this handle runs in order, and the PTX module. Not `Sync`: use one handle per thread.
///
/// Device objects it makes ([`DeviceMatrix`](crate::DeviceMatrix),
/// [`DeviceSparseWeight`](crate::DeviceSparseWeight)) keep its context alive, so they may
/// outlive the handle; they can only be used with the handle that made them (any other is an
/// [`Error::InvalidArgument`]). See `memory.rs` for the ownership model.
pub struct Gpu {
    // Field order = drop order: stream and module before the owner (the context).
    pub(crate) stream: Stream,
    pub(crate) module: Module,
    /// Split-K partial sums, grown on demand and reused (no allocation per call).
    pub(crate) workspace: RefCell<Option<DeviceAlloc<f32>>>,
    /// The split SpMM launches' completion flags (one per block and token tile, grown on
    /// demand, zeroed when allocated) and the number the last launch published in them
    /// (`linear.rs: completion_flags`).
    pub(crate) flags: RefCell<Option<DeviceAlloc<u32>>>,
    pub(crate) flag_launch: Cell<u32>,
    /// Set by a recording or a replay (`graph.rs`): the flags may hold numbers an ordinary
    /// launch reuses, so the next one zeroes them first.
    pub(crate) flags_stale: Cell<bool>,
    /// Per kernel name and dynamic shared memory: launch set-up done (smem limit raised) and
    /// its resident blocks on the GPU, so a `linear` call does no driver queries beyond the
    /// kernel lookup.
    pub(crate) kernels: RefCell<std::collections::HashMap<(String, u32), usize>>,
    pub(crate) sm_count: u32,
    pub(crate) smem: SharedMemory,
    /// `cuLaunchKernelEx`, with the sm_90 build only: its split-K reductions wait for the
    /// kernel before them themselves (`griddepcontrol.wait`, and the SpMM's completion
    /// flags), so they are queued as programmatic dependents.
    pub(crate) dependent_launch: Option<DependentLauncher>,
    name: String,
    compute_capability: (i32, i32),
    ptx_target: &'static str,
    /// The context, shared with every allocation of this handle; its identity names the handle.
    pub(crate) owner: Arc<Owner>,
}

/// The device's shared-memory limits (bytes).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SharedMemory {
    /// Most dynamic shared memory one block may opt in to.
    pub per_block: usize,
    /// Shared memory of one SM, shared by its resident blocks.
    pub per_sm: usize,
    /// Shared memory the system reserves for each resident block.
    pub reserved_per_block: usize,
}

impl Gpu {
    /// Opens device 0. Returns [`Error::NoDevice`] when there is no driver or no GPU,
    /// [`Error::UnsupportedDevice`] below compute capability 8.0.
    pub fn new() -> Result<Self> {
        Self::with_device(0)
    }

    /// Opens the device with the given ordinal.
    pub fn with_device(ordinal: u32) -> Result<Self> {
        cust::init(cust::CudaFlags::empty()).map_err(|e| {
            Error::NoDevice(format!("cuInit failed ({e:?}): no NVIDIA driver or no GPU visible"))
        })?;
        let count = Device::num_devices().map_err(|e| Error::driver("counting devices", e))?;
        if ordinal >= count {
            return Err(Error::NoDevice(format!("device {ordinal} requested, {count} present")));
        }
        let device = Device::get_device(ordinal).map_err(|e| Error::driver("get device", e))?;
        let attr = |a| device.get_attribute(a).map_err(|e| Error::driver("device attribute", e));
        let cc = (attr(DeviceAttribute::ComputeCapabilityMajor)?, attr(DeviceAttribute::ComputeCapabilityMinor)?);
        let name = device.name().map_err(|e| Error::driver("device name", e))?;
        if cc.0 < 8 {
            return Err(Error::UnsupportedDevice(format!(
                "{name} has compute capability {}.{}; the kernels need 8.0+ (cp.async, bf16 mma)",
                cc.0, cc.1
            )));
        }
        let sm_count = attr(DeviceAttribute::MultiprocessorCount)? as u32;
        // Attributes cust does not name.
        let raw_attr = |a| {
            let mut v = 0i32;
            // SAFETY: writes one i32 for a valid attribute of a device handle cust returned.
            let rc = unsafe { cust::sys::cuDeviceGetAttribute(&mut v, a, device.as_raw()) };
            Error::check_raw("device attribute", rc).map(|()| v as usize)
        };
        use cust::sys::CUdevice_attribute as A;
        let smem = SharedMemory {
            per_block: raw_attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
            per_sm: attr(DeviceAttribute::MaxSharedMemoryPerMultiprocessor)? as usize,
            reserved_per_block: raw_attr(A::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK)?,
        };
        let context = Context::new(device).map_err(|e| Error::driver("creating context", e))?;
        // The sm_90 build on Hopper and later, unless SPARSE_TC_PTX=sm_80 asks for the
        // portable one (the tests run both on an H100).
        let portable = std::env::var("SPARSE_TC_PTX").is_ok_and(|v| v == "sm_80");
        let (ptx_target, ptx) = if cc.0 >= 9 && !portable { ("sm_90", crate::PTX_SM90) } else { ("sm_80", crate::PTX) };
        let module = Module::from_ptx(ptx, &[]).map_err(|e| Error::driver("loading PTX module", e))?;
        let stream = Stream::new(StreamFlags::NON_BLOCKING, None).map_err(|e| Error::driver("creating stream", e))?;
        let dependent_launch = if ptx_target == "sm_90" { DependentLauncher::find() } else { None };
        Ok(Gpu {
            stream,
            module,
            workspace: RefCell::new(None),
            flags: RefCell::new(None),
            flag_launch: Cell::new(0),
            flags_stale: Cell::new(false),
            kernels: RefCell::default(),
            sm_count,
            smem,
            dependent_launch,
            name,
            compute_capability: cc,
            ptx_target,
            owner: Owner::new(context),
        })
    }

    /// Device name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// The PTX build whose kernels this handle runs: `"sm_90"` ([`crate::PTX_SM90`]) on compute
    /// capability 9.0 and later, else `"sm_80"` ([`crate::PTX`]). The environment variable
    /// `SPARSE_TC_PTX=sm_80` selects the portable build on any device (for testing it).
    pub fn ptx_target(&self) -> &'static str {
        self.ptx_target
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// The stream all of this handle's work is queued on (for CUDA events or other libraries).
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Free and total device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: writes two sizes; this handle's context is current.
        let rc = unsafe { cust::sys::cuMemGetInfo_v2(&mut free, &mut total) };
        Error::check_raw("memory info", rc)?;
        Ok((free, total))
    }

    /// Waits for all queued work; surfaces asynchronous kernel faults as errors.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| Error::driver("stream synchronize", e))
    }

    /// Makes this handle's context current on the calling thread (every method does this).
    pub(crate) fn bind(&self) -> Result<()> {
        CurrentContext::set_current(self.owner.context()).map_err(|e| Error::driver("set current context", e))
    }

    /// `Ok` when `alloc` was made by this handle, else an [`Error::InvalidArgument`] naming
    /// `what` (every method taking a device object checks its operands with this first).
    pub(crate) fn check_owner<T: cust::memory::DeviceCopy>(&self, what: &str, alloc: &DeviceAlloc<T>) -> Result<()> {
        if Owner::same(&self.owner, alloc.owner()) {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "{what} was allocated by another Gpu handle; device objects can only be used with the handle that made them"
        )))
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // The stream, module and workspaces are released next (field order), on whatever
        // thread drops the handle: make its context current for them. Nothing to report on
        // failure: the context is live (this handle retains it), so binding cannot fail short
        // of a driver fault, which the handle's users have already been told about.
        let _ = self.bind();
    }
}
