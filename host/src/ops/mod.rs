//! The model's GPU operations besides `linear`: each a method of [`Gpu`] over
//! device matrices, queued on the handle's stream, with its shapes checked on the host
//! first. [`reference`](mod@reference) holds the plain CPU version of each (f32), the oracle of the tests and
//! the building blocks of the CPU model path.
//!
//! | method | kernel (`gpu/src/kernels/`) | reference |
//! |---|---|---|
//! | [`rms_norm`](crate::Gpu::rms_norm), [`add_rms_norm`](crate::Gpu::add_rms_norm), [`layer_norm`](crate::Gpu::layer_norm), [`add_layer_norm`](crate::Gpu::add_layer_norm) | `norm.rs` | [`reference::norm`] |
//! | [`add_assign`](crate::Gpu::add_assign), [`add_bias`](crate::Gpu::add_bias), [`silu_mul`](crate::Gpu::silu_mul), [`relu`](crate::Gpu::relu) | `elementwise.rs` | [`reference::elementwise`] |
//! | [`embed`](crate::Gpu::embed), [`gather_rows`](crate::Gpu::gather_rows) | `embed.rs` | [`reference::embed`] |
//! | [`rope`](crate::Gpu::rope) | `rope.rs` | [`reference::rope`] |
//! | [`argmax`](crate::Gpu::argmax), [`sample`](crate::Gpu::sample) | `sample.rs` | [`reference::sample`] |
//!
//! Conventions: activations are [`DeviceMatrix`] with one row per token;
//! per-feature parameters (norm weights and biases, linear biases) are `1 × d` matrices. The
//! kernels compute in f32 on the exact values of the 16-bit inputs and round each result once;
//! they never write a nonzero into a row's padding. Indices read from the device (token ids,
//! positions, picked rows) are checked by the kernels against their range.
//!
//! The scalar functions whose bits must agree between the kernels and the references (exp,
//! SiLU, RoPE frequencies and sin/cos, the sampler's weights and random numbers) are one file,
//! `gpu/src/numerics.rs`, compiled into both.

mod elementwise;
mod embed;
mod attention;
mod indices;
mod kv_cache;
mod norm;
pub mod reference;
mod rope;
mod sample;

/// Scalar arithmetic shared bit for bit with the kernels (`gpu/src/numerics.rs`).
#[path = "../../../gpu/src/numerics.rs"]
#[allow(dead_code)]
pub(crate) mod numerics;

pub use attention::AttentionOptions;
pub use indices::DeviceIndices;
pub use kv_cache::{KvCache, KvLayout};
pub use rope::RopeStyle;
pub use sample::{SamplingParams, NO_TOKEN};

use crate::element::Element;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::matrix::DeviceMatrix;
use std::ffi::c_void;

/// Dynamic shared memory of the row-wise kernels (norms, argmax, sample): their block-wide
/// reductions' slots, `gpu/src/kernels/rowwise.rs: SCRATCH_BYTES` (8 bytes for each of up to
/// 32 warps).
const SCRATCH_BYTES: u32 = 32 * 8;

/// Threads per block of the norms (one block per row: 8 warps; a 4096-wide row is 512
/// chunks of 8, two per thread).
const NORM_THREADS: u32 = 256;
/// Threads per block of the grid-stride element-wise kernels and gathers.
const CHUNK_THREADS: u32 = 256;
/// Threads per block of argmax and sampling (one block per row of up to 256k logits: more
/// threads keep more loads in flight on the row's one SM).
const TOKEN_THREADS: u32 = 512;

impl Gpu {
    /// Launches the model-operation kernel `{op}_{dtype}` on this handle's stream with
    /// `threads` threads per block, `smem` bytes of dynamic shared memory and as many blocks as
    /// there are `work` items (rows, or blocks' worth of chunks), but at most one wave of
    /// resident blocks: every such kernel loops grid-stride over its work, so any size fits
    /// the launch limits.
    pub(crate) fn launch_op<T: Element>(
        &self,
        op: &str,
        threads: u32,
        smem: u32,
        work: usize,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let _queue = self.bind()?;
        let (func, resident) = self.kernel(&format!("{op}_{}", T::DTYPE.name()), threads, smem)?;
        let blocks = work.clamp(1, resident.max(1));
        let grid = crate::checked::grid(crate::checked::Sizes::ARG, [blocks, 1, 1], |_| format!("{op}: one wave of resident blocks"))?;
        self.launch(&func, grid, threads, smem, args)
    }
}

/// Rows and columns of an operand, with the name the errors use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operand<'a> {
    pub name: &'a str,
    pub rows: usize,
    pub cols: usize,
}

impl<'a> Operand<'a> {
    pub(crate) fn of<T: Element>(name: &'a str, m: &DeviceMatrix<T>) -> Self {
        Operand { name, rows: m.rows(), cols: m.cols() }
    }
}

/// `Ok` when `b` has the shape of `a`, else an [`Error::Shape`] naming both.
pub(crate) fn same_shape(op: &str, a: Operand<'_>, b: Operand<'_>) -> Result<()> {
    if (a.rows, a.cols) == (b.rows, b.cols) {
        return Ok(());
    }
    Err(Error::Shape(format!(
        "{op}: {} is {}×{}, {} is {}×{}; they must have the same shape",
        b.name, b.rows, b.cols, a.name, a.rows, a.cols
    )))
}

/// `Ok` when `v` is a `1 × cols` row (a per-feature parameter of `a`'s columns), else an
/// [`Error::Shape`] naming it.
pub(crate) fn row_of(op: &str, a: Operand<'_>, v: Operand<'_>) -> Result<()> {
    if v.rows == 1 && v.cols == a.cols {
        return Ok(());
    }
    Err(Error::Shape(format!(
        "{op}: {} is {}×{}, expected 1×{} (one value per column of {})",
        v.name, v.rows, v.cols, a.cols, a.name
    )))
}

/// `Ok` when an index array of `len` entries has one per row of `a`, else an [`Error::Shape`].
pub(crate) fn one_per_row(op: &str, a: Operand<'_>, what: &str, len: usize) -> Result<()> {
    if len == a.rows {
        return Ok(());
    }
    Err(Error::Shape(format!("{op}: {what} holds {len} indices, expected one per row of {} ({})", a.name, a.rows)))
}

/// `Ok` for a norm's `eps`: finite and ≥ 0 (else NaN or negative variances would follow).
pub(crate) fn check_eps(op: &str, eps: f32) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!("{op}: eps = {eps} must be finite and ≥ 0")))
}

/// A dimension as the `u32` the kernels take (every matrix dimension is at most `i32::MAX`).
pub(crate) fn dim(op: &str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape(format!("{op}: {what} = {v} exceeds the kernels' 32-bit range")))
}

/// An operand's leading dimension as the `u32` the kernels take.
pub(crate) fn ld<T: Element>(op: &str, m: &DeviceMatrix<T>) -> Result<u32> {
    dim(op, "ld", m.ld())
}

/// Blocks of [`CHUNK_THREADS`] that give every thread one 16-byte chunk of `m`'s rows
/// (`⌈cols/8⌉` per row, whatever its `ld`; the launch caps it at one wave).
pub(crate) fn chunk_blocks<T: Element>(m: &DeviceMatrix<T>) -> usize {
    (m.rows() * m.cols().div_ceil(8)).div_ceil(CHUNK_THREADS as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, rows: usize, cols: usize) -> Operand<'_> {
        Operand { name, rows, cols }
    }

    #[test]
    fn shape_checks_name_the_operand() {
        assert!(same_shape("add_assign", op("acc", 3, 5), op("x", 3, 5)).is_ok());
        match same_shape("add_assign", op("acc", 3, 5), op("x", 3, 6)) {
            Err(Error::Shape(m)) => assert!(m.contains("add_assign") && m.contains("x is 3×6") && m.contains("acc is 3×5"), "{m}"),
            r => panic!("{r:?}"),
        }
        assert!(row_of("rms_norm", op("x", 7, 9), op("weight", 1, 9)).is_ok());
        for bad in [op("weight", 2, 9), op("weight", 1, 8)] {
            match row_of("rms_norm", op("x", 7, 9), bad) {
                Err(Error::Shape(m)) => assert!(m.contains("weight") && m.contains("expected 1×9"), "{m}"),
                r => panic!("{r:?}"),
            }
        }
        assert!(one_per_row("embed", op("out", 4, 2), "ids", 4).is_ok());
        match one_per_row("embed", op("out", 4, 2), "ids", 3) {
            Err(Error::Shape(m)) => assert!(m.contains("ids holds 3") && m.contains("out (4)"), "{m}"),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn eps_must_be_finite_and_non_negative() {
        assert!(check_eps("rms_norm", 0.0).is_ok());
        assert!(check_eps("rms_norm", 1e-6).is_ok());
        for bad in [-1e-6, f32::NAN, f32::INFINITY] {
            assert!(matches!(check_eps("rms_norm", bad), Err(Error::InvalidArgument(_))), "{bad}");
        }
    }

    /// `exp_f32` against f64 `exp`: within 2 ulp (relative 2·2⁻²³) for normal results, within
    /// one subnormal step (2⁻¹⁴⁹) plus 2 ulp below; special values exact.
    #[test]
    fn exp_f32_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -104.0f32;
        while x < 89.0 {
            for y in [x, -x * 0.37, x * 1e-3, x * 1e-7] {
                let (got, exact) = (f64::from(numerics::exp_f32(y)), f64::from(y).exp());
                if exact > f64::from(f32::MAX) {
                    assert_eq!(got, f64::INFINITY, "exp({y})");
                    continue;
                }
                let rel = (got - exact).abs() / exact;
                if exact >= f64::from(f32::MIN_POSITIVE) {
                    worst = worst.max(rel);
                } else {
                    assert!((got - exact).abs() <= 2f64.powi(-149) + 2.0 * 2f64.powi(-23) * exact, "exp({y}) = {got}, exact {exact}");
                }
            }
            x += 0.000_731;
        }
        assert!(worst <= 2.0 * 2f64.powi(-23), "largest relative error {worst:e}");
        assert_eq!(numerics::exp_f32(0.0), 1.0);
        assert_eq!(numerics::exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(numerics::exp_f32(f32::INFINITY), f32::INFINITY);
        assert!(numerics::exp_f32(f32::NAN).is_nan());
        // Never above 1 for x ≤ 0 (the sampler's weights rely on it).
        for i in 0..100_000 {
            assert!(numerics::exp_f32(-(i as f32) * 1e-9) <= 1.0);
        }
    }

    /// `sin_cos` against f64 `sin`/`cos` rounded to f32: within 1 ulp at every angle RoPE
    /// produces (up to 10⁶ rad and beyond), and mostly equal.
    #[test]
    fn sin_cos_is_accurate() {
        let ulp = |v: f32| f64::from(f32::from_bits(v.abs().to_bits() + 1) - v.abs());
        let (mut n, mut same) = (0u32, 0u32);
        let mut a = 0.0f32;
        let mut check = |a: f32| {
            let (s, c) = numerics::sin_cos(a);
            let x = f64::from(a);
            for (got, exact) in [(s, x.sin()), (c, x.cos())] {
                let want = exact as f32;
                assert!(
                    (f64::from(got) - exact).abs() <= ulp(want).max(2f64.powi(-149)),
                    "sin_cos({a}): {got} vs {exact}"
                );
                n += 1;
                same += u32::from(got == want);
            }
        };
        while a < 3.0e6 {
            check(a);
            check(-a);
            a = a * 1.000_37 + 0.013;
        }
        for a in [0.0, 1e-30, core::f32::consts::FRAC_PI_2, core::f32::consts::PI, 4.3e9, 1.0e5, 131_071.0 * 0.987] {
            check(a);
        }
        assert!(same as f64 >= 0.999 * n as f64, "{same} of {n} correctly rounded");
        assert!(numerics::sin_cos(f32::INFINITY).0.is_nan());
    }

    /// `rope_inv_freq` is 1 / (θ^(2j/d) rounded to f32), with the power within half an ulp
    /// plus a hair of f64 `powf` (so correctly rounded but for near-ties), for the θ and
    /// head sizes of LLaMA-family models.
    #[test]
    fn rope_inv_freq_is_hf_arithmetic() {
        for theta in [10_000.0f32, 500_000.0, 1_000_000.0, 2.5, 1.0] {
            for hd in [2u32, 64, 80, 96, 128, 256] {
                for j in 0..hd / 2 {
                    let e = (2 * j) as f32 / hd as f32;
                    let want = 1.0f32 / (f64::from(theta).powf(f64::from(e)) as f32);
                    let got = numerics::rope_inv_freq(theta, j, hd);
                    assert_eq!(got, want, "θ={theta} d={hd} j={j}");
                }
            }
        }
        assert_eq!(numerics::rope_inv_freq(10_000.0, 0, 128), 1.0);
    }

    #[test]
    fn sampler_integer_arithmetic_cannot_overflow() {
        for vocab in [1u32, 2, 3, 32_000, 128_256, 262_144, i32::MAX as u32] {
            let s = numerics::weight_shift(vocab);
            assert!(u128::from(vocab) << s < 1u128 << 62, "{vocab}");
            assert_eq!(numerics::sample_weight(1.5, 1.5, 0.7, s), 1 << s);
            assert!(numerics::sample_weight(-1e30, 1.5, 0.7, s) == 0);
        }
        assert_eq!(numerics::weight_shift(262_144), 43);
        for total in [1u64, 2, 12345, (1 << 62) - 1, 1 << 40] {
            for bits in [0u32, 1, 0x8000_0000, u32::MAX] {
                let t = numerics::draw(total, bits);
                assert!(t < total);
                assert_eq!(u128::from(t), (u128::from(total) * u128::from(bits)) >> 32);
            }
        }
    }

    #[test]
    fn dims_fit_u32() {
        assert_eq!(dim("op", "rows", 7).unwrap(), 7);
        assert!(matches!(dim("op", "rows", 1 << 33), Err(Error::Shape(_))));
    }
}
