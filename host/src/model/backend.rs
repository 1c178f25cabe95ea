//! What the model needs from a device: the [`Backend`] trait, with a GPU implementation on
//! this crate's kernels ([`GpuBackend`]) and a plain CPU one ([`CpuBackend`], f32, the test
//! oracle of the GPU path and the fallback without a GPU).
//!
//! The transformer (`transformer.rs`) is written once against this trait, so both paths run
//! the same sequence of operations on the same weights.

use crate::error::{Error, Result};
use crate::model::config::RopeStyle;
use crate::ops::SamplingParams;

/// How a linear layer's weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearFormat {
    /// Every element (cuBLAS-like dense kernel).
    Dense,
    /// Tiled-CSL nonzeros only (the SpMM kernel; 4 bytes per nonzero).
    Sparse,
    /// The bitmap format (a bit per element plus the 2-byte nonzeros: about half the bytes of
    /// Tiled-CSL at 70% sparsity): for models that fit in GPU memory only this way. Its kernel
    /// is slower than the SpMM at the same sparsity today (issue-bound, see the README).
    Bitmap,
}

impl LinearFormat {
    /// Whether only the nonzeros are stored (Tiled-CSL or bitmap).
    pub fn is_sparse(self) -> bool {
        self != LinearFormat::Dense
    }
}

/// The operations of a decoder forward pass. Activation matrices (`Mat`) have one row per
/// token; every operation checks its shapes and returns an error instead of misbehaving.
pub trait Backend {
    /// An activation or parameter matrix (rows × cols).
    type Mat;
    /// A linear layer's weight (out_features × in_features), dense or sparse.
    type Weight;
    /// An array of u32 indices (token ids, positions, sequence slots).
    type Ids;
    /// The key/value cache of every layer.
    type Cache;

    /// Where it runs, e.g. "NVIDIA H200 (sm_90 kernels, f16)".
    fn describe(&self) -> String;

    /// A matrix from row-major f32 values (rounded to the backend's element type).
    fn matrix(&self, rows: usize, cols: usize, data: &[f32]) -> Result<Self::Mat>;
    /// A zero matrix.
    fn zeros(&self, rows: usize, cols: usize) -> Result<Self::Mat>;
    /// Rows × cols of a matrix.
    fn shape(&self, m: &Self::Mat) -> (usize, usize);
    /// A linear weight from row-major f32 values (zeros already in place for pruned ones).
    fn weight(&self, rows: usize, cols: usize, data: &[f32], format: LinearFormat) -> Result<Self::Weight>;
    /// A linear weight from an already packed sparse weight (a sparse checkpoint), stored as
    /// `format`; the default densifies it through [`weight`](Self::weight).
    fn packed_weight(&self, w: &crate::sparse::SparseWeight<half::f16>, format: LinearFormat) -> Result<Self::Weight> {
        let dense: Vec<f32> = w.to_dense().iter().map(|v| v.to_f32()).collect();
        self.weight(w.rows(), w.cols(), &dense, format)
    }
    /// A copy of a weight (synthetic models reuse one layer's weights for every layer).
    fn duplicate_weight(&self, w: &Self::Weight) -> Result<Self::Weight>;
    /// A copy of a matrix.
    fn duplicate(&self, m: &Self::Mat) -> Result<Self::Mat>;
    /// Whether [`column_blocks`](Self::column_blocks) can give matrices that share memory
    /// (the GPU; the CPU's matrices own their values).
    fn aliases(&self) -> bool {
        false
    }
    /// Matrices over adjacent column blocks of `m`, of `widths` columns (summing to its
    /// columns), sharing its memory: one linear whose weight stacks several projections'
    /// rows writes `m`, and each projection's output is read as its block. `Ok(None)` where
    /// the backend does not alias or a block cannot be addressed on its own (on the GPU:
    /// every width a multiple of 8, so each block starts 16-byte aligned and has no padding).
    ///
    /// # Safety
    /// The blocks are used only while `m` is alive, and no operation takes `m` together with
    /// one of its blocks (a block written while `m` is read, or the reverse, is a race).
    unsafe fn column_blocks(&self, m: &Self::Mat, widths: &[usize]) -> Result<Option<Vec<Self::Mat>>> {
        let _ = (m, widths);
        Ok(None)
    }
    /// Bytes a weight occupies (what a forward pass reads of it).
    fn weight_bytes(&self, w: &Self::Weight) -> usize;
    /// Whether a weight is stored sparse.
    fn is_sparse(&self, w: &Self::Weight) -> bool;
    /// An index array with room for `capacity` values.
    fn ids(&self, capacity: usize) -> Result<Self::Ids>;
    /// Overwrites an index array.
    fn write_ids(&self, ids: &mut Self::Ids, values: &[u32]) -> Result<()>;
    /// Reads an index array back (waits for queued work).
    fn read_ids(&self, ids: &Self::Ids) -> Result<Vec<u32>>;
    /// Reads a matrix back as f32 (waits for queued work).
    fn read(&self, m: &Self::Mat) -> Result<Vec<f32>>;
    /// A cache for `layers` layers, `slots` sequences of up to `max_seq` positions.
    fn kv_cache(&self, layers: usize, slots: usize, kv_heads: usize, max_seq: usize, head_dim: usize) -> Result<Self::Cache>;
    /// Bytes of a cache.
    fn cache_bytes(&self, c: &Self::Cache) -> usize;
    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;

    /// Work recorded once and replayed (a CUDA graph on the GPU).
    type Recording;
    /// Records the operations `f` queues, without running them, for [`replay`](Self::replay);
    /// `Ok(None)` when the backend does not record (the CPU runs everything eagerly). Run the
    /// same operations once unrecorded first: recording fails where an operation would have
    /// to allocate.
    fn record(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Recording>>;
    /// Runs the recorded operations again, with the operands' current contents.
    ///
    /// # Safety
    /// Every operand the recorded operations used is still alive (see [`crate::Gpu::replay`]).
    unsafe fn replay(&self, r: &Self::Recording) -> Result<()>;

    /// `out = x · wᵀ`.
    fn linear(&self, x: &Self::Mat, w: &Self::Weight, out: &mut Self::Mat) -> Result<()>;
    /// `out = x · mᵀ` for a matrix used as a dense weight (a tied LM head).
    fn linear_mat(&self, x: &Self::Mat, m: &Self::Mat, out: &mut Self::Mat) -> Result<()>;
    /// `out[i] = table[ids[i] + offset]`, or `+=` when `accumulate`.
    fn embed(&self, table: &Self::Mat, ids: &Self::Ids, offset: u32, accumulate: bool, out: &mut Self::Mat) -> Result<()>;
    /// `out = rms_norm(x) · weight`.
    fn rms_norm(&self, x: &Self::Mat, weight: &Self::Mat, eps: f32, out: &mut Self::Mat) -> Result<()>;
    /// `residual += delta; out = rms_norm(residual) · weight`.
    fn add_rms_norm(&self, residual: &mut Self::Mat, delta: &Self::Mat, weight: &Self::Mat, eps: f32, out: &mut Self::Mat) -> Result<()>;
    /// `out = layer_norm(x) · weight + bias`.
    fn layer_norm(&self, x: &Self::Mat, weight: &Self::Mat, bias: &Self::Mat, eps: f32, out: &mut Self::Mat) -> Result<()>;
    /// `residual += delta; out = layer_norm(residual) · weight + bias`.
    #[allow(clippy::too_many_arguments)]
    fn add_layer_norm(
        &self,
        residual: &mut Self::Mat,
        delta: &Self::Mat,
        weight: &Self::Mat,
        bias: &Self::Mat,
        eps: f32,
        out: &mut Self::Mat,
    ) -> Result<()>;
    /// Ranks whose [`all_reduce`](Self::all_reduce) this backend takes part in (1: none).
    fn ranks(&self) -> usize {
        1
    }
    /// Sums `m` over the ranks of a tensor-parallel model, in place on every rank (the
    /// default: one rank, nothing to do).
    fn all_reduce(&self, m: &mut Self::Mat) -> Result<()> {
        let _ = m;
        Ok(())
    }
    /// `acc += x`.
    fn add_assign(&self, acc: &mut Self::Mat, x: &Self::Mat) -> Result<()>;
    /// `x += bias` on every row.
    fn add_bias(&self, x: &mut Self::Mat, bias: &Self::Mat) -> Result<()>;
    /// `out = silu(gate) · up`.
    fn silu_mul(&self, gate: &Self::Mat, up: &Self::Mat, out: &mut Self::Mat) -> Result<()>;
    /// `x = max(x, 0)`.
    fn relu(&self, x: &mut Self::Mat) -> Result<()>;
    /// Rotary embedding of every head of row `i` by `positions[i]`.
    fn rope(&self, x: &mut Self::Mat, positions: &Self::Ids, head_dim: usize, theta: f32, style: RopeStyle) -> Result<()>;
    /// Writes row `i` of `k` and `v` at `(slots[i], positions[i])` of layer `layer`'s cache.
    fn kv_write(
        &self,
        cache: &mut Self::Cache,
        layer: usize,
        k: &Self::Mat,
        v: &Self::Mat,
        slots: &Self::Ids,
        positions: &Self::Ids,
    ) -> Result<()>;
    /// Causal attention of row `i` of `q` over positions `0..=positions[i]` of its slot.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    /// `out[i] = x[rows[i]]`.
    fn gather_rows(&self, x: &Self::Mat, rows: &Self::Ids, out: &mut Self::Mat) -> Result<()>;
    /// One token per row of `logits`: the argmax, or a sample (`step` seeds its uniform).
    fn next_tokens(&self, logits: &Self::Mat, params: &SamplingParams, step: u64, out: &mut Self::Ids) -> Result<()>;
}

/// The CPU backend: f32 matrices, every operation from [`crate::ops::reference`], values
/// rounded to the element type `T` after each operation that the GPU path stores in `T`, so
/// both paths see the same rounding points.
pub use cpu::{CpuBackend, CpuGroup};
/// The GPU backend on this crate's kernels, in element type `T`.
pub use gpu::{GpuBackend, GpuWeight};

mod cpu;
mod gpu;

/// Refuses a shape mismatch with both shapes named.
pub(crate) fn check_shape(what: &str, got: (usize, usize), want: (usize, usize)) -> Result<()> {
    if got != want {
        return Err(Error::Shape(format!("{what}: expected {}×{}, got {}×{}", want.0, want.1, got.0, got.1)));
    }
    Ok(())
}
