//! Device allocations and the one rule of who owns them.
//!
//! # The ownership model
//!
//! Every device allocation of this crate is a [`DeviceAlloc`], and every `DeviceAlloc` holds
//! an `Arc` of the [`Owner`] of the [`Gpu`](crate::Gpu) handle that made it. The owner holds
//! the handle's CUDA context (a retained reference to the device's primary context), so:
//!
//! - **an allocation never outlives its context.** Dropping the `Gpu` handle first is fine:
//!   the context stays retained until the last allocation made through it is freed, so no
//!   other handle can be given the same addresses while a stale object still "owns" them.
//!   (Without this, the last handle's drop released the primary context, which frees all its
//!   memory; a new handle's context then reused the addresses, and dropping the stale object
//!   freed the new handle's live allocation — a use-after-free from safe code.)
//! - **an allocation is freed in its own context**, from whatever thread drops it: the drop
//!   pushes the owner's context, frees, and pops it, leaving the caller's current context as
//!   it was.
//! - **an allocation is used only with its own handle.** Each handle has its own `Owner`
//!   (its own stream orders its work), and every `Gpu` method that takes a device object
//!   checks [`Owner::same`] first and returns [`Error::InvalidArgument`] otherwise. Two handles
//!   on one device share a context, but not a stream: an object written on one handle's stream
//!   and read on another's without a synchronisation would race, so mixing is refused rather
//!   than guessed at.
//!
//! # Borrowed memory and contexts
//!
//! A `DeviceAlloc` may also **borrow** memory the caller owns (made by the unsafe
//! constructors [`DeviceMatrix::from_raw_parts`](crate::DeviceMatrix::from_raw_parts) and
//! [`DeviceSparseWeight::from_raw_parts`](crate::DeviceSparseWeight::from_raw_parts)). It
//! fits the same rule: it is made for one handle, holds that handle's `Owner` and is usable
//! only with it; it never frees the memory (dropping it does nothing to the memory). What the
//! host cannot check is the caller's promise (see those constructors): the memory stays
//! allocated and is not used by anyone else in a conflicting way while any work queued on it
//! may still run.
//!
//! The owner's context is the device's primary context retained by the handle (every
//! constructor of [`Gpu`](crate::Gpu) retains it when the context is primary), or, for
//! [`Gpu::from_raw_context`](crate::Gpu::from_raw_context) with a context that is not
//! primary, a context the caller keeps alive (the caller's promise, as above).

use crate::error::{Error, Result};
use cust::context::Context;
use cust::memory::{CopyDestination, DeviceBuffer, DeviceCopy};
use std::mem::ManuallyDrop;
use std::sync::Arc;

/// What every allocation of one [`Gpu`](crate::Gpu) handle keeps alive: the handle's context.
/// Its identity (the `Arc`'s address) names the handle.
pub(crate) struct Owner {
    context: OwnerContext,
}

/// How a handle holds its context.
pub(crate) enum OwnerContext {
    /// The device's primary context, retained (released when the last owner goes).
    Primary(Context),
    /// A context the caller keeps alive longer than every object of the handle
    /// ([`Gpu::from_raw_context`](crate::Gpu::from_raw_context)'s contract).
    Borrowed(cust::sys::CUcontext),
}

// SAFETY: a context handle may be used from any thread (the driver API is thread-safe; a
// context is made current per thread by `Gpu::bind` and the drops below). `Context` itself is
// `Send + Sync`; the borrowed raw handle is only ever passed to the driver.
unsafe impl Send for OwnerContext {}
unsafe impl Sync for OwnerContext {}

impl Owner {
    pub(crate) fn new(context: OwnerContext) -> Arc<Self> {
        Arc::new(Owner { context })
    }

    /// The raw context handle (for making it current).
    pub(crate) fn raw_context(&self) -> cust::sys::CUcontext {
        match &self.context {
            OwnerContext::Primary(c) => c.as_raw(),
            OwnerContext::Borrowed(c) => *c,
        }
    }

    /// Whether two owners are the same handle's.
    pub(crate) fn same(a: &Arc<Owner>, b: &Arc<Owner>) -> bool {
        Arc::ptr_eq(a, b)
    }
}

/// A device buffer of `len` `T`s that keeps its owner's context alive and frees itself in it,
/// or a span of memory the caller owns (never freed here).
pub(crate) struct DeviceAlloc<T: DeviceCopy> {
    memory: Memory<T>,
    owner: Arc<Owner>,
}

enum Memory<T: DeviceCopy> {
    // `ManuallyDrop` so `Drop` can free it with the owner's context pushed, before `owner`
    // (and with it possibly the last reference to the context) is released.
    Owned(ManuallyDrop<DeviceBuffer<T>>),
    /// `len` elements at device address `ptr`, owned by the caller.
    Borrowed { ptr: u64, len: usize },
}

impl<T: DeviceCopy> DeviceAlloc<T> {
    /// Copies `data` into a new allocation (synchronous). The owner's context must be current
    /// on this thread (every `Gpu` method binds it first).
    pub(crate) fn from_slice(owner: &Arc<Owner>, data: &[T], what: &'static str) -> Result<Self> {
        let buf = DeviceBuffer::from_slice(data).map_err(|e| Error::driver(what, e))?;
        Ok(Self::wrap(owner, buf))
    }

    /// A zero-filled allocation of `len` elements (`len ≥ 1`); context as for `from_slice`.
    pub(crate) fn zeroed(owner: &Arc<Owner>, len: usize, what: &'static str) -> Result<Self>
    where
        T: cust::memory::bytemuck::Zeroable,
    {
        let buf = DeviceBuffer::zeroed(len).map_err(|e| Error::driver(what, e))?;
        Ok(Self::wrap(owner, buf))
    }

    /// An allocation of `len` elements whose contents are undefined.
    ///
    /// # Safety
    /// `T` must have no invalid bit patterns, and the caller must write every element a kernel
    /// or a copy reads before it is read (each caller says how).
    pub(crate) unsafe fn uninitialized(owner: &Arc<Owner>, len: usize, what: &'static str) -> Result<Self> {
        // SAFETY: forwarded to the caller (see above).
        let buf = unsafe { DeviceBuffer::uninitialized(len) }.map_err(|e| Error::driver(what, e))?;
        Ok(Self::wrap(owner, buf))
    }

    fn wrap(owner: &Arc<Owner>, buf: DeviceBuffer<T>) -> Self {
        DeviceAlloc { memory: Memory::Owned(ManuallyDrop::new(buf)), owner: Arc::clone(owner) }
    }

    /// `len` elements at `ptr` that the caller owns, for `owner`'s handle; never freed here.
    ///
    /// # Safety
    /// `ptr .. ptr + len·size_of::<T>()` is device memory usable in the owner's context,
    /// suitably aligned for what reads it, that stays allocated while this value or any work
    /// queued on it lives (each public constructor states the full contract).
    pub(crate) unsafe fn borrowed(owner: &Arc<Owner>, ptr: u64, len: usize) -> Self {
        DeviceAlloc { memory: Memory::Borrowed { ptr, len }, owner: Arc::clone(owner) }
    }

    /// Whether the memory is the caller's (see [`DeviceAlloc::borrowed`]).
    pub(crate) fn is_borrowed(&self) -> bool {
        matches!(self.memory, Memory::Borrowed { .. })
    }

    /// The handle that made it.
    pub(crate) fn owner(&self) -> &Arc<Owner> {
        &self.owner
    }

    /// Raw device address of the first element.
    pub(crate) fn ptr(&self) -> u64 {
        match &self.memory {
            Memory::Owned(buf) => buf.as_device_ptr().as_raw(),
            Memory::Borrowed { ptr, .. } => *ptr,
        }
    }

    /// Elements.
    pub(crate) fn len(&self) -> usize {
        match &self.memory {
            Memory::Owned(buf) => buf.len(),
            Memory::Borrowed { len, .. } => *len,
        }
    }

    /// A new allocation of the owner's with the same contents, copied on the device in
    /// `stream`'s order (after the work queued there that writes `self`).
    pub(crate) fn duplicate(&self, stream: &cust::stream::Stream, what: &'static str) -> Result<Self> {
        // SAFETY: `T` is `DeviceCopy` (no invalid bit patterns of the kind that matter to a
        // byte copy), and every element is written by the copy below before anything reads it:
        // readers are queued on the same stream after the copy.
        let copy = unsafe { Self::uninitialized(&self.owner, self.len(), what) }?;
        let bytes = self.len() * std::mem::size_of::<T>();
        // SAFETY: both are live allocations of `len` elements; the copy is queued on `stream`.
        let rc = unsafe { cust::sys::cuMemcpyDtoDAsync_v2(copy.ptr(), self.ptr(), bytes, stream.as_inner()) };
        Error::check_raw(what, rc)?;
        Ok(copy)
    }

    /// Copies `host` (exactly `len` elements) into the allocation (synchronous).
    pub(crate) fn copy_from(&mut self, host: &[T], what: &'static str) -> Result<()> {
        match &mut self.memory {
            Memory::Owned(buf) => buf.copy_from(host).map_err(|e| Error::driver(what, e)),
            Memory::Borrowed { ptr, len } => {
                if host.len() != *len {
                    return Err(Error::Shape(format!("{what}: {} elements for a buffer of {len}", host.len())));
                }
                // SAFETY: `len` elements at `ptr` are live device memory (the borrow's contract),
                // `host` holds exactly as many; a synchronous copy.
                let rc = unsafe { cust::sys::cuMemcpyHtoD_v2(*ptr, host.as_ptr().cast(), std::mem::size_of_val(host)) };
                Error::check_raw(what, rc)
            }
        }
    }

    /// Copies the allocation into `host` (exactly `len` elements; synchronous).
    pub(crate) fn copy_to(&self, host: &mut [T], what: &'static str) -> Result<()> {
        match &self.memory {
            Memory::Owned(buf) => buf.copy_to(host).map_err(|e| Error::driver(what, e)),
            Memory::Borrowed { ptr, len } => {
                if host.len() != *len {
                    return Err(Error::Shape(format!("{what}: {} elements for a buffer of {len}", host.len())));
                }
                // SAFETY: as in `copy_from`, the other way.
                let rc = unsafe { cust::sys::cuMemcpyDtoH_v2(host.as_mut_ptr().cast(), *ptr, std::mem::size_of_val(host)) };
                Error::check_raw(what, rc)
            }
        }
    }
}

impl<T: DeviceCopy> Drop for DeviceAlloc<T> {
    fn drop(&mut self) {
        // The caller's memory is the caller's to free.
        let Memory::Owned(buf) = &mut self.memory else { return };
        let ctx = self.owner.raw_context();
        // SAFETY: `ctx` is a live context: `self.owner` retains it until after this function.
        // Pushing it makes the free below act in the allocation's own context on any thread;
        // the pop restores the thread's previous current context.
        let pushed = unsafe { cust::sys::cuCtxPushCurrent_v2(ctx) } == cust::sys::cudaError_enum::CUDA_SUCCESS;
        // SAFETY: dropped exactly once, here; nothing uses `buf` afterwards. `cuMemFree` waits
        // for work still using the memory (it synchronises with the device).
        unsafe { ManuallyDrop::drop(buf) };
        if pushed {
            let mut popped = std::ptr::null_mut();
            // SAFETY: pops the context pushed above.
            unsafe { cust::sys::cuCtxPopCurrent_v2(&mut popped) };
        }
    }
}
