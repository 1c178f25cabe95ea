//! [`Backend`] on this crate's GPU kernels: every operation is one `Gpu` method, queued on the
//! handle's stream.

use super::{Backend, LinearFormat};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::matrix::{DeviceMatrix, DeviceSparseWeight};
use crate::model::config::RopeStyle;
use crate::ops::{DeviceIndices, KvCache, SamplingParams};
use crate::sparse::{FormatChoice as SparseChoice, SparseFormat, SparseWeight};
use crate::LinearOptions;
use std::marker::PhantomData;

/// The GPU backend in element type `T` (f16 or bf16).
pub struct GpuBackend<T: Element> {
    gpu: Gpu,
    /// This GPU's rank of a tensor-parallel group (feature `nccl`).
    #[cfg(feature = "nccl")]
    comm: Option<crate::nccl::NcclComm>,
    _elem: PhantomData<T>,
}

/// A linear weight on the GPU.
pub enum GpuWeight<T: Element> {
    Dense(DeviceMatrix<T>),
    Sparse(DeviceSparseWeight<T>),
}

impl<T: Element> GpuBackend<T> {
    /// The backend on an opened GPU.
    pub fn new(gpu: Gpu) -> Self {
        GpuBackend {
            gpu,
            #[cfg(feature = "nccl")]
            comm: None,
            _elem: PhantomData,
        }
    }

    /// The backend of one rank of a tensor-parallel group: `comm` was joined on `gpu`
    /// ([`crate::nccl::NcclComm::join`]); load the model with `Transformer::load_shard` and
    /// make the same calls on every rank (the all-reduces pair up in order).
    #[cfg(feature = "nccl")]
    pub fn rank_of(gpu: Gpu, comm: crate::nccl::NcclComm) -> Self {
        GpuBackend { gpu, comm: Some(comm), _elem: PhantomData }
    }

    /// The handle (for timing with its stream, memory queries).
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
}

impl<T: Element> GpuBackend<T> {
    /// A Tiled-CSL weight uploaded as `format` (Tiled-CSL, or repacked as bitmap).
    fn sparse(&self, w: &SparseWeight<T>, format: LinearFormat) -> Result<GpuWeight<T>> {
        let as_format = match format {
            LinearFormat::Bitmap => SparseFormat::Bitmap,
            _ => SparseFormat::TiledCsl,
        };
        Ok(GpuWeight::Sparse(self.gpu.upload_sparse_as(w, SparseChoice::Is(as_format))?))
    }
}

fn to_elems<T: Element>(data: &[f32]) -> Vec<T> {
    data.iter().map(|&v| T::from_f32(v)).collect()
}

impl<T: Element> Backend for GpuBackend<T> {
    type Mat = DeviceMatrix<T>;
    type Weight = GpuWeight<T>;
    type Ids = DeviceIndices;
    type Cache = KvCache<T>;

    fn describe(&self) -> String {
        format!("{} ({} kernels, {})", self.gpu.name(), self.gpu.ptx_target(), T::DTYPE.name())
    }

    #[cfg(feature = "nccl")]
    fn ranks(&self) -> usize {
        self.comm.as_ref().map_or(1, |c| c.world())
    }

    #[cfg(feature = "nccl")]
    fn all_reduce(&self, m: &mut Self::Mat) -> Result<()> {
        // A group of one still calls NCCL (a copy): the path a one-GPU machine can test.
        match &self.comm {
            Some(c) => c.all_reduce_sum(&self.gpu, m),
            None => Ok(()),
        }
    }

    fn matrix(&self, rows: usize, cols: usize, data: &[f32]) -> Result<Self::Mat> {
        self.gpu.upload(rows, cols, &to_elems::<T>(data))
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<Self::Mat> {
        self.gpu.zeros(rows, cols)
    }

    fn shape(&self, m: &Self::Mat) -> (usize, usize) {
        (m.rows(), m.cols())
    }

    fn weight(&self, rows: usize, cols: usize, data: &[f32], format: LinearFormat) -> Result<Self::Weight> {
        let elems = to_elems::<T>(data);
        Ok(match format {
            LinearFormat::Dense => GpuWeight::Dense(self.gpu.upload(rows, cols, &elems)?),
            LinearFormat::Sparse | LinearFormat::Bitmap => {
                let mut w = SparseWeight::from_dense(rows, cols, &elems)?;
                if format == LinearFormat::Sparse {
                    w.reorder_for_banks();
                }
                self.sparse(&w, format)?
            }
        })
    }

    fn packed_weight(&self, w: &SparseWeight<half::f16>, format: LinearFormat) -> Result<Self::Weight> {
        if format.is_sparse() && T::DTYPE == crate::Dtype::F16 {
            // Same element type: the packed words are this backend's, uploaded as they are
            // (validated again by `from_parts`, which checks every word).
            let mut p = SparseWeight::<T>::from_parts(w.rows(), w.cols(), w.tile_offsets().to_vec(), w.words().to_vec(), w.is_reordered())?;
            if format == LinearFormat::Sparse && !p.is_reordered() {
                p.reorder_for_banks();
            }
            return self.sparse(&p, format);
        }
        let dense: Vec<f32> = w.to_dense().iter().map(|v| v.to_f32()).collect();
        self.weight(w.rows(), w.cols(), &dense, format)
    }

    fn duplicate_weight(&self, w: &Self::Weight) -> Result<Self::Weight> {
        Ok(match w {
            GpuWeight::Dense(m) => GpuWeight::Dense(self.gpu.duplicate(m)?),
            GpuWeight::Sparse(s) => GpuWeight::Sparse(self.gpu.duplicate_sparse(s)?),
        })
    }

    fn duplicate(&self, m: &Self::Mat) -> Result<Self::Mat> {
        self.gpu.duplicate(m)
    }

    fn aliases(&self) -> bool {
        true
    }

    unsafe fn column_blocks(&self, m: &Self::Mat, widths: &[usize]) -> Result<Option<Vec<Self::Mat>>> {
        if widths.iter().sum::<usize>() != m.cols() {
            return Err(Error::Shape(format!("column blocks of widths {widths:?} of a matrix of {} columns", m.cols())));
        }
        if widths.iter().any(|&w| w == 0 || w % 8 != 0) {
            return Ok(None);
        }
        let mut start = 0;
        let mut blocks = Vec::with_capacity(widths.len());
        for &w in widths {
            // SAFETY: the block lies inside `m`'s allocation (columns `start..start + w` of
            // each row, `start` and `w` multiples of 8: 16-byte aligned, no padding), which
            // the caller keeps alive while the block is used; the aliasing rule is the
            // caller's (this function's contract).
            blocks.push(unsafe { DeviceMatrix::from_raw_parts(&self.gpu, m.device_ptr() + 2 * start as u64, m.rows(), w, m.ld()) }?);
            start += w;
        }
        Ok(Some(blocks))
    }

    fn weight_bytes(&self, w: &Self::Weight) -> usize {
        match w {
            GpuWeight::Dense(m) => m.bytes(),
            GpuWeight::Sparse(s) => s.stored_bytes(),
        }
    }

    fn is_sparse(&self, w: &Self::Weight) -> bool {
        matches!(w, GpuWeight::Sparse(_))
    }

    fn ids(&self, capacity: usize) -> Result<Self::Ids> {
        self.gpu.indices_with_capacity(capacity)
    }

    fn write_ids(&self, ids: &mut Self::Ids, values: &[u32]) -> Result<()> {
        self.gpu.write_indices(ids, values)
    }

    fn read_ids(&self, ids: &Self::Ids) -> Result<Vec<u32>> {
        self.gpu.download_indices(ids)
    }

    fn read(&self, m: &Self::Mat) -> Result<Vec<f32>> {
        Ok(self.gpu.download(m)?.into_iter().map(T::to_f32).collect())
    }

    fn kv_cache(&self, layers: usize, slots: usize, kv_heads: usize, max_seq: usize, head_dim: usize) -> Result<Self::Cache> {
        self.gpu.kv_cache(layers, slots, kv_heads, max_seq, head_dim)
    }

    fn cache_bytes(&self, c: &Self::Cache) -> usize {
        c.bytes()
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu.synchronize()
    }

    type Recording = crate::Recording;

    fn record(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Recording>> {
        self.gpu.record(f).map(Some)
    }

    unsafe fn replay(&self, r: &Self::Recording) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { self.gpu.replay(r) }
    }

    fn linear(&self, x: &Self::Mat, w: &Self::Weight, out: &mut Self::Mat) -> Result<()> {
        match w {
            GpuWeight::Dense(m) => self.gpu.linear_into(x, m, out, LinearOptions::default()),
            GpuWeight::Sparse(s) => self.gpu.linear_into(x, s, out, LinearOptions::default()),
        }
    }

    fn linear_mat(&self, x: &Self::Mat, m: &Self::Mat, out: &mut Self::Mat) -> Result<()> {
        self.gpu.linear_into(x, m, out, LinearOptions::default())
    }

    fn embed(&self, table: &Self::Mat, ids: &Self::Ids, offset: u32, accumulate: bool, out: &mut Self::Mat) -> Result<()> {
        self.gpu.embed(table, ids, offset, accumulate, out)
    }

    fn rms_norm(&self, x: &Self::Mat, weight: &Self::Mat, eps: f32, out: &mut Self::Mat) -> Result<()> {
        self.gpu.rms_norm(x, weight, eps, out)
    }

    fn add_rms_norm(&self, residual: &mut Self::Mat, delta: &Self::Mat, weight: &Self::Mat, eps: f32, out: &mut Self::Mat) -> Result<()> {
        self.gpu.add_rms_norm(residual, delta, weight, eps, out)
    }

    fn layer_norm(&self, x: &Self::Mat, weight: &Self::Mat, bias: &Self::Mat, eps: f32, out: &mut Self::Mat) -> Result<()> {
        self.gpu.layer_norm(x, weight, bias, eps, out)
    }

    fn add_layer_norm(
        &self,
        residual: &mut Self::Mat,
        delta: &Self::Mat,
        weight: &Self::Mat,
        bias: &Self::Mat,
        eps: f32,
        out: &mut Self::Mat,
    ) -> Result<()> {
        self.gpu.add_layer_norm(residual, delta, weight, bias, eps, out)
    }

    fn add_assign(&self, acc: &mut Self::Mat, x: &Self::Mat) -> Result<()> {
        self.gpu.add_assign(acc, x)
    }

    fn add_bias(&self, x: &mut Self::Mat, bias: &Self::Mat) -> Result<()> {
        self.gpu.add_bias(x, bias)
    }

    fn silu_mul(&self, gate: &Self::Mat, up: &Self::Mat, out: &mut Self::Mat) -> Result<()> {
        self.gpu.silu_mul(gate, up, out)
    }

    fn relu(&self, x: &mut Self::Mat) -> Result<()> {
        self.gpu.relu(x)
    }

    fn rope(&self, x: &mut Self::Mat, positions: &Self::Ids, head_dim: usize, theta: f32, style: RopeStyle) -> Result<()> {
        self.gpu.rope(x, positions, head_dim, theta, style)
    }

    fn kv_write(
        &self,
        cache: &mut Self::Cache,
        layer: usize,
        k: &Self::Mat,
        v: &Self::Mat,
        slots: &Self::Ids,
        positions: &Self::Ids,
    ) -> Result<()> {
        self.gpu.kv_write(cache, layer, k, v, slots, positions)
    }

    fn attention(
        &self,
        q: &Self::Mat,
        cache: &Self::Cache,
        layer: usize,
        slots: &Self::Ids,
        positions: &Self::Ids,
        heads: usize,
        scale: f32,
        out: &mut Self::Mat,
    ) -> Result<()> {
        self.gpu.attention(q, cache, layer, slots, positions, heads, scale, out)
    }

    fn gather_rows(&self, x: &Self::Mat, rows: &Self::Ids, out: &mut Self::Mat) -> Result<()> {
        self.gpu.gather_rows(x, rows, out)
    }

    fn next_tokens(&self, logits: &Self::Mat, params: &SamplingParams, step: u64, out: &mut Self::Ids) -> Result<()> {
        if params.temperature == 0.0 {
            self.gpu.argmax(logits, out)
        } else {
            self.gpu.sample(logits, params, step, out)
        }
    }
}
