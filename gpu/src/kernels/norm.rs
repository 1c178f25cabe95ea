//! RMSNorm (LLaMA) and LayerNorm (OPT), optionally fused with the residual add that precedes
//! them between sublayers.
//!
//! One block per row (grid-stride over rows); the threads of the block take the row's 16-byte
//! chunks in turn (thread t: chunks t, t + blockDim, …, the same ones in every pass, so a
//! thread re-reads only what it wrote itself). f32 arithmetic on the exact f32 values of the
//! 16-bit inputs, block-wide sums in a fixed order ([`super::rowwise::block_reduce`]), one
//! rounding of each output:
//!
//! - RMSNorm: `y = x · w / sqrt(mean(x²) + eps)`;
//! - LayerNorm: `y = (x − mean(x)) · w / sqrt(var(x) + eps) + b`, biased variance, computed
//!   from the centred values in a second pass (no cancellation of E[x²] − mean²);
//! - fused: `r ← round(r + d)` is stored first, and the norm is taken of the stored (rounded)
//!   residual, as the framework's two separate operations would.

use super::rowwise::{block_sum_f32, load, pack, row_chunks, store, valid_in, widen};
use crate::math::sqrt_rn;
use crate::mma::MmaElement;
use crate::thread::{block_dim_x, block_idx_x, grid_dim_x, thread_idx_x};

/// The norm of every row of `x` into `out`.
///
/// `LAYER`: LayerNorm with `bias`, else RMSNorm (`bias` unused). `ADD`: `x` is the residual,
/// updated in place to `round(x + delta)` before the norm (else `delta` is unused and `x` only
/// read).
///
/// # Safety
/// Launched with a one-dimensional block of whole warps and `rowwise::SCRATCH_BYTES` of
/// dynamic shared memory, any grid; `x`, `delta` and `out` are `rows × cols` with leading
/// dimensions `ldx`, `ldd`, `ldo`, `weight` and `bias` `1 × cols` (16-byte aligned, every `ld`
/// a multiple of 8 ≥ `cols`, zero padding in each last chunk); `out` overlaps none of the
/// others, nor does `x` when `ADD`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn row_norm<E: MmaElement, const LAYER: bool, const ADD: bool>(
    x: *mut u16, ldx: u32, delta: *const u16, ldd: u32, weight: *const u16, bias: *const u16, out: *mut u16, ldo: u32,
    rows: u32, cols: u32, eps: f32,
) {
    let (rows, cols) = (rows as usize, cols as usize);
    let (ldx, ldd, ldo) = (ldx as usize, ldd as usize, ldo as usize);
    let chunks = row_chunks(cols);
    let (tid, threads) = (thread_idx_x() as usize, block_dim_x() as usize);
    let inv_cols = 1.0 / cols as f32;
    let mut row = block_idx_x() as usize;
    while row < rows {
        let (base, dbase, obase) = (row * ldx, row * ldd, row * ldo);
        // Pass 1: the residual update, and Σx (LayerNorm) or Σx² (RMSNorm).
        let mut acc = 0.0f32;
        let mut c = tid;
        while c < chunks {
            let (p, valid) = (base + 8 * c, valid_in(c, cols));
            let mut v = widen::<E>(load(x.add(p)));
            if ADD {
                let d = widen::<E>(load(delta.add(dbase + 8 * c)));
                let mut sum = [0.0f32; 8];
                unroll!(i in 0..8 => { sum[i] = v[i] + d[i]; });
                let bits = pack::<E>(sum, valid);
                store(x.add(p), bits);
                v = widen::<E>(bits);
            }
            unroll!(i in 0..8 => {
                if i < valid {
                    acc += if LAYER { v[i] } else { v[i] * v[i] };
                }
            });
            c += threads;
        }
        let total = block_sum_f32(acc);
        let (mean, var) = if LAYER {
            let mean = total * inv_cols;
            // Pass 2: Σ(x − mean)².
            let mut acc = 0.0f32;
            let mut c = tid;
            while c < chunks {
                let (p, valid) = (base + 8 * c, valid_in(c, cols));
                let v = widen::<E>(load(x.add(p)));
                unroll!(i in 0..8 => {
                    if i < valid {
                        let centred = v[i] - mean;
                        acc += centred * centred;
                    }
                });
                c += threads;
            }
            (mean, block_sum_f32(acc) * inv_cols)
        } else {
            (0.0, total * inv_cols)
        };
        let rstd = 1.0 / sqrt_rn(var + eps);
        // Last pass: the output.
        let mut c = tid;
        while c < chunks {
            let (p, valid) = (base + 8 * c, valid_in(c, cols));
            let v = widen::<E>(load(x.add(p)));
            let w = widen::<E>(load(weight.add(8 * c)));
            let mut y = [0.0f32; 8];
            if LAYER {
                let b = widen::<E>(load(bias.add(8 * c)));
                unroll!(i in 0..8 => { y[i] = (v[i] - mean) * rstd * w[i] + b[i]; });
            } else {
                unroll!(i in 0..8 => { y[i] = v[i] * rstd * w[i]; });
            }
            store(out.add(obase + 8 * c), pack::<E>(y, valid));
            c += threads;
        }
        row += grid_dim_x() as usize;
    }
}
