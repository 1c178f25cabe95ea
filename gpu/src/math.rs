//! Fast math on the special function unit (PTX ISA, floating-point instructions: `ex2`).

use core::arch::asm;

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
