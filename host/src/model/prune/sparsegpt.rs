//! SparseGPT (Frantar & Alistarh, 2023): prune a layer row by row, and after each dropped
//! weight move its contribution onto the row's later weights so the layer's output on the
//! calibration inputs changes as little as possible (optimal brain surgeon, one column at a
//! time, with the inverse Hessian of the remaining columns read off one Cholesky factor).
//!
//! For a layer `W` (rows × cols) whose inputs `X` give the Hessian `H = Σ xᵀx` (cols × cols):
//! 1. columns no input ever touched (`H_jj = 0`) are dropped and `H_jj = 1`;
//! 2. `H += damp · mean(diag H) · I` (damping keeps it well conditioned);
//! 3. `U` = the upper Cholesky factor of `H⁻¹`: row `i` of `U`, divided by `U_ii`, is row 0 of
//!    the inverse of `H` restricted to columns `i..`, divided by its first entry;
//! 4. each row, left to right in blocks: at a block's start the mask takes the lowest
//!    saliencies `w_j² / U_jj²` (per-row counts, or N of every M); then for each column `i`
//!    dropped, `err = w_i / U_ii` and `w_j -= err · U_ij` for `j > i`, `w_i = 0`.
//!
//! Rows are independent given `U`, so they run on all cores. Everything is f64.

use super::mask::{lowest, zeros_before, Pattern};
use crate::error::{Error, Result};

/// Options of the algorithm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SparseGptOptions {
    /// Columns per mask block (the paper's 128).
    pub block: usize,
    /// Damping, relative to the mean of the Hessian's diagonal (the paper's 0.01).
    pub damp: f64,
}

impl Default for SparseGptOptions {
    fn default() -> Self {
        SparseGptOptions { block: 128, damp: 0.01 }
    }
}

/// Prunes `w` (rows × cols, row-major) in place to `sparsity` per row (or `pattern`), with the
/// Hessian `h` (cols × cols, row-major, symmetric) of its inputs.
pub fn prune(w: &mut [f32], cols: usize, h: &[f64], sparsity: f64, pattern: Pattern, opts: SparseGptOptions) -> Result<()> {
    if cols == 0 || !w.len().is_multiple_of(cols) || h.len() != cols * cols {
        return Err(Error::Shape(format!("sparsegpt: {} weights, {cols} columns, Hessian of {}", w.len(), h.len())));
    }
    if opts.block == 0 || !(opts.damp >= 0.0 && opts.damp.is_finite()) {
        return Err(Error::InvalidArgument(format!("sparsegpt: block {} and damp {} (need block ≥ 1, damp ≥ 0)", opts.block, opts.damp)));
    }
    let block = match pattern {
        // N:M groups must not straddle a mask block.
        Pattern::NofM { m, .. } => opts.block.div_ceil(m) * m,
        Pattern::Unstructured => opts.block,
    };
    let mut h = h.to_vec();
    let mut dead = vec![false; cols];
    for j in 0..cols {
        if h[j * cols + j] == 0.0 {
            h[j * cols + j] = 1.0;
            dead[j] = true;
        }
    }
    let mean_diag = (0..cols).map(|j| h[j * cols + j]).sum::<f64>() / cols as f64;
    for j in 0..cols {
        h[j * cols + j] += opts.damp * mean_diag;
    }
    let u = upper_cholesky_of_inverse(&h, cols)?;
    let rows = w.len() / cols;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(rows.max(1));
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        for chunk in w.chunks_mut(per * cols) {
            let (u, dead) = (&u, &dead);
            s.spawn(move || {
                let mut row = vec![0.0f64; cols];
                for wr in chunk.chunks_mut(cols) {
                    for (r, v) in row.iter_mut().zip(wr.iter()) {
                        *r = f64::from(*v);
                    }
                    for (j, _) in dead.iter().enumerate().filter(|(_, d)| **d) {
                        row[j] = 0.0;
                    }
                    prune_row(&mut row, u, sparsity, pattern, block);
                    for (v, r) in wr.iter_mut().zip(&row) {
                        *v = *r as f32;
                    }
                }
            });
        }
    });
    Ok(())
}

/// One row of step 4.
fn prune_row(w: &mut [f64], u: &[f64], sparsity: f64, pattern: Pattern, block: usize) {
    let cols = w.len();
    let mut drop = vec![false; cols];
    for b0 in (0..cols).step_by(block) {
        let b1 = (b0 + block).min(cols);
        let saliency = |w: &[f64], j: usize| w[j] * w[j] / (u[j * cols + j] * u[j * cols + j]);
        match pattern {
            Pattern::Unstructured => {
                let s: Vec<f64> = (b0..b1).map(|j| saliency(w, j)).collect();
                for i in lowest(&s, zeros_before(b1, sparsity) - zeros_before(b0, sparsity)) {
                    drop[b0 + i] = true;
                }
            }
            Pattern::NofM { .. } => {}
        }
        for i in b0..b1 {
            if let Pattern::NofM { n, m } = pattern {
                if (i - b0).is_multiple_of(m) {
                    let g1 = (i + m).min(b1);
                    let s: Vec<f64> = (i..g1).map(|j| saliency(w, j)).collect();
                    let k = ((n * (g1 - i)) as f64 / m as f64).round() as usize;
                    for j in lowest(&s, k) {
                        drop[i + j] = true;
                    }
                }
            }
            if drop[i] {
                let err = w[i] / u[i * cols + i];
                let ui = &u[i * cols..(i + 1) * cols];
                for j in i + 1..cols {
                    w[j] -= err * ui[j];
                }
                w[i] = 0.0;
            }
        }
    }
}

/// Lower Cholesky factor `L` of a symmetric positive definite `a` (n × n): `a = L Lᵀ`.
fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let dot: f64 = l[i * n..i * n + j].iter().zip(&l[j * n..j * n + j]).map(|(a, b)| a * b).sum();
            let v = a[i * n + j] - dot;
            if i == j {
                if !(v > 0.0 && v.is_finite()) {
                    return Err(Error::InvalidArgument(format!(
                        "sparsegpt: the damped Hessian is not positive definite (pivot {i} = {v:e}); raise the damping"
                    )));
                }
                l[i * n + i] = v.sqrt();
            } else {
                l[i * n + j] = v / l[j * n + j];
            }
        }
    }
    Ok(l)
}

/// Upper Cholesky factor `U` of `h⁻¹` (`h⁻¹ = Uᵀ U`), row-major n × n.
pub(crate) fn upper_cholesky_of_inverse(h: &[f64], n: usize) -> Result<Vec<f64>> {
    let l = cholesky(h, n)?;
    // L⁻¹ (lower triangular) by forward substitution, stored transposed (`lt[c][k]` =
    // L⁻¹[k][c]) so every inner product below runs over contiguous memory.
    let mut lt = vec![0.0f64; n * n];
    for c in 0..n {
        let col = &mut lt[c * n..(c + 1) * n];
        col[c] = 1.0 / l[c * n + c];
        for i in c + 1..n {
            let s: f64 = l[i * n + c..i * n + i].iter().zip(&col[c..i]).map(|(a, b)| a * b).sum();
            col[i] = -s / l[i * n + i];
        }
    }
    // h⁻¹ = L⁻ᵀ L⁻¹: entry (i, j), j ≤ i, is Σ_{k ≥ i} L⁻¹[k][i] · L⁻¹[k][j]; rows on all cores.
    let mut inv = vec![0.0f64; n * n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let rows: Vec<Vec<f64>> = std::thread::scope(|s| {
        let lt = &lt;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|i| (0..=i).map(|j| lt[i * n + i..(i + 1) * n].iter().zip(&lt[j * n + i..(j + 1) * n]).map(|(a, b)| a * b).sum()).collect::<Vec<f64>>())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let parts: Vec<Vec<Vec<f64>>> = handles.into_iter().map(|h| h.join().expect("inverse thread")).collect();
        let mut rows = vec![vec![]; n];
        for (t, part) in parts.into_iter().enumerate() {
            for (r, row) in part.into_iter().enumerate() {
                rows[t + r * threads] = row;
            }
        }
        rows
    });
    for (i, row) in rows.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            inv[i * n + j] = v;
            inv[j * n + i] = v;
        }
    }
    // U = (lower Cholesky factor of h⁻¹)ᵀ.
    let lc = cholesky(&inv, n)?;
    let mut u = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = lc[i * n + j];
        }
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    /// Inverse of a symmetric positive definite matrix by Gauss–Jordan elimination (f64).
    fn inverse(a: &[f64], n: usize) -> Vec<f64> {
        let mut m = a.to_vec();
        let mut inv: Vec<f64> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
        for c in 0..n {
            let p = (c..n).max_by(|&a, &b| m[a * n + c].abs().total_cmp(&m[b * n + c].abs())).unwrap();
            for k in 0..n {
                m.swap(c * n + k, p * n + k);
                inv.swap(c * n + k, p * n + k);
            }
            let d = m[c * n + c];
            for k in 0..n {
                m[c * n + k] /= d;
                inv[c * n + k] /= d;
            }
            for r in 0..n {
                if r != c {
                    let f = m[r * n + c];
                    for k in 0..n {
                        m[r * n + k] -= f * m[c * n + k];
                        inv[r * n + k] -= f * inv[c * n + k];
                    }
                }
            }
        }
        inv
    }

    /// The algorithm as the paper states it, without the Cholesky shortcut: before column `i`,
    /// the inverse of `H` restricted to columns `i..` is computed from scratch; its first row
    /// `g` gives the saliency `w_i² / g_0` and the update `w_{i..} -= (w_i / g_0) · g`.
    fn reference(w: &[f64], rows: usize, cols: usize, x: &[f64], n: usize, sparsity: f64, pattern: Pattern, opts: SparseGptOptions) -> (Vec<f64>, Vec<bool>) {
        let mut h = vec![0.0; cols * cols];
        for r in 0..n {
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += x[r * cols + i] * x[r * cols + j];
                }
            }
        }
        let mean = (0..cols).map(|j| h[j * cols + j]).sum::<f64>() / cols as f64;
        for j in 0..cols {
            h[j * cols + j] += opts.damp * mean;
        }
        // Row 0 of the inverse of each trailing block H[i.., i..].
        let firsts: Vec<Vec<f64>> = (0..cols)
            .map(|i| {
                let m = cols - i;
                let sub: Vec<f64> = (0..m * m).map(|e| h[(i + e / m) * cols + i + e % m]).collect();
                inverse(&sub, m)[..m].to_vec()
            })
            .collect();
        let mut out = w.to_vec();
        let mut mask = vec![false; rows * cols];
        let block = match pattern {
            Pattern::NofM { m, .. } => opts.block.div_ceil(m) * m,
            Pattern::Unstructured => opts.block,
        };
        for r in 0..rows {
            let row = &mut out[r * cols..(r + 1) * cols];
            let drop = &mut mask[r * cols..(r + 1) * cols];
            for b0 in (0..cols).step_by(block) {
                let b1 = (b0 + block).min(cols);
                let sal = |row: &[f64], j: usize| row[j] * row[j] / firsts[j][0];
                if pattern == Pattern::Unstructured {
                    let s: Vec<f64> = (b0..b1).map(|j| sal(row, j)).collect();
                    for i in lowest(&s, zeros_before(b1, sparsity) - zeros_before(b0, sparsity)) {
                        drop[b0 + i] = true;
                    }
                }
                for i in b0..b1 {
                    if let Pattern::NofM { n, m } = pattern {
                        if (i - b0) % m == 0 {
                            let g1 = (i + m).min(b1);
                            let s: Vec<f64> = (i..g1).map(|j| sal(row, j)).collect();
                            for j in lowest(&s, ((n * (g1 - i)) as f64 / m as f64).round() as usize) {
                                drop[i + j] = true;
                            }
                        }
                    }
                    if drop[i] {
                        let g = &firsts[i];
                        let e = row[i] / g[0];
                        for (k, gk) in g.iter().enumerate() {
                            row[i + k] -= e * gk;
                        }
                        row[i] = 0.0;
                    }
                }
            }
        }
        (out, mask)
    }

    /// The Cholesky route equals the from-scratch inverses: same mask, and the reconstructed
    /// weights agree to f64 rounding amplified by the conditioning (the damped Hessians here
    /// have condition numbers below 1e4, so 1e-9 of the largest weight is a wide margin over
    /// the ~1e-16 · 1e4 · cols expected).
    #[test]
    fn matches_the_from_scratch_reference() {
        let mut rng = Lcg(11);
        for (rows, cols, n, pattern, sparsity) in [
            (5, 24, 40, Pattern::Unstructured, 0.5),
            (3, 37, 20, Pattern::Unstructured, 0.7),
            (4, 32, 64, Pattern::NofM { n: 2, m: 4 }, 0.0),
        ] {
            let x: Vec<f64> = (0..n * cols).map(|_| rng.next()).collect();
            // f32 weights (what the production path takes), the reference in f64 from them.
            let mut got: Vec<f32> = (0..rows * cols).map(|_| rng.next() as f32).collect();
            let w: Vec<f64> = got.iter().map(|&v| f64::from(v)).collect();
            let opts = SparseGptOptions { block: 8, damp: 0.01 };
            let (want, mask) = reference(&w, rows, cols, &x, n, sparsity, pattern, opts);
            let mut h = vec![0.0; cols * cols];
            for r in 0..n {
                for i in 0..cols {
                    for j in 0..cols {
                        h[i * cols + j] += x[r * cols + i] * x[r * cols + j];
                    }
                }
            }
            prune(&mut got, cols, &h, sparsity, pattern, opts).unwrap();
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g == 0.0, mask[i], "mask differs at {i} ({pattern:?})");
                // f32 output: half an f32 ulp of the largest weight plus the f64 bound.
                assert!((f64::from(g) - r).abs() <= scale * (1e-9 + f64::from(f32::EPSILON)), "{i}: {g} vs {r}");
            }
            let zeros = mask.chunks(cols).map(|r| r.iter().filter(|&&b| b).count()).collect::<Vec<_>>();
            let want_zeros = match pattern {
                Pattern::Unstructured => zeros_before(cols, sparsity),
                Pattern::NofM { n, m } => cols / m * n,
            };
            assert!(zeros.iter().all(|&z| z == want_zeros), "{zeros:?} vs {want_zeros}");
        }
    }

    /// Reconstruction pays: on inputs with correlated columns, the layer's output error after
    /// SparseGPT is below magnitude pruning's at the same sparsity.
    #[test]
    fn reconstruction_beats_magnitude() {
        let mut rng = Lcg(3);
        let (rows, cols, n) = (16, 48, 200);
        let base: Vec<f64> = (0..n * 8).map(|_| rng.next()).collect();
        let x: Vec<f64> = (0..n * cols).map(|e| base[(e / cols) * 8 + (e % cols) % 8] + 0.1 * rng.next()).collect();
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.next() as f32).collect();
        let mut h = vec![0.0; cols * cols];
        for r in 0..n {
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += x[r * cols + i] * x[r * cols + j];
                }
            }
        }
        let err = |p: &[f32]| -> f64 {
            let mut e = 0.0;
            for r in 0..n {
                for o in 0..rows {
                    let d: f64 = (0..cols).map(|j| (f64::from(w[o * cols + j]) - f64::from(p[o * cols + j])) * x[r * cols + j]).sum();
                    e += d * d;
                }
            }
            e
        };
        let mut sgpt = w.clone();
        prune(&mut sgpt, cols, &h, 0.5, Pattern::Unstructured, SparseGptOptions::default()).unwrap();
        let mut mag = w.clone();
        for row in mag.chunks_mut(cols) {
            let s: Vec<f64> = row.iter().map(|v| f64::from(v.abs())).collect();
            for i in lowest(&s, cols / 2) {
                row[i] = 0.0;
            }
        }
        let (es, em) = (err(&sgpt), err(&mag));
        assert!(es < 0.5 * em, "sparsegpt error {es} not well below magnitude's {em}");
    }

    #[test]
    fn dead_columns_are_dropped_and_bad_input_refused() {
        let cols = 4;
        let mut h = vec![0.0; 16];
        for j in 0..3 {
            h[j * 4 + j] = 1.0;
        }
        let mut w = vec![1.0f32, 2.0, 3.0, 4.0];
        prune(&mut w, cols, &h, 0.25, Pattern::Unstructured, SparseGptOptions::default()).unwrap();
        assert_eq!(w[3], 0.0, "an input column never seen is dropped first");
        assert!(prune(&mut w, 3, &h, 0.5, Pattern::Unstructured, SparseGptOptions::default()).is_err());
        let bad = SparseGptOptions { block: 0, damp: 0.01 };
        assert!(prune(&mut w, cols, &h, 0.5, Pattern::Unstructured, bad).is_err());
    }
}
