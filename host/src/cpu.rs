//! CPU implementations of the linear layer `Y = X · Wᵀ`: an f64 reference for tests, and
//! multi-threaded dense and Tiled-CSL sparse paths with f32 accumulation (the same numeric
//! recipe as the Tensor Core kernels: 16-bit inputs, f32 accumulation, one final rounding).
//!
//! Layouts: `X` is `n × k` row-major (`n` tokens), `W` is `m × k` row-major (`m` output
//! features), `Y` is `n × m` row-major.

use std::ops::Range;

use crate::checked::Sizes;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::sparse::{tile_coord, word_bits, word_pos, SparseWeight, TILE_ELEMS, TILE_K, TILE_M};

/// Multiply-adds below which one thread is used: spawning costs more than it saves.
const MIN_WORK_PER_THREAD: usize = 1 << 18;

/// Rows of `W` converted to f32 and multiplied at a time: 8 MB at k = 4096 instead of an f32
/// copy of the whole weight (a 7B model's LM head: 500 MB). Smaller blocks repack X more
/// often: 64 rows made calibration 25% slower, 512 rows 5% (against one whole block).
const GEMM_ROWS: usize = 512;

// Tile-local row-major indices `r * TILE_K + c` are kept as u16.
const _: () = assert!(TILE_ELEMS <= 1 << 16);

/// Reference `Y[n×m] = X[n×k] · W[m×k]ᵀ`, products and sums in f64 (for tests).
///
/// Products of two 16-bit floats are exact in f64, so the only error is the f64 summation.
/// Non-finite values follow IEEE rules (`Inf · 0 = NaN`).
///
/// # Panics
/// If `x.len() != n * k` or `w.len() != m * k`.
pub fn linear_ref_f64<T: Element>(x: &[T], n: usize, w: &[T], m: usize, k: usize) -> Vec<f64> {
    assert_eq!(x.len(), n * k, "x must have n * k elements");
    assert_eq!(w.len(), m * k, "w must have m * k elements");
    let mut y = vec![0.0f64; n * m];
    for i in 0..n {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..m {
            let wr = &w[j * k..(j + 1) * k];
            y[i * m + j] = xr
                .iter()
                .zip(wr)
                .map(|(a, b)| f64::from(a.to_f32()) * f64::from(b.to_f32()))
                .sum();
        }
    }
    y
}

/// Dot product in f32 with 8 interleaved partial sums (vectorizes; deterministic order).
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (pa, pb) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += pa[l] * pb[l];
        }
    }
    let mut tail = 0.0f32;
    for (p, q) in ca.remainder().iter().zip(cb.remainder()) {
        tail += p * q;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out[n×m] = x[n×k] · w[m×k]ᵀ` in f32 (all row-major), through `matrixmultiply::sgemm`.
///
/// # Panics
/// If a slice's length does not match its shape.
fn gemm_xwt(x: &[f32], n: usize, w: &[f32], m: usize, k: usize, out: &mut [f32]) {
    assert!(x.len() == n * k && w.len() == m * k && out.len() == n * m, "gemm_xwt: shapes");
    if n == 0 || m == 0 {
        return;
    }
    let stride = |v: usize| isize::try_from(v).expect("a slice's length fits isize");
    // SAFETY: with the lengths asserted above, every index sgemm forms — x[i·k + p] for
    // i < n, p < k; w[j·k + p] (B = wᵀ, row stride 1, column stride k) for j < m; out[i·m + j]
    // — is inside its slice; `out` is exclusively borrowed and overlaps neither input; with
    // beta = 0, `out`'s previous contents are not read.
    unsafe {
        matrixmultiply::sgemm(n, k, m, 1.0, x.as_ptr(), stride(k), 1, w.as_ptr(), 1, stride(k), 0.0, out.as_mut_ptr(), stride(m), 1);
    }
}

fn to_f32_vec<T: Element>(v: &[T]) -> Vec<f32> {
    v.iter().map(|e| e.to_f32()).collect()
}

/// Splits `units` work units into contiguous ranges, runs `f` on each range in its own
/// scoped thread (or inline when there is one range), and returns the results in order.
fn run_blocks<R: Send>(
    units: usize,
    work: usize,
    f: impl Fn(Range<usize>) -> R + Sync,
) -> Vec<(Range<usize>, R)> {
    let cpus = std::thread::available_parallelism().map_or(1, |p| p.get());
    let threads = cpus.min(units).min(work / MIN_WORK_PER_THREAD).max(1);
    let ranges: Vec<Range<usize>> = (0..threads)
        .map(|t| (units * t / threads)..(units * (t + 1) / threads))
        .filter(|r| !r.is_empty())
        .collect();
    if ranges.len() <= 1 {
        return ranges.into_iter().map(|r| (r.clone(), f(r))).collect();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = ranges
            .into_iter()
            .map(|r| {
                let f = &f;
                (r.clone(), s.spawn(move || f(r)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(r, h)| (r, h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))))
            .collect()
    })
}

/// Dense CPU linear `Y[n×m] = X[n×k] · W[m×k]ᵀ`: f32 accumulation, each output rounded once
/// to `T`. Threads split the rows of `W` (output features) and multiply blocks of
/// 512 rows at a time with `matrixmultiply`'s SGEMM (SIMD kernels chosen at run
/// time), converting only that block of `W` to f32. An output's summation order depends on
/// `k` alone, not on the token count or the blocks, so one token decoded through the KV
/// cache gets exactly what a prefill computes for it.
///
/// # Panics
/// If `x.len() != n * k` or `w.len() != m * k`.
pub fn linear_dense<T: Element>(x: &[T], n: usize, w: &[T], m: usize, k: usize) -> Vec<T> {
    assert_eq!(x.len(), n * k, "x must have n * k elements");
    assert_eq!(w.len(), m * k, "w must have m * k elements");
    let xf = to_f32_vec(x);
    let work = n.saturating_mul(m).saturating_mul(k);
    let blocks = run_blocks(m, work, |rows: Range<usize>| {
        let len = rows.len();
        let mut out = vec![0.0f32; n * len];
        let (mut wf, mut part) = (Vec::with_capacity(GEMM_ROWS * k), vec![0.0f32; n * GEMM_ROWS]);
        for start in rows.clone().step_by(GEMM_ROWS) {
            let end = (start + GEMM_ROWS).min(rows.end);
            wf.clear();
            wf.extend(w[start * k..end * k].iter().map(|v| v.to_f32()));
            let b = end - start;
            gemm_xwt(&xf, n, &wf, b, k, &mut part[..n * b]);
            for i in 0..n {
                let at = i * len + (start - rows.start);
                out[at..at + b].copy_from_slice(&part[i * b..(i + 1) * b]);
            }
        }
        out
    });
    let mut y = vec![T::from_bits(0); n * m];
    for (rows, out) in blocks {
        let len = rows.len();
        for i in 0..n {
            for (jl, j) in rows.clone().enumerate() {
                y[i * m + j] = T::from_f32(out[i * len + jl]);
            }
        }
    }
    y
}

/// One tile decoded for the CPU: values in a dense `TILE_M × TILE_K` = 256×64 scratch (zeros
/// where pruned) and, per row, a 64-bit mask of the columns stored (padding duplicates count
/// once), so a row's entries are visited in column order whatever the order of the words.
struct TileScratch {
    dense: Vec<f32>,
    /// Bit `c` of `stored[r]`: entry (`r`, `c`) is stored.
    stored: [u64; TILE_M],
}

impl TileScratch {
    fn new() -> Self {
        const { assert!(TILE_K == 64) }; // one u64 mask per row
        TileScratch { dense: vec![0.0; TILE_ELEMS], stored: [0; TILE_M] }
    }

    /// Decodes `words` (one tile's list) into the scratch, replacing the previous tile.
    fn load<T: Element>(&mut self, words: &[u32]) {
        for (r, mask) in self.stored.iter_mut().enumerate() {
            for c in columns(*mask) {
                self.dense[r * TILE_K + c] = 0.0;
            }
            *mask = 0;
        }
        for &w in words {
            let (r, c) = tile_coord(word_pos(w));
            if self.stored[r] & (1 << c) == 0 {
                self.stored[r] |= 1 << c;
                self.dense[r * TILE_K + c] = T::from_bits(word_bits(w)).to_f32();
            }
        }
    }
}

/// The set bits of `mask`, lowest first.
fn columns(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let c = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            c
        })
    })
}

/// Sparse CPU linear on the Tiled-CSL format: `Y[n×m] = X[n×k] · Wᵀ` with `m = w.rows()`,
/// `k = w.cols()`, f32 accumulation, each output rounded once to `T`. Threads split the tile
/// rows of `W`.
///
/// Results equal the dense computation on `w.to_dense()` up to f32 summation order,
/// including non-finite values: a token row of `X` holding any NaN or ±Inf is computed over
/// the full dense row of each tile (so `Inf · pruned 0 = NaN` as in dense math); other rows
/// only touch the stored entries.
///
/// Errors: [`Error::Shape`] if `x.len() != n * k`, or `Y` (`n × rows`) cannot exist.
pub fn linear_sparse<T: Element>(x: &[T], n: usize, w: &SparseWeight<T>) -> Result<Vec<T>> {
    let (m, k) = (w.rows(), w.cols());
    if n.checked_mul(k) != Some(x.len()) {
        return Err(Error::Shape(format!(
            "x has {} elements, expected n * k = {n} * {k} for a {m}×{k} weight",
            x.len()
        )));
    }
    let y_len = Sizes::SHAPE.mul("Y elements (n × out_features)", n, m)?;
    Sizes::SHAPE.bytes("Y", y_len, 4)?;
    let xf = to_f32_vec(x);
    let nonfinite: Vec<bool> = (0..n)
        .map(|i| xf[i * k..(i + 1) * k].iter().any(|v| !v.is_finite()))
        .collect();
    let nonfinite_tokens: Vec<usize> = (0..n).filter(|&i| nonfinite[i]).collect();
    // Xᵀ (k × n): a stored entry (r, c) multiplies column c of X, all tokens contiguous.
    let mut xt = vec![0.0f32; k * n];
    for (i, row) in xf.chunks_exact(k.max(1)).enumerate() {
        for (c, v) in row.iter().enumerate() {
            xt[c * n + i] = *v;
        }
    }
    let (tiles_m, tiles_k) = (w.tiles_m(), w.tiles_k());
    let work = n.saturating_mul(w.nnz().max(m));

    let blocks = run_blocks(tiles_m, work, |tms: Range<usize>| {
        let r_begin = tms.start * TILE_M;
        let r_end = (tms.end * TILE_M).min(m);
        let len = r_end - r_begin;
        let mut acc = vec![0.0f32; n * len];
        let mut scratch = TileScratch::new();
        let mut row_sum = vec![0.0f32; n];
        for tm in tms {
            let r0 = tm * TILE_M;
            let rn = TILE_M.min(m - r0);
            for tk in 0..tiles_k {
                let c0 = tk * TILE_K;
                let cn = TILE_K.min(k - c0);
                scratch.load::<T>(w.tile_words(tm * tiles_k + tk));
                for r in 0..rn {
                    let out = r0 - r_begin + r;
                    // Finite tokens: the stored entries only, in column order, all tokens
                    // at once (the inner loop runs over contiguous tokens and vectorizes).
                    let mask = scratch.stored[r];
                    if mask != 0 {
                        row_sum.fill(0.0);
                        for c in columns(mask) {
                            let v = scratch.dense[r * TILE_K + c];
                            for (s, xv) in row_sum.iter_mut().zip(&xt[(c0 + c) * n..(c0 + c + 1) * n]) {
                                *s += v * xv;
                            }
                        }
                        for (i, s) in row_sum.iter().enumerate() {
                            if !nonfinite[i] {
                                acc[i * len + out] += s;
                            }
                        }
                    }
                    // Tokens with NaN/±Inf: dense semantics, every product, pruned zeros
                    // included.
                    for &i in &nonfinite_tokens {
                        let xs = &xf[i * k + c0..i * k + c0 + cn];
                        acc[i * len + out] += dot_f32(&scratch.dense[r * TILE_K..r * TILE_K + cn], xs);
                    }
                }
            }
        }
        (r_begin, acc)
    });

    let mut y = vec![T::from_bits(0); y_len];
    for (_, (r_begin, acc)) in blocks {
        let len = acc.len() / n.max(1);
        for i in 0..n {
            for (jl, v) in acc[i * len..(i + 1) * len].iter().enumerate() {
                y[i * m + r_begin + jl] = T::from_f32(*v);
            }
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::Dtype;
    use crate::sparse::test_util::{random_sparse, Rng};
    use half::{bf16, f16};
    use proptest::prelude::*;

    /// Error bound of an f32-accumulated, once-rounded result against the exact sum.
    ///
    /// * Products of two 16-bit floats are exact in f32 (f16: 11 + 11 = 22 significant bits,
    ///   bf16: 8 + 8 = 16 ≤ 24; the test values keep exponents far from f32 over/underflow).
    /// * Summing `k` terms in f32 in any order (sequential, 8-lane, per-tile partial sums)
    ///   has error at most `γ_k · Σ|x_l w_l|` with `γ_k = k·u / (1 − k·u)`, `u = 2^-24`.
    /// * Rounding the f32 sum `ŝ` to `T` adds at most `u_T · |ŝ|` in the normal range, plus
    ///   at most half the smallest subnormal spacing of `T` (f16: 2^-25) near zero.
    ///
    /// So `|y − s| ≤ (1 + u_T) γ_k S + u_T |s| + η_T`. The dense and sparse paths each obey
    /// it, so they differ by at most twice the bound (they may round to adjacent values of `T`
    /// because their f32 sums differ by reassociation).
    fn bound(dtype: Dtype, k: usize, abs_sum: f64, exact: f64) -> f64 {
        let u = 2f64.powi(-24);
        let gamma = k as f64 * u / (1.0 - k as f64 * u);
        let ut = dtype.unit_roundoff();
        let eta = match dtype {
            Dtype::F16 => 2f64.powi(-25),
            Dtype::Bf16 => 2f64.powi(-134),
        };
        (1.0 + ut) * gamma * abs_sum + ut * exact.abs() + eta
    }

    fn abs_sums<T: Element>(x: &[T], n: usize, w: &[T], m: usize, k: usize) -> Vec<f64> {
        let xa: Vec<T> = x.iter().map(|v| T::from_f32(v.to_f32().abs())).collect();
        let wa: Vec<T> = w.iter().map(|v| T::from_f32(v.to_f32().abs())).collect();
        linear_ref_f64(&xa, n, &wa, m, k)
    }

    /// Checks dense and sparse CPU paths against the f64 reference (with non-finite rules)
    /// and against each other.
    fn check_paths<T: Element>(x: &[T], n: usize, dense_w: &[T], m: usize, k: usize) {
        let sw = SparseWeight::from_dense(m, k, dense_w).unwrap();
        let want = linear_ref_f64(x, n, dense_w, m, k);
        let s = abs_sums(x, n, dense_w, m, k);
        let yd = linear_dense(x, n, dense_w, m, k);
        let ys = linear_sparse(x, n, &sw).unwrap();
        assert_eq!(yd.len(), n * m);
        assert_eq!(ys.len(), n * m);
        for idx in 0..n * m {
            let (e, d, sp) = (want[idx], yd[idx].to_f32() as f64, ys[idx].to_f32() as f64);
            if e.is_nan() {
                assert!(
                    d.is_nan() && sp.is_nan(),
                    "[{idx}] want NaN, dense {d}, sparse {sp}"
                );
            } else if e.is_infinite() {
                assert!(
                    d == e && sp == e,
                    "[{idx}] want {e}, dense {d}, sparse {sp}"
                );
            } else {
                let tol = bound(T::DTYPE, k, s[idx], e);
                assert!((d - e).abs() <= tol, "[{idx}] dense {d} vs {e} (tol {tol})");
                assert!(
                    (sp - e).abs() <= tol,
                    "[{idx}] sparse {sp} vs {e} (tol {tol})"
                );
                assert!(
                    (sp - d).abs() <= 2.0 * tol,
                    "[{idx}] sparse {sp} vs dense {d}"
                );
            }
        }
    }

    #[test]
    fn sparse_matches_dense_on_typical_shapes() {
        let mut rng = Rng::new(3);
        // Includes partial tiles, a single token, and a size large enough to use threads.
        for &(n, m, k, s) in &[
            (1, 1, 1, 0.0),
            (3, 65, 130, 0.8),
            (1, 200, 64, 0.5),
            (16, 256, 192, 0.9),
            (3, 300, 70, 0.8),
            (2, 513, 130, 0.5),
        ] {
            let x = random_sparse::<f16>(&mut rng, n, k, 0.0);
            let w = random_sparse::<f16>(&mut rng, m, k, s);
            check_paths(&x, n, &w, m, k);
            let x = random_sparse::<bf16>(&mut rng, n, k, 0.0);
            let w = random_sparse::<bf16>(&mut rng, m, k, s);
            check_paths(&x, n, &w, m, k);
        }
    }

    #[test]
    fn threaded_large_case() {
        // n·nnz and n·m·k above the single-thread threshold.
        let mut rng = Rng::new(11);
        // 5 tile rows of 256 (the last partial), so several threads get tile rows.
        let (n, m, k) = (8, 1100, 640);
        let x = random_sparse::<f16>(&mut rng, n, k, 0.0);
        let w = random_sparse::<f16>(&mut rng, m, k, 0.7);
        assert!(n * m * k >= 2 * MIN_WORK_PER_THREAD);
        check_paths(&x, n, &w, m, k);
    }

    #[test]
    fn a_token_gets_the_same_result_in_any_batch() {
        // The model's KV-cache test relies on it (one decoded token = its row of a prefill):
        // across SGEMM's row blocks and K blocks, the threads, and the token count.
        let mut rng = Rng::new(12);
        let (n, m, k) = (13, 1100, 650);
        let x = random_sparse::<f16>(&mut rng, n, k, 0.0);
        let w = random_sparse::<f16>(&mut rng, m, k, 0.0);
        let all = linear_dense(&x, n, &w, m, k);
        for i in [0, 6, 12] {
            let one = linear_dense(&x[i * k..(i + 1) * k], 1, &w, m, k);
            assert!(one.iter().zip(&all[i * m..(i + 1) * m]).all(|(a, b)| a.to_bits() == b.to_bits()), "token {i}");
        }
    }

    #[test]
    fn non_finite_inputs_follow_dense_semantics() {
        // 300×70: full, 256×6, 44×64 and 44×6 tiles.
        let (n, m, k) = (5, 300, 70);
        let mut rng = Rng::new(5);
        let mut w = random_sparse::<f16>(&mut rng, m, k, 0.8);
        // Column 3: pruned in row 0, positive in row 1 (and negative in row 2).
        w[3] = f16::ZERO;
        w[k + 3] = f16::from_f32(2.0);
        w[2 * k + 3] = f16::from_f32(-0.5);
        let mut x = random_sparse::<f16>(&mut rng, n, k, 0.0);
        x[3] = f16::INFINITY; // token 0: Inf · 0 → NaN in row 0, +Inf in row 1, -Inf in row 2
        x[k + 10] = f16::NAN; // token 1: NaN everywhere
        x[2 * k + 69] = f16::NEG_INFINITY; // token 2: partial edge tile column
        x[2 * k + 3] = f16::INFINITY; // and +Inf too: Inf - Inf where both weights nonzero
                                      // token 3, 4: finite
        let y = linear_sparse(&x, n, &SparseWeight::from_dense(m, k, &w).unwrap()).unwrap();
        assert!(y[0].is_nan(), "Inf times a pruned zero is NaN");
        assert_eq!(y[1], f16::INFINITY);
        assert_eq!(y[2], f16::NEG_INFINITY);
        assert!(y[m..2 * m].iter().all(|v| v.is_nan()));
        assert!(y[3 * m..].iter().all(|v| v.is_finite()));
        check_paths(&x, n, &w, m, k);

        // Non-finite stored weights are ordinary entries.
        let mut w2 = w.clone();
        w2[5 * k + 7] = f16::INFINITY;
        w2[6 * k + 8] = f16::NAN;
        w2[290 * k + 68] = f16::NEG_INFINITY; // in the 44×6 corner tile
        check_paths(&x, n, &w2, m, k);
    }

    #[test]
    fn shape_errors_and_empty_batches() {
        let w = SparseWeight::from_dense(2, 3, &[bf16::ONE; 6]).unwrap();
        assert!(matches!(
            linear_sparse(&[bf16::ONE; 5], 2, &w),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            linear_sparse(&[bf16::ONE; 3], usize::MAX, &w),
            Err(Error::Shape(_))
        ));
        assert!(linear_sparse::<bf16>(&[], 0, &w).unwrap().is_empty());
        assert!(linear_dense::<bf16>(&[], 0, &[bf16::ONE; 6], 2, 3).is_empty());
        let y = linear_sparse(
            &[bf16::ONE, bf16::from_f32(2.0), bf16::from_f32(3.0)],
            1,
            &w,
        );
        assert_eq!(y.unwrap(), [bf16::from_f32(6.0); 2]);
    }

    #[test]
    fn padding_and_reordering_do_not_change_results() {
        // 5 entries in one row of a 256×64 tile → 27 padding copies of the last; must count
        // once.
        let mut d = vec![f16::ZERO; 256 * 64];
        d[200 * 64..200 * 64 + 5].fill(f16::ONE);
        let mut w = SparseWeight::from_dense(256, 64, &d).unwrap();
        assert_eq!(w.words().len(), 32);
        let x = vec![f16::ONE; 64];
        let y = linear_sparse(&x, 1, &w).unwrap();
        assert_eq!(y[200], f16::from_f32(5.0));
        assert!(y
            .iter()
            .enumerate()
            .all(|(j, v)| j == 200 || *v == f16::ZERO));
        let mut rng = Rng::new(9);
        let dense = random_sparse::<f16>(&mut rng, 300, 200, 0.8);
        let x = random_sparse::<f16>(&mut rng, 4, 200, 0.0);
        w = SparseWeight::from_dense(300, 200, &dense).unwrap();
        let before = linear_sparse(&x, 4, &w).unwrap();
        w.reorder_for_banks();
        // Same summation order per row (entries visited in column order): bit-identical.
        assert_eq!(linear_sparse(&x, 4, &w).unwrap(), before);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn sparse_equals_dense_up_to_reassociation(
            n in 1usize..6, m in 1usize..600, k in 1usize..150,
            sparsity in 0.0f64..=1.0, seed: u64, bf: bool,
        ) {
            let mut rng = Rng::new(seed);
            if bf {
                let x = random_sparse::<bf16>(&mut rng, n, k, 0.1);
                let w = random_sparse::<bf16>(&mut rng, m, k, sparsity);
                check_paths(&x, n, &w, m, k);
            } else {
                let x = random_sparse::<f16>(&mut rng, n, k, 0.1);
                let w = random_sparse::<f16>(&mut rng, m, k, sparsity);
                check_paths(&x, n, &w, m, k);
            }
        }
    }
}
