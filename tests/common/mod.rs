//! Helpers shared by the integration tests: GPU discovery with a visible skip, random data,
//! and the error bound every GPU result is checked against.
#![allow(dead_code)]

use sparse_tc::{Element, Gpu};

/// The GPU, or `None` after printing why the calling test is skipped.
pub fn gpu(test: &str) -> Option<Gpu> {
    match Gpu::new() {
        Ok(g) => {
            println!("{test}: {} with the {} kernels", g.name(), g.ptx_target());
            Some(g)
        }
        Err(e) => {
            println!("SKIPPED {test}: no usable GPU ({e})");
            None
        }
    }
}

/// xorshift64*: small, seedable, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `len` values uniform in [-1, 1), rounded to `T`.
pub fn random<T: Element>(rng: &mut Rng, len: usize) -> Vec<T> {
    (0..len).map(|_| T::from_f32(rng.uniform())).collect()
}

/// Checks `got` (n×m) against the f64 reference `Y = X·Wᵀ`.
///
/// Error bound per element, for 16-bit inputs with f32 accumulation:
/// - each product x·w of two 16-bit floats is exact in f32 (11+11 or 8+8 significant bits ≤ 24);
/// - summing K products in f32 in any order (Tensor Core tree, split-K partials, reduction)
///   errs by at most γ_K·Σ|x·w| with γ_K ≈ K·2⁻²⁴; we allow K·2⁻²² (4×, for the Tensor
///   Cores' truncating internal adds);
/// - the final rounding to T adds u·|y| (u = 2⁻¹¹ for f16, 2⁻⁸ for bf16), plus half the
///   f16 subnormal spacing (2⁻²⁵) when |y| is tiny.
///
/// NaN must match NaN; ±Inf must match exactly.
pub fn assert_close<T: Element>(got: &[T], x: &[T], w: &[T], n: usize, m: usize, k: usize) {
    assert_eq!(got.len(), n * m);
    let u = T::DTYPE.unit_roundoff();
    let gamma = k as f64 * 2f64.powi(-22);
    for i in 0..n {
        for j in 0..m {
            let (mut dot, mut abs) = (0f64, 0f64);
            for p in 0..k {
                let prod = x[i * k + p].to_f32() as f64 * w[j * k + p].to_f32() as f64;
                dot += prod;
                abs += prod.abs();
            }
            let g = got[i * m + j].to_f32() as f64;
            if dot.is_nan() {
                assert!(g.is_nan(), "Y[{i}][{j}] = {g}, expected NaN (n={n} m={m} k={k})");
                continue;
            }
            if dot.is_infinite() {
                assert_eq!(g, dot, "Y[{i}][{j}] (n={n} m={m} k={k})");
                continue;
            }
            let tol = u * dot.abs() + gamma * abs + 2f64.powi(-25);
            assert!(
                (g - dot).abs() <= tol,
                "Y[{i}][{j}] = {g}, reference {dot}, |err| {} > tol {tol} (n={n} m={m} k={k})",
                (g - dot).abs()
            );
        }
    }
}

/// NaN bit pattern used to poison outputs before a kernel runs, so an element the kernel
/// forgot to write cannot pass by accident.
pub fn poison<T: Element>() -> T {
    T::from_bits(0x7E01)
}

/// Property-test case count: `n` normally, fewer under compute-sanitizer (which slows every
/// kernel by 10–100×; `run-all.sh` sets `SPARSE_TC_SANITIZER=1`).
pub fn cases(n: u32) -> u32 {
    if std::env::var_os("SPARSE_TC_SANITIZER").is_some() {
        (n / 8).max(3)
    } else {
        n
    }
}
