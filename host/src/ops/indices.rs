//! Device arrays of `u32` indices: token ids, positions, sequence slots, row numbers.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::memory::DeviceAlloc;

/// A device array of `len` u32 indices (token ids, positions, sequence slots), allocated with
/// room for `capacity` so it can be rewritten in place every step (a captured CUDA graph keeps
/// its address). Owned like a [`DeviceMatrix`](crate::DeviceMatrix): usable only with the
/// [`Gpu`] that made it.
///
/// Kernels that read indices check each against its range (a vocabulary, a cache length)
/// themselves, so an out-of-range value never becomes an out-of-bounds access; the host also
/// validates the values it writes where it knows the range.
pub struct DeviceIndices {
    len: usize,
    pub(crate) buf: DeviceAlloc<u32>,
}

impl DeviceIndices {
    /// Indices currently held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Most indices it can hold.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
    /// Raw device address (for other libraries).
    pub fn device_ptr(&self) -> u64 {
        self.buf.ptr()
    }
    /// Sets the number of indices held after a kernel queued on the stream wrote them
    /// (`len` ≤ capacity, checked by the caller).
    pub(crate) fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.capacity());
        self.len = len;
    }
}

impl Gpu {
    /// Copies `values` to a new device array (capacity = length, at least 1).
    pub fn upload_indices(&self, values: &[u32]) -> Result<DeviceIndices> {
        let mut v = self.indices_with_capacity(values.len().max(1))?;
        self.write_indices(&mut v, values)?;
        Ok(v)
    }

    /// An empty device array with room for `capacity ≥ 1` indices (zero-filled).
    pub fn indices_with_capacity(&self, capacity: usize) -> Result<DeviceIndices> {
        if capacity == 0 {
            return Err(Error::InvalidArgument("indices_with_capacity: capacity must be at least 1".into()));
        }
        let _queue = self.bind()?;
        Ok(DeviceIndices { len: 0, buf: DeviceAlloc::zeroed(&self.owner, capacity, "allocate indices")? })
    }

    /// Overwrites the array with `values` (at most its capacity), after the work queued before
    /// on this handle's stream has finished with the old ones.
    pub fn write_indices(&self, dst: &mut DeviceIndices, values: &[u32]) -> Result<()> {
        self.check_owner("write_indices: the array", &dst.buf)?;
        if values.len() > dst.capacity() {
            return Err(Error::Shape(format!(
                "write_indices: {} values do not fit a capacity of {}",
                values.len(),
                dst.capacity()
            )));
        }
        let _queue = self.bind()?;
        if !values.is_empty() {
            // Queued on the stream: ordered after the kernels that read the old values.
            // SAFETY: copies `values.len()` u32 (≤ capacity, checked above) from a live host
            // slice into a live allocation of this handle. The copy is pageable-memory
            // asynchronous: the driver stages the source before returning, so the slice may be
            // dropped afterwards.
            let rc = unsafe {
                cust::sys::cuMemcpyHtoDAsync_v2(
                    dst.buf.ptr(),
                    values.as_ptr().cast(),
                    std::mem::size_of_val(values),
                    self.stream.as_inner(),
                )
            };
            Error::check_raw("write indices", rc)?;
        }
        dst.len = values.len();
        Ok(())
    }

    /// Waits for queued work, then copies the array back.
    pub fn download_indices(&self, v: &DeviceIndices) -> Result<Vec<u32>> {
        self.check_owner("download_indices: the array", &v.buf)?;
        let _queue = self.bind()?;
        self.synchronize()?;
        let mut all = vec![0u32; v.capacity()];
        v.buf.copy_to(&mut all, "download indices")?;
        all.truncate(v.len);
        Ok(all)
    }
}
