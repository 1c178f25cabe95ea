//! CPU SpMM on a bitmap weight: the reference the bitmap kernel is tested against, with the
//! numeric recipe of `crate::cpu::linear_sparse` (16-bit inputs, f32 accumulation, one
//! rounding per output).

use super::{BitmapWeight, LANE_MAJOR, TILE};
use crate::checked::Sizes;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::layout::bitmap_tile_index;

/// Multiply-adds below which one thread is used.
const MIN_WORK_PER_THREAD: usize = 1 << 18;

/// `Y[n × rows] = X[n × cols] · Wᵀ` on a bitmap weight; `x` is row-major `n × cols`.
///
/// Equals the dense computation on `w.to_dense()` up to f32 summation order, non-finite
/// values included: a token row of `X` holding NaN or ±Inf is computed over every entry of
/// each tile row, pruned zeros included (so `Inf · 0 = NaN` as in dense math, and as the
/// kernel's MMAs do); other rows touch only the stored entries. Threads split the tile rows.
///
/// Errors: [`Error::Shape`] if `x.len() != n · cols` or `Y` cannot exist.
pub fn linear_bitmap<T: Element>(x: &[T], n: usize, w: &BitmapWeight<T>) -> Result<Vec<T>> {
    let (m, k) = (w.rows(), w.cols());
    if n.checked_mul(k) != Some(x.len()) {
        return Err(Error::Shape(format!("x has {} elements, expected n · k = {n} · {k} for a {m}×{k} weight", x.len())));
    }
    let y_len = Sizes::SHAPE.mul("Y elements (n × out_features)", n, m)?;
    Sizes::SHAPE.bytes("Y", y_len, 4)?;
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let nonfinite: Vec<bool> = (0..n).map(|i| xf[i * k..(i + 1) * k].iter().any(|v| !v.is_finite())).collect();
    // Xᵀ (k × n): a stored entry of column c multiplies column c of X, all tokens contiguous.
    let mut xt = vec![0.0f32; k * n];
    for (i, row) in xf.chunks_exact(k).enumerate() {
        for (c, v) in row.iter().enumerate() {
            xt[c * n + i] = *v;
        }
    }
    let (tiles_m, tiles_k) = (w.tiles_m(), w.tiles_k());
    // One tile row: 64 output rows × n tokens, f32.
    let tile_row = |tr: usize| -> Vec<f32> {
        let rn = TILE.min(m - tr * TILE);
        let mut acc = vec![0.0f32; n * rn];
        let mut dense = vec![0.0f32; TILE * TILE];
        for tk in 0..tiles_k {
            let (c0, cn) = (tk * TILE, TILE.min(k - tk * TILE));
            let words = w.tile_words(bitmap_tile_index(tr, tk, tiles_m, tiles_k));
            dense.fill(0.0);
            for (r, c, bits) in LANE_MAJOR.entries(words) {
                let v = T::from_bits(bits).to_f32();
                dense[r * TILE + c] = v;
                // Finite tokens: stored entries only, all tokens at once.
                let xs = &xt[(c0 + c) * n..(c0 + c + 1) * n];
                for (t, xv) in xs.iter().enumerate() {
                    if !nonfinite[t] {
                        acc[t * rn + r] += v * xv;
                    }
                }
            }
            // Tokens with NaN/±Inf: dense semantics over the tile's valid columns.
            for t in (0..n).filter(|&t| nonfinite[t]) {
                for r in 0..rn {
                    let mut s = 0.0f32;
                    for c in 0..cn {
                        s += dense[r * TILE + c] * xf[t * k + c0 + c];
                    }
                    acc[t * rn + r] += s;
                }
            }
        }
        acc
    };
    let work = n.saturating_mul(w.nnz().max(m));
    let threads = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(tiles_m)
        .min(work / MIN_WORK_PER_THREAD)
        .max(1);
    let rows_of: Vec<Vec<f32>> = if threads == 1 {
        (0..tiles_m).map(tile_row).collect()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|i| {
                    let tile_row = &tile_row;
                    s.spawn(move || (tiles_m * i / threads..tiles_m * (i + 1) / threads).map(tile_row).collect::<Vec<_>>())
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        })
    };
    let mut y = vec![T::from_bits(0); y_len];
    for (tr, acc) in rows_of.iter().enumerate() {
        let (r0, rn) = (tr * TILE, TILE.min(m - tr * TILE));
        for t in 0..n {
            for r in 0..rn {
                y[t * m + r0 + r] = T::from_f32(acc[t * rn + r]);
            }
        }
    }
    Ok(y)
}
