//! The GPU handle: context, stream and the kernel module (loaded once per handle).
//!
//! # Threads
//!
//! A [`Gpu`] is `Send + Sync`: share one (`&Gpu`, `Arc<Gpu>`) between the threads of a
//! server. All of a handle's work goes to its one stream, in the order the calls queue it.
//! What makes concurrent calls correct is the handle's **queue lock** ([`QueueLock`]), which
//! every method holds from its first driver call to its return (the guard [`Gpu::bind`]
//! returns):
//! - the handle's grow-on-demand buffers (the split-K workspace, the completion flags) are
//!   sized, read for their address and used by the kernels a call queues as one step: no
//!   other thread can grow (free and reallocate) them in between;
//! - the completion-flag numbering (`linear.rs: completion_flags`) and the recording state
//!   (`graph.rs`) change only under it;
//! - a recording ([`Gpu::record`]) holds it from the start of the capture to its end, so no
//!   other thread's work is captured into it, nor can another thread's synchronisation break
//!   the capture. The lock is reentrant for the recording thread (the closure `record` runs
//!   calls the handle's methods again).
//!
//! Calls on one handle therefore queue one after the other (they are short: the GPU work
//! runs asynchronously); for work that should overlap on the GPU, use one handle per stream.

use crate::dependent_launch::DependentLauncher;
use crate::error::{Error, Result};
use crate::memory::{DeviceAlloc, Owner, OwnerContext};
use cust::context::Context;
use cust::device::{Device, DeviceAttribute};
use cust::module::Module;
use cust::stream::{Stream, StreamFlags};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;

/// Set to `0` to queue only the split-K reductions as programmatic dependents, as before
/// every kernel was (Hopper, sm_90 build; for comparisons: `bench-e2e` reports the setting).
pub const DEPENDENT_LAUNCH_VAR: &str = "SPARSE_TC_DEPENDENT_LAUNCH";

/// A CUDA device with this crate's kernels loaded.
///
/// Holds a context (the device's primary context, or one the caller passes in), one stream on
/// which every operation of this handle runs in order (its own, or the caller's), and the PTX
/// module. `Send + Sync`: one handle can serve several threads (see the module docs of
/// `gpu.rs`: each call queues its work as one step under the handle's queue lock).
///
/// Device objects it makes ([`DeviceMatrix`](crate::DeviceMatrix),
/// [`DeviceSparseWeight`](crate::DeviceSparseWeight)) keep its context alive, so they may
/// outlive the handle; they can only be used with the handle that made them (any other is an
/// [`Error::InvalidArgument`]), and so can objects over borrowed memory
/// ([`DeviceMatrix::from_raw_parts`](crate::DeviceMatrix::from_raw_parts)): they are made
/// for one handle. See `memory.rs` for the ownership model.
///
/// # Interop
///
/// [`Gpu::new`] uses the device's **primary context**, as cudarc (`CudaContext::new`) and
/// candle (`Device::new_cuda`) do, so device pointers of either can be wrapped
/// ([`DeviceMatrix::from_raw_parts`](crate::DeviceMatrix::from_raw_parts)) and used by a handle
/// of the same device. [`Gpu::from_raw_context`] attaches to a given context,
/// [`Gpu::from_raw_stream`] also queues on the caller's stream (so the caller's work and
/// ours are ordered without synchronisation).
pub struct Gpu {
    // Field order = drop order: stream and module before the owner (the context).
    pub(crate) stream: HandleStream,
    pub(crate) module: Module,
    /// Held by every method while it queues work; see the module docs.
    pub(crate) queue: QueueLock,
    /// The grow-on-demand buffers and the flag numbering (changed only under `queue`).
    pub(crate) state: Mutex<QueueState>,
    /// Per kernel name and dynamic shared memory: launch set-up done (smem limit raised) and
    /// its resident blocks on the GPU, so a `linear` call does no driver queries beyond the
    /// kernel lookup.
    pub(crate) kernels: Mutex<HashMap<(String, u32), usize>>,
    pub(crate) sm_count: u32,
    pub(crate) smem: SharedMemory,
    /// `cuLaunchKernelEx`, with the sm_90 build only: its split-K reductions wait for the
    /// kernel before them themselves (`griddepcontrol.wait`, and the SpMM's completion
    /// flags), so they are queued as programmatic dependents.
    pub(crate) dependent_launch: Option<DependentLauncher>,
    /// Every kernel, not only the reductions, queued as a programmatic dependent (with
    /// `dependent_launch`; every entry point waits for its predecessor first, device module
    /// `griddep`); off with `SPARSE_TC_DEPENDENT_LAUNCH=0`.
    pub(crate) dependent_everywhere: bool,
    name: String,
    compute_capability: (i32, i32),
    ptx_target: &'static str,
    /// The context, shared with every allocation of this handle; its identity names the handle.
    pub(crate) owner: Arc<Owner>,
}

/// A handle's buffers that grow on demand, and the completion-flag numbering.
#[derive(Default)]
pub(crate) struct QueueState {
    /// Split-K partial sums (and the attention split's accumulators), grown on demand and
    /// reused (no allocation per call).
    pub workspace: Option<DeviceAlloc<f32>>,
    /// The split SpMM launches' completion flags (one per block and token tile, grown on
    /// demand, zeroed when allocated) and the number the last launch published in them
    /// (`linear.rs: completion_flags`).
    pub flags: Option<DeviceAlloc<u32>>,
    pub flag_launch: u32,
    /// The split dense launches' arrival counters (one per split row tile and token tile,
    /// grown on demand, zeroed when allocated; 0 between launches: `linear.rs:
    /// arrival_counters`).
    pub counters: Option<DeviceAlloc<u32>>,
    /// Set by a recording or a replay (`graph.rs`): the flags may hold numbers an ordinary
    /// launch reuses, so the next one zeroes them first.
    pub flags_stale: bool,
    /// Set while [`Gpu::record`] captures the stream: an operation that would allocate or
    /// wait refuses before calling the driver (which would invalidate the capture).
    pub recording: bool,
}

/// The handle's stream: its own (destroyed with the handle) or the caller's (never destroyed
/// here).
pub(crate) struct HandleStream {
    stream: ManuallyDrop<Stream>,
    owned: bool,
}

impl std::ops::Deref for HandleStream {
    type Target = Stream;
    fn deref(&self) -> &Stream {
        &self.stream
    }
}

impl Drop for HandleStream {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: dropped once, here; an owned stream was created by this handle.
            unsafe { ManuallyDrop::drop(&mut self.stream) };
        }
    }
}

/// A lock that the thread holding it may take again (the closure of [`Gpu::record`] calls
/// the handle's methods, which take it too). Other threads wait until it is released.
pub(crate) struct QueueLock {
    /// The holder and how many times it holds the lock.
    holder: Mutex<Option<(ThreadId, usize)>>,
    released: Condvar,
}

impl QueueLock {
    fn new() -> Self {
        QueueLock { holder: Mutex::new(None), released: Condvar::new() }
    }

    /// Waits until no other thread holds the lock, then holds it (again).
    pub(crate) fn lock(&self) -> QueueGuard<'_> {
        let me = std::thread::current().id();
        // The mutex guards two plain values and is never held across anything that can
        // panic, so a poisoned one still holds a consistent state.
        let mut holder = self.holder.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match &mut *holder {
                None => {
                    *holder = Some((me, 1));
                    break;
                }
                Some((t, depth)) if *t == me => {
                    *depth += 1;
                    break;
                }
                Some(_) => holder = self.released.wait(holder).unwrap_or_else(PoisonError::into_inner),
            }
        }
        QueueGuard { lock: self, _not_send: PhantomData }
    }
}

/// Holding the handle's [`QueueLock`]; released when dropped (on the thread that took it).
#[must_use = "the queue lock is released when the guard is dropped: keep it while queueing"]
pub(crate) struct QueueGuard<'a> {
    lock: &'a QueueLock,
    // Released by the thread that holds it (the holder is a thread id).
    _not_send: PhantomData<*const ()>,
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        let mut holder = self.lock.holder.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, depth)) = &mut *holder {
            *depth -= 1;
            if *depth == 0 {
                *holder = None;
                self.lock.released.notify_one();
            }
        }
    }
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

    /// Number of CUDA devices: 0 without a driver or a GPU.
    pub fn device_count() -> usize {
        if init().is_err() {
            return 0;
        }
        Device::num_devices().map_or(0, |n| n as usize)
    }

    /// Opens the device with the given ordinal (its primary context, a new stream).
    pub fn with_device(ordinal: u32) -> Result<Self> {
        init()?;
        let count = Device::num_devices().map_err(|e| Error::driver("counting devices", e))?;
        if ordinal >= count {
            return Err(Error::NoDevice(format!("device {ordinal} requested, {count} present")));
        }
        let device = Device::get_device(ordinal).map_err(|e| Error::driver("get device", e))?;
        let context = Context::new(device).map_err(|e| Error::driver("creating context", e))?;
        Self::open(device, OwnerContext::Primary(context), None)
    }

    /// Attaches a handle to an existing context, with a new stream of its own.
    ///
    /// When `ctx` is its device's primary context (cudarc's `CudaContext`, candle's CUDA
    /// device, [`Gpu::new`]), the handle retains it itself, as [`Gpu::new`] does, and the
    /// lifetime requirement below does not apply.
    ///
    /// # Safety
    /// `ctx` is a live CUDA context (e.g. cudarc's `ctx.cu_ctx().cast()`). If it is not its
    /// device's primary context, it must stay alive (not be destroyed) until this handle and
    /// every object made with it ([`DeviceMatrix`](crate::DeviceMatrix),
    /// [`DeviceSparseWeight`](crate::DeviceSparseWeight), [`Recording`](crate::Recording))
    /// are dropped: a context created with `cuCtxCreate` cannot be retained.
    pub unsafe fn from_raw_context(ctx: cust::sys::CUcontext) -> Result<Self> {
        // SAFETY: forwarded (a live context).
        let (device, owner) = unsafe { attach(ctx) }?;
        Self::open(device, owner, None)
    }

    /// Attaches a handle to an existing context and queues all of its work on the caller's
    /// `stream` (which it never destroys): work the caller queued there before a call runs
    /// before it, and work queued after a call runs after it, without synchronisation.
    /// [`Gpu::synchronize`] waits for the whole stream (the caller's work too).
    ///
    /// The context retained as in [`Gpu::from_raw_context`]. Checked: `stream` belongs to
    /// `ctx` (`cuStreamGetCtx`).
    ///
    /// # Safety
    /// As for [`Gpu::from_raw_context`], and: `stream` is a live stream of `ctx` (e.g.
    /// cudarc's `stream.cu_stream().cast()`, or null for the legacy default stream) that stays
    /// alive until this handle is dropped and every piece of work it queued has finished
    /// (synchronise before destroying it). Do not capture the stream into a CUDA graph
    /// yourself while a call of this handle runs (use [`Gpu::record`]); a recording made with
    /// [`Gpu::record`] captures whatever other threads queue on the stream meanwhile.
    pub unsafe fn from_raw_stream(ctx: cust::sys::CUcontext, stream: cust::sys::CUstream) -> Result<Self> {
        // SAFETY: forwarded (a live context).
        let (device, owner) = unsafe { attach(ctx) }?;
        let mut stream_ctx: cust::sys::CUcontext = std::ptr::null_mut();
        // SAFETY: `owner`'s context is current (`attach` made it so); writes one handle. For
        // the null stream the driver answers the current context.
        let rc = unsafe { cust::sys::cuStreamGetCtx(stream, &mut stream_ctx) };
        Error::check_raw("the stream's context", rc)?;
        if stream_ctx != ctx {
            return Err(Error::InvalidArgument(format!(
                "from_raw_stream: the stream belongs to context {stream_ctx:?}, not to the given context {ctx:?}"
            )));
        }
        Self::open(device, owner, Some(stream))
    }

    /// Loads the module and sets the handle up in `owner`'s context, on `stream` (the
    /// caller's, live in that context) or a new one.
    fn open(device: Device, owner: OwnerContext, stream: Option<cust::sys::CUstream>) -> Result<Self> {
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
        let owner = Owner::new(owner);
        // The module and the stream are made in the handle's context.
        set_current(owner.raw_context())?;
        // The sm_90 build on Hopper and later, unless SPARSE_TC_PTX=sm_80 asks for the
        // portable one (the tests run both on an H100).
        let portable = std::env::var("SPARSE_TC_PTX").is_ok_and(|v| v == "sm_80");
        let (ptx_target, ptx) = if cc.0 >= 9 && !portable { ("sm_90", crate::PTX_SM90) } else { ("sm_80", crate::PTX) };
        let module = Module::from_ptx(ptx, &[]).map_err(|e| Error::driver("loading PTX module", e))?;
        let stream = match stream {
            None => HandleStream {
                stream: ManuallyDrop::new(
                    Stream::new(StreamFlags::NON_BLOCKING, None).map_err(|e| Error::driver("creating stream", e))?,
                ),
                owned: true,
            },
            // SAFETY: a live stream of this context (the caller's contract); never destroyed
            // here (`owned: false`).
            Some(raw) => HandleStream { stream: ManuallyDrop::new(unsafe { Stream::from_raw(raw) }), owned: false },
        };
        let dependent_launch = if ptx_target == "sm_90" { DependentLauncher::find() } else { None };
        let dependent_everywhere = std::env::var(DEPENDENT_LAUNCH_VAR).map_or(true, |v| v != "0");
        Ok(Gpu {
            stream,
            module,
            queue: QueueLock::new(),
            state: Mutex::default(),
            kernels: Mutex::default(),
            sm_count,
            smem,
            dependent_launch,
            dependent_everywhere,
            name,
            compute_capability: cc,
            ptx_target,
            owner,
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

    /// Whether every kernel is queued as a programmatic dependent of the one before it
    /// (Hopper, sm_90 build, a CUDA 12 driver, and [`DEPENDENT_LAUNCH_VAR`] not `0`).
    pub fn dependent_launch(&self) -> bool {
        self.dependent_launch.is_some() && self.dependent_everywhere
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// The stream all of this handle's work is queued on (for CUDA events or other libraries).
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The raw context handle of this handle (for other libraries).
    pub fn raw_context(&self) -> cust::sys::CUcontext {
        self.owner.raw_context()
    }

    /// Free and total device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        let _queue = self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: writes two sizes; this handle's context is current.
        let rc = unsafe { cust::sys::cuMemGetInfo_v2(&mut free, &mut total) };
        Error::check_raw("memory info", rc)?;
        Ok((free, total))
    }

    /// Waits for all queued work; surfaces asynchronous kernel faults as errors.
    pub fn synchronize(&self) -> Result<()> {
        // Under the queue lock: waiting on a stream another thread is recording would end
        // that recording with an error.
        let _queue = self.queue.lock();
        if self.state().recording {
            return Err(Error::InvalidArgument("synchronize: waiting is not possible while recording (Gpu::record)".into()));
        }
        self.wait_stream()
    }

    /// Waits for the stream; the caller holds the queue lock (and may hold the state).
    pub(crate) fn wait_stream(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| Error::driver("stream synchronize", e))
    }

    /// Takes the handle's queue lock and makes its context current on the calling thread
    /// (every method does this before its first driver call, and keeps the guard until it has
    /// queued all of its work; see the module docs).
    pub(crate) fn bind(&self) -> Result<QueueGuard<'_>> {
        let queue = self.queue.lock();
        set_current(self.owner.raw_context())?;
        Ok(queue)
    }

    /// The handle's queue state (workspaces, flag numbering). Callers hold the queue lock
    /// ([`Gpu::bind`]) and release this guard before calling another method of the handle.
    pub(crate) fn state(&self) -> MutexGuard<'_, QueueState> {
        // Poisoned only by a panic while the state was borrowed, between plain assignments of
        // its fields: every field is still a valid value.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
        let _ = set_current(self.owner.raw_context());
    }
}

/// `cuInit`, reporting a missing driver or GPU as [`Error::NoDevice`].
fn init() -> Result<()> {
    cust::init(cust::CudaFlags::empty())
        .map_err(|e| Error::NoDevice(format!("cuInit failed ({e:?}): no NVIDIA driver or no GPU visible")))
}

/// Makes `ctx` current on the calling thread.
fn set_current(ctx: cust::sys::CUcontext) -> Result<()> {
    // SAFETY: `ctx` is a live context: every caller holds an `Owner` that keeps it alive.
    Error::check_raw("set current context", unsafe { cust::sys::cuCtxSetCurrent(ctx) })
}

/// The device of a live context `ctx` and how the handle holds it: retained when it is the
/// device's primary context, else borrowed. Leaves `ctx` current on the calling thread.
///
/// # Safety
/// `ctx` is a live context handle.
unsafe fn attach(ctx: cust::sys::CUcontext) -> Result<(Device, OwnerContext)> {
    init()?;
    if ctx.is_null() {
        return Err(Error::InvalidArgument("from_raw_context: the context handle is null".into()));
    }
    set_current(ctx)?;
    let mut ordinal: cust::sys::CUdevice = 0;
    // SAFETY: `ctx` is current; writes one device handle.
    Error::check_raw("the context's device", unsafe { cust::sys::cuCtxGetDevice(&mut ordinal) })?;
    let device = Device::get_device(ordinal as u32).map_err(|e| Error::driver("get device", e))?;
    // Retaining the primary context returns its handle: if that is `ctx`, keep the retain.
    let primary = Context::new(device).map_err(|e| Error::driver("retaining the primary context", e))?;
    let owner = if primary.as_raw() == ctx {
        OwnerContext::Primary(primary)
    } else {
        drop(primary);
        OwnerContext::Borrowed(ctx)
    };
    set_current(ctx)?;
    Ok((device, owner))
}

// Compile-time checks of the threading design: a handle and the objects it makes can be
// shared between threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Gpu>();
    send_sync::<crate::DeviceMatrix<half::f16>>();
    send_sync::<crate::DeviceSparseWeight<half::bf16>>();
    send_sync::<crate::Recording>();
};
