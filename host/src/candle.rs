//! candle integration (feature `candle`): [`SparseLinear`], a sparse drop-in for
//! `candle_nn::Linear`, implemented as a candle [`CustomOp1`].
//!
//! ```text
//! let up = SparseLinear::from_linear(&candle_nn::linear_no_bias(576, 1536, vb)?)?;  // was: the Linear itself
//! ```
//!
//! The weight's zeros are packed away at construction (the format chosen by stored bytes,
//! [`FormatChoice::Auto`](crate::sparse::FormatChoice::Auto)); `forward` computes
//! `x · Wᵀ (+ bias)` for `x` of shape `[…, in]` in f16 or bf16, the dtype of the weight:
//! - on candle's **CPU** device with [`crate::cpu::linear_sparse`] (feature `candle`);
//! - on candle's **CUDA** device (feature `candle-cuda`, which builds candle's CUDA backend:
//!   it needs `nvcc`) with [`Gpu::linear_into`](crate::Gpu::linear_into) straight on candle's
//!   memory: the input is read where candle keeps it, the output is a new candle buffer, and
//!   the kernel is queued on candle's stream (the per-thread default stream of the thread
//!   that calls `forward`, where candle queues that thread's work), so it runs in order with
//!   candle's own work and nothing is copied or synchronised. One [`Gpu`](crate::Gpu) handle
//!   per context and stream is shared by every `SparseLinear` of that device.
//!
//! No gradient (`apply_op1_no_bwd`): inference only.

use crate::error::Error;
use crate::sparse::SparseWeight;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Tensor};
use half::{bf16, f16};

#[cfg(feature = "candle-cuda")]
use crate::{sparse::FormatChoice, DeviceMatrix, DeviceSparseWeight, Gpu};
#[cfg(feature = "candle-cuda")]
use std::sync::Arc;

/// Our errors as candle's.
fn wrap(e: Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// A linear layer `y = x · Wᵀ + b` whose weight is stored sparse (see the module docs).
pub struct SparseLinear {
    weight: Weight,
    bias: Option<Tensor>,
    rows: usize,
    cols: usize,
}

/// The packed weight in the dtype of the layer.
enum Weight {
    F16(Stored<f16>),
    BF16(Stored<bf16>),
}

/// Where the packed weight lives: the device of the tensor it was made from.
enum Stored<T: crate::Element> {
    Host(SparseWeight<T>),
    #[cfg(feature = "candle-cuda")]
    Device { gpu: Arc<cuda::Attached>, w: DeviceSparseWeight<T> },
}

impl SparseLinear {
    /// A sparse layer from a dense weight `[out, in]` (f16 or bf16, on the CPU or a CUDA
    /// device) whose pruned entries are zeros, and an optional bias `[out]`. The weight is
    /// packed on the host and, for a CUDA tensor, uploaded to its device.
    pub fn new(weight: &Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        let (rows, cols) = weight.dims2().map_err(|_| {
            candle_core::Error::msg(format!("SparseLinear: the weight must be [out, in], got shape {:?}", weight.dims()))
        })?;
        if let Some(b) = &bias {
            if b.dims() != [rows] {
                candle_core::bail!("SparseLinear: the bias must be [{rows}], got shape {:?}", b.dims());
            }
        }
        let dev = weight.device();
        let packed = match weight.dtype() {
            DType::F16 => Weight::F16(Stored::new(dev, pack(weight, rows, cols)?)?),
            DType::BF16 => Weight::BF16(Stored::new(dev, pack(weight, rows, cols)?)?),
            d => candle_core::bail!(
                "SparseLinear: the weight is {d:?}; sparse layers compute in f16 or bf16 (convert with `to_dtype`)"
            ),
        };
        Ok(SparseLinear { weight: packed, bias, rows, cols })
    }

    /// The sparse twin of a `candle_nn::Linear` (its weight and bias; zeros packed away).
    pub fn from_linear(linear: &candle_nn::Linear) -> candle_core::Result<Self> {
        Self::new(linear.weight(), linear.bias().cloned())
    }

    /// `(out_features, in_features)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn dtype(&self) -> DType {
        match self.weight {
            Weight::F16(_) => DType::F16,
            Weight::BF16(_) => DType::BF16,
        }
    }
}

/// The weight's values on the host, zeros packed away.
fn pack<T: crate::Element + candle_core::WithDType>(weight: &Tensor, rows: usize, cols: usize) -> candle_core::Result<SparseWeight<T>> {
    let values = weight.to_device(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1::<T>()?;
    SparseWeight::from_dense(rows, cols, &values).map_err(wrap)
}

impl<T: crate::Element> Stored<T> {
    fn new(device: &candle_core::Device, w: SparseWeight<T>) -> candle_core::Result<Self> {
        match device {
            candle_core::Device::Cpu => Ok(Stored::Host(w)),
            #[cfg(feature = "candle-cuda")]
            candle_core::Device::Cuda(dev) => {
                let gpu = cuda::attach(dev)?;
                let w = gpu.gpu.upload_sparse_as(&w, FormatChoice::Auto).map_err(wrap)?;
                Ok(Stored::Device { gpu, w })
            }
            d => candle_core::bail!(
                "SparseLinear: the weight is on {d:?}; supported: the CPU, and CUDA devices with the feature `candle-cuda`"
            ),
        }
    }
}

impl Module for SparseLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.dtype() != self.dtype() {
            candle_core::bail!("SparseLinear: the input is {:?}, the layer {:?}", x.dtype(), self.dtype());
        }
        let y = x.contiguous()?.apply_op1_no_bwd(self)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// The shape checks of one call: `x` is `[…, cols]`, contiguous from `start`; returns the
/// token count, the output shape and the start offset.
fn tokens(layer: &SparseLinear, layout: &Layout) -> candle_core::Result<(usize, Shape, usize)> {
    let dims = layout.dims();
    let Some((&k, lead)) = dims.split_last() else {
        candle_core::bail!("SparseLinear: the input is a scalar; it must be […, {}]", layer.cols);
    };
    if k != layer.cols {
        candle_core::bail!("SparseLinear: the input is {dims:?}, its last dimension must be in_features = {}", layer.cols);
    }
    let Some((start, _)) = layout.contiguous_offsets() else {
        candle_core::bail!("SparseLinear: the input must be contiguous (forward makes it so)");
    };
    let n = lead.iter().product();
    let mut out = lead.to_vec();
    out.push(layer.rows);
    Ok((n, Shape::from(out), start))
}

impl CustomOp1 for SparseLinear {
    fn name(&self) -> &'static str {
        "sparse-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, shape, start) = tokens(self, layout)?;
        let x = start..start + n * self.cols;
        match (&self.weight, storage) {
            (Weight::F16(Stored::Host(w)), CpuStorage::F16(v)) => {
                Ok((CpuStorage::F16(crate::cpu::linear_sparse(&v[x], n, w).map_err(wrap)?), shape))
            }
            (Weight::BF16(Stored::Host(w)), CpuStorage::BF16(v)) => {
                Ok((CpuStorage::BF16(crate::cpu::linear_sparse(&v[x], n, w).map_err(wrap)?), shape))
            }
            (_, s) if s.dtype() != self.dtype() => {
                candle_core::bail!("SparseLinear: the input is {:?}, the layer {:?}", s.dtype(), self.dtype())
            }
            _ => candle_core::bail!("SparseLinear: the input is on the CPU, the layer's weight on a GPU"),
        }
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, shape, start) = tokens(self, layout)?;
        match &self.weight {
            Weight::F16(Stored::Device { gpu, w }) => cuda::linear(gpu, w, storage, start, n, shape),
            Weight::BF16(Stored::Device { gpu, w }) => cuda::linear(gpu, w, storage, start, n, shape),
            _ => candle_core::bail!("SparseLinear: the input is on a GPU, the layer's weight on the CPU"),
        }
    }
}

/// The CUDA side: a [`Gpu`] attached to candle's stream, and the call on candle's memory.
#[cfg(feature = "candle-cuda")]
mod cuda {
    use super::{wrap, DeviceMatrix, DeviceSparseWeight, Gpu, Shape};
    use candle_core::cuda::cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
    use candle_core::cuda::{CudaDType, CudaDevice};
    use candle_core::CudaStorage;
    use std::sync::{Arc, Mutex, PoisonError, Weak};

    /// A handle queued on one candle stream, keeping that stream alive while it lives.
    pub(super) struct Attached {
        /// Dropped first (field order): synchronised and released before the stream.
        pub(super) gpu: Gpu,
        stream: Arc<CudaStream>,
    }

    impl Drop for Attached {
        fn drop(&mut self) {
            // Work queued by this handle finishes before its workspaces and candle's stream
            // go; nothing to report on failure (the stream's owner sees the same error).
            let _ = self.gpu.synchronize();
        }
    }

    /// The handles made so far, by context and stream (candle's devices all use the
    /// per-thread default stream, the same handle value in every context): layers of one
    /// device share one.
    static HANDLES: Mutex<Vec<(StreamKey, Weak<Attached>)>> = Mutex::new(Vec::new());

    /// `(context, stream)` of a candle stream, as addresses.
    type StreamKey = (usize, usize);

    fn key(stream: &CudaStream) -> StreamKey {
        (stream.context().cu_ctx() as usize, stream.cu_stream() as usize)
    }

    /// The handle on `dev`'s stream (made on first use).
    pub(super) fn attach(dev: &CudaDevice) -> candle_core::Result<Arc<Attached>> {
        let stream = dev.cuda_stream();
        let key = key(&stream);
        let mut handles = HANDLES.lock().unwrap_or_else(PoisonError::into_inner);
        handles.retain(|(_, h)| h.strong_count() > 0);
        if let Some(h) = handles.iter().find(|(k, _)| *k == key).and_then(|(_, h)| h.upgrade()) {
            return Ok(h);
        }
        // SAFETY: candle's context is its device's primary context (cudarc's `CudaContext`),
        // which the handle retains; the stream is one of that context's, and `Attached`
        // keeps it alive (an `Arc`) until the handle is dropped after a synchronize.
        let gpu = unsafe { Gpu::from_raw_stream(stream.context().cu_ctx().cast(), stream.cu_stream().cast()) }.map_err(wrap)?;
        let h = Arc::new(Attached { gpu, stream: Arc::clone(&stream) });
        handles.push((key, Arc::downgrade(&h)));
        Ok(h)
    }

    /// `x · Wᵀ` for the `n` rows of `storage` from element `start`, into a new candle buffer.
    pub(super) fn linear<T>(
        h: &Attached,
        w: &DeviceSparseWeight<T>,
        storage: &CudaStorage,
        start: usize,
        n: usize,
        shape: Shape,
    ) -> candle_core::Result<(CudaStorage, Shape)>
    where
        T: crate::Element + CudaDType + DeviceRepr + ValidAsZeroBits,
    {
        let dev = &storage.device;
        if key(&dev.cuda_stream()) != key(&h.stream) {
            candle_core::bail!("SparseLinear: the input is on another CUDA device (or stream) than the layer's weight");
        }
        let (m, k) = (w.rows(), w.cols());
        if k % 8 != 0 || m % 8 != 0 {
            candle_core::bail!(
                "SparseLinear on CUDA: in_features = {k} and out_features = {m} must be multiples of 8 (rows of candle's buffers are not padded)"
            );
        }
        let y = dev.alloc_zeros::<T>(n * m)?;
        if n == 0 {
            return Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape));
        }
        let mut y = y;
        let x = storage.as_cuda_slice::<T>()?.slice(start..start + n * k);
        {
            let stream = &h.stream;
            let (xp, _x_sync) = x.device_ptr(stream);
            let (yp, _y_sync) = y.device_ptr_mut(stream);
            // SAFETY: both are live candle buffers of this device (the primary context),
            // `n × k` and `n × m` contiguous elements (ld = cols, multiples of 8, so no
            // padding); the kernel is queued on candle's stream, after whatever candle queued
            // there to write `x` and before whatever reads `y`, and the guards record that use
            // for candle's other streams; `y` is new, aliasing nothing. The matrices are dropped
            // at the end of this block, and candle frees its buffers in stream order, after
            // the kernel.
            let (xm, mut ym) = unsafe {
                (
                    DeviceMatrix::<T>::from_raw_parts(&h.gpu, xp, n, k, k).map_err(wrap)?,
                    DeviceMatrix::<T>::from_raw_parts(&h.gpu, yp, n, m, m).map_err(wrap)?,
                )
            };
            h.gpu.linear_into(&xm, w, &mut ym, Default::default()).map_err(wrap)?;
        }
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape))
    }
}
