//! Element-wise operations: residual adds, biases, SwiGLU's gate, ReLU (f32, the kernels'
//! arithmetic before their final rounding).

pub use crate::ops::numerics::silu;

/// `acc += x`.
///
/// # Panics
/// If the lengths differ.
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add_assign: acc and x must have the same length");
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// `x += bias` on every row of `bias.len()` columns.
///
/// # Panics
/// If `bias` is empty or `x.len()` is not a multiple of `bias.len()`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    assert!(!bias.is_empty(), "add_bias: the bias must not be empty");
    assert_eq!(x.len() % bias.len(), 0, "add_bias: x is not a whole number of rows of the bias's length");
    for row in x.chunks_exact_mut(bias.len()) {
        add_assign(row, bias);
    }
}

/// `out = silu(gate) · up`, [`silu`] (x / (1 + e⁻ˣ), f32 within about 3 ulp) then one f32
/// multiplication.
///
/// # Panics
/// If the lengths differ.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len(), "silu_mul: gate, up and out must have the same length");
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// `x = max(x, 0)`: negative values become +0; NaN, −0 and positive values stay.
pub fn relu(x: &mut [f32]) {
    for v in x {
        if *v < 0.0 {
            *v = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let mut a = [1.0, 2.0, 3.0, 4.0];
        add_bias(&mut a, &[0.5, -1.0]);
        assert_eq!(a, [1.5, 1.0, 3.5, 3.0]);
        add_assign(&mut a, &[1.0; 4]);
        assert_eq!(a, [2.5, 2.0, 4.5, 4.0]);
        let mut r = [-1.0, -0.0, 0.0, 2.0, f32::NAN, f32::NEG_INFINITY];
        relu(&mut r);
        assert_eq!(r[..4], [0.0, -0.0, 0.0, 2.0]);
        assert!(r[1].is_sign_negative() && r[4].is_nan() && r[5] == 0.0);
        let mut y = [0.0; 3];
        silu_mul(&[0.0, 20.0, -200.0], &[5.0, 2.0, 1.0], &mut y);
        assert_eq!(y[0], 0.0);
        assert!((y[1] - 40.0).abs() < 1e-5);
        assert_eq!(y[2], 0.0);
    }

    #[test]
    fn silu_is_accurate() {
        for i in -4000..4000 {
            let x = i as f32 * 0.01;
            let exact = f64::from(x) / (1.0 + (-f64::from(x)).exp());
            let got = f64::from(silu(x));
            assert!((got - exact).abs() <= 4.0 * f64::from(f32::EPSILON) * exact.abs().max(1e-30), "silu({x}) = {got}, exact {exact}");
        }
        assert_eq!(silu(f32::INFINITY), f32::INFINITY);
        assert!(silu(f32::NAN).is_nan());
    }
}
