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

use crate::error::{Error, Result};
use cust::context::Context;
use cust::memory::{CopyDestination, DeviceBuffer, DeviceCopy};
use std::mem::ManuallyDrop;
use std::sync::Arc;

/// What every allocation of one [`Gpu`](crate::Gpu) handle keeps alive: the handle's context.
/// Its identity (the `Arc`'s address) names the handle.
pub(crate) struct Owner {
    context: Context,
}

impl Owner {
    pub(crate) fn new(context: Context) -> Arc<Self> {
        Arc::new(Owner { context })
    }

    /// The context (for making it current).
    pub(crate) fn context(&self) -> &Context {
        &self.context
    }

    /// Whether two owners are the same handle's.
    pub(crate) fn same(a: &Arc<Owner>, b: &Arc<Owner>) -> bool {
        Arc::ptr_eq(a, b)
    }
}

/// A device buffer of `len` `T`s that keeps its owner's context alive and frees itself in it.
pub(crate) struct DeviceAlloc<T: DeviceCopy> {
    // `ManuallyDrop` so `Drop` can free it with the owner's context pushed, before `owner`
    // (and with it possibly the last reference to the context) is released.
    buf: ManuallyDrop<DeviceBuffer<T>>,
    owner: Arc<Owner>,
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
        DeviceAlloc { buf: ManuallyDrop::new(buf), owner: Arc::clone(owner) }
    }

    /// The handle that made it.
    pub(crate) fn owner(&self) -> &Arc<Owner> {
        &self.owner
    }

    /// Raw device address of the first element.
    pub(crate) fn ptr(&self) -> u64 {
        self.buf.as_device_ptr().as_raw()
    }

    /// Elements.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
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
        self.buf.copy_from(host).map_err(|e| Error::driver(what, e))
    }

    /// Copies the allocation into `host` (exactly `len` elements; synchronous).
    pub(crate) fn copy_to(&self, host: &mut [T], what: &'static str) -> Result<()> {
        self.buf.copy_to(host).map_err(|e| Error::driver(what, e))
    }
}

impl<T: DeviceCopy> Drop for DeviceAlloc<T> {
    fn drop(&mut self) {
        let ctx = self.owner.context.as_raw();
        // SAFETY: `ctx` is a live context: `self.owner` retains it until after this function.
        // Pushing it makes the free below act in the allocation's own context on any thread;
        // the pop restores the thread's previous current context.
        let pushed = unsafe { cust::sys::cuCtxPushCurrent_v2(ctx) } == cust::sys::cudaError_enum::CUDA_SUCCESS;
        // SAFETY: dropped exactly once, here; nothing uses `buf` afterwards. `cuMemFree` waits
        // for work still using the memory (it synchronises with the device).
        unsafe { ManuallyDrop::drop(&mut self.buf) };
        if pushed {
            let mut popped = std::ptr::null_mut();
            // SAFETY: pops the context pushed above.
            unsafe { cust::sys::cuCtxPopCurrent_v2(&mut popped) };
        }
    }
}
