//! RMSNorm and LayerNorm (and the fused residual forms), with f64 sums.

use super::elementwise::add_assign;

/// RMSNorm of each row: `out = x · weight / sqrt(mean(x²) + eps)`, `d = weight.len()` columns
/// (mean of squares and the scale in f64, the output rounded once to f32). A row of zeros with
/// `eps = 0` gives NaN (0 · ∞), as the formula does.
///
/// # Panics
/// If `weight` is empty, `x.len()` is not a multiple of `weight.len()`, or `out.len() !=
/// x.len()`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = check("rms_norm", x.len(), weight.len(), out.len());
    for (xr, yr) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        rms_row(xr, weight, eps, yr);
    }
}

/// `residual += delta` (f32), then `out = rms_norm(residual)`, row by row.
///
/// # Panics
/// As [`rms_norm`], or if `delta.len() != residual.len()`.
pub fn add_rms_norm(residual: &mut [f32], delta: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = check("add_rms_norm", residual.len(), weight.len(), out.len());
    assert_eq!(delta.len(), residual.len(), "add_rms_norm: delta and residual must have the same length");
    for ((rr, dr), yr) in residual.chunks_exact_mut(d).zip(delta.chunks_exact(d)).zip(out.chunks_exact_mut(d)) {
        add_assign(rr, dr);
        rms_row(rr, weight, eps, yr);
    }
}

/// LayerNorm of each row: `out = (x − mean) · weight / sqrt(var + eps) + bias` with the
/// biased variance of the centred values (mean, variance and scale in f64).
///
/// # Panics
/// As [`rms_norm`], or if `bias.len() != weight.len()`.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let d = check("layer_norm", x.len(), weight.len(), out.len());
    assert_eq!(bias.len(), d, "layer_norm: bias and weight must have the same length");
    for (xr, yr) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        layer_row(xr, weight, bias, eps, yr);
    }
}

/// `residual += delta` (f32), then `out = layer_norm(residual)`, row by row.
///
/// # Panics
/// As [`layer_norm`], or if `delta.len() != residual.len()`.
pub fn add_layer_norm(residual: &mut [f32], delta: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let d = check("add_layer_norm", residual.len(), weight.len(), out.len());
    assert_eq!(bias.len(), d, "add_layer_norm: bias and weight must have the same length");
    assert_eq!(delta.len(), residual.len(), "add_layer_norm: delta and residual must have the same length");
    for ((rr, dr), yr) in residual.chunks_exact_mut(d).zip(delta.chunks_exact(d)).zip(out.chunks_exact_mut(d)) {
        add_assign(rr, dr);
        layer_row(rr, weight, bias, eps, yr);
    }
}

/// The row width, after checking the lengths.
fn check(op: &str, x: usize, d: usize, out: usize) -> usize {
    assert!(d > 0, "{op}: the weight must not be empty");
    assert_eq!(x % d, 0, "{op}: the input's length {x} is not a whole number of rows of {d}");
    assert_eq!(out, x, "{op}: out must have the input's length");
    d
}

fn rms_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let ms = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + f64::from(eps)).sqrt();
    for ((o, &v), &g) in y.iter_mut().zip(x).zip(w) {
        *o = (f64::from(v) * r * f64::from(g)) as f32;
    }
}

fn layer_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) {
    let d = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / d;
    let var = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / d;
    let r = 1.0 / (var + f64::from(eps)).sqrt();
    for (((o, &v), &g), &c) in y.iter_mut().zip(x).zip(w).zip(b) {
        *o = ((f64::from(v) - mean) * r * f64::from(g) + f64::from(c)) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_a_known_row() {
        // mean(x²) = (9 + 16) / 2 = 12.5.
        let mut y = [0.0; 4];
        rms_norm(&[3.0, 4.0, -1.0, 0.0], &[1.0, 2.0], 0.0, &mut y);
        let s = 12.5f64.sqrt();
        assert_eq!(y[..2], [(3.0 / s) as f32, (8.0 / s) as f32]);
        // Second row: mean(x²) = 0.5; eps = 0 is allowed.
        assert_eq!(y[2], (-1.0 / 0.5f64.sqrt()) as f32);
        assert_eq!(y[3], 0.0);
    }

    #[test]
    fn layer_norm_of_a_known_row() {
        // mean 2, var ((−1)² + 1²) / 2 = 1.
        let mut y = [0.0; 2];
        layer_norm(&[1.0, 3.0], &[2.0, 0.5], &[0.25, -1.0], 0.0, &mut y);
        assert_eq!(y, [-2.0 + 0.25, 0.5 - 1.0]);
    }

    #[test]
    fn fused_forms_are_add_then_norm() {
        let (x, d) = ([1.0f32, -2.0, 0.5, 4.0, 0.0, 3.0], [0.5f32, 0.25, -1.0, 2.0, 1.0, -3.0]);
        let (w, b) = ([1.5f32, -0.5, 2.0], [0.1f32, 0.2, 0.3]);
        let mut sum = x;
        add_assign(&mut sum, &d);
        for layer in [false, true] {
            let (mut res, mut got, mut want) = (x, [0.0f32; 6], [0.0f32; 6]);
            if layer {
                add_layer_norm(&mut res, &d, &w, &b, 1e-5, &mut got);
                layer_norm(&sum, &w, &b, 1e-5, &mut want);
            } else {
                add_rms_norm(&mut res, &d, &w, 1e-5, &mut got);
                rms_norm(&sum, &w, 1e-5, &mut want);
            }
            assert_eq!(res, sum);
            assert_eq!(got, want);
        }
    }

    #[test]
    #[should_panic(expected = "whole number of rows")]
    fn ragged_input_panics() {
        rms_norm(&[1.0; 5], &[1.0; 2], 0.0, &mut [0.0; 5]);
    }
}
