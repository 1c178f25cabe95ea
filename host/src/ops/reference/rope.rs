//! Rotary position embedding (the GPU kernel's arithmetic, bit for bit).

use crate::ops::numerics::{rope_inv_freq, sin_cos};
use crate::ops::RopeStyle;

/// Rotates each head (`head_dim` wide; `cols = heads · head_dim`) of row i of `x` by
/// `positions[i]`, as [`Gpu::rope`](crate::Gpu::rope) does: `inv_freq_j` and the f32 angle
/// `(pos as f32) · inv_freq_j` as in Hugging Face `transformers`, (sin, cos) of it within 1 ulp,
/// then (x₀, x₁) → (x₀·cos − x₁·sin, x₁·cos + x₀·sin) in f32. Pairs are `(j, j + head_dim/2)`
/// ([`RopeStyle::HalfSplit`]) or `(2j, 2j + 1)` ([`RopeStyle::Interleaved`]). Allocates the
/// `head_dim / 2` inverse frequencies once.
///
/// # Panics
/// If `head_dim` is odd or zero, does not divide `cols`, or `x.len() != positions.len() ·
/// cols`.
pub fn rope(x: &mut [f32], cols: usize, positions: &[u32], head_dim: usize, theta: f32, style: RopeStyle) {
    assert!(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim = {head_dim} must be even and positive");
    assert_eq!(cols % head_dim, 0, "rope: {cols} columns are not a whole number of heads of {head_dim}");
    assert_eq!(x.len(), positions.len() * cols, "rope: x must hold one row per position");
    let pairs = head_dim / 2;
    let inv_freq: Vec<f32> = (0..pairs).map(|j| rope_inv_freq(theta, j as u32, head_dim as u32)).collect();
    for (row, &pos) in x.chunks_exact_mut(cols).zip(positions) {
        for (j, &f) in inv_freq.iter().enumerate() {
            let (sin, cos) = sin_cos(pos as f32 * f);
            let (i0, i1) = match style {
                RopeStyle::HalfSplit => (j, j + pairs),
                RopeStyle::Interleaved => (2 * j, 2 * j + 1),
            };
            for head in row.chunks_exact_mut(head_dim) {
                let (x0, x1) = (head[i0], head[i1]);
                head[i0] = x0 * cos - x1 * sin;
                head[i1] = x1 * cos + x0 * sin;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rotation against f64 math: inv_freq = θ^(−2j/d) and the angle in f64 (not the
    /// f32 steps), so the comparison bounds the f32 angle's own error too: |Δangle| ≤
    /// pos·inv_freq·2⁻²³ (inv_freq's and the product's roundings), small at these positions.
    #[test]
    fn matches_f64_math() {
        let (hd, heads, theta) = (8usize, 2usize, 10000.0f32);
        let cols = hd * heads;
        let positions = [0u32, 1, 7, 1000];
        let base: Vec<f32> = (0..positions.len() * cols).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
        for style in [RopeStyle::HalfSplit, RopeStyle::Interleaved] {
            let mut x = base.clone();
            rope(&mut x, cols, &positions, hd, theta, style);
            for (r, &pos) in positions.iter().enumerate() {
                for h in 0..heads {
                    for j in 0..hd / 2 {
                        let (i0, i1) = match style {
                            RopeStyle::HalfSplit => (j, j + hd / 2),
                            RopeStyle::Interleaved => (2 * j, 2 * j + 1),
                        };
                        let at = |i| r * cols + h * hd + i;
                        let a = f64::from(pos) * f64::from(theta).powf(-2.0 * j as f64 / hd as f64);
                        let (x0, x1) = (f64::from(base[at(i0)]), f64::from(base[at(i1)]));
                        let (y0, y1) = (x0 * a.cos() - x1 * a.sin(), x1 * a.cos() + x0 * a.sin());
                        let tol = 1e-6 * (1.0 + a) * (x0.abs() + x1.abs());
                        assert!((f64::from(x[at(i0)]) - y0).abs() <= tol, "{style:?} row {r} head {h} pair {j}");
                        assert!((f64::from(x[at(i1)]) - y1).abs() <= tol, "{style:?} row {r} head {h} pair {j}");
                    }
                }
            }
            // Position 0 is the identity.
            assert_eq!(x[..cols], base[..cols]);
        }
    }
}
