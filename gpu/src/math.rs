//! Floating-point arithmetic that plain Rust operators do not reach in `core` (PTX ISA 9.7.3,
//! Floating Point Instructions). `+ - * /` on f32 and f64 need no wrapper: without fast-math
//! flags LLVM emits the IEEE `add/sub/mul.rn` and `div.rn`, never fused (`.ci/check-ptx`
//! verifies the model-operation kernels hold no `fma`, `.approx` or `.ftz`).

use core::arch::asm;

/// `sqrt.rn.f32` (PTX ISA 9.7.3, sqrt): the IEEE 754 square root, correctly rounded (the
/// same value as Rust's `f32::sqrt` on the host); subnormals are kept (no `.ftz`), negative
/// inputs and NaN give NaN, `+Inf` gives `+Inf`.
#[inline(always)]
pub fn sqrt_rn(x: f32) -> f32 {
    let r: f32;
    // SAFETY: register-only arithmetic.
    unsafe { asm!("sqrt.rn.f32 {0}, {1};", out(reg32) r, in(reg32) x, options(pure, nomem, nostack)) };
    r
}

/// `ex2.approx.f32`: 2^x, with a maximum relative error of about 2⁻²² (a few ulp) over the
/// whole range; `ex2(-inf) = +0`, `ex2(+inf) = +inf`, NaN gives NaN. Subnormal results are
/// kept (no `.ftz`).
///
/// Softmax uses it as `2^((s - max)·log2 e)`: the scale by `log2 e` is folded into the
/// score scale, so one multiply and one `ex2` give each exponential.
#[inline(always)]
pub fn ex2_approx(x: f32) -> f32 {
    let r: f32;
    // SAFETY: register-only instruction.
    unsafe { asm!("ex2.approx.f32 {0}, {1};", out(reg32) r, in(reg32) x, options(pure, nomem, nostack)) };
    r
}
