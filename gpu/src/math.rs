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
