//! f32 → 16-bit float rounding (PTX ISA 9.7.9.21, `cvt`).

use core::arch::asm;

/// `cvt.rn.f16.f32`: round to nearest even; NaN and ±Inf are kept, overflow gives ±Inf.
#[inline(always)]
pub fn f32_to_f16_rn(v: f32) -> u16 {
    let r: u16;
    // SAFETY: register-only conversion.
    unsafe { asm!("cvt.rn.f16.f32 {0}, {1};", out(reg16) r, in(reg32) v, options(pure, nomem, nostack)) };
    r
}

/// `cvt.rn.bf16.f32` (sm_80+): round to nearest even; NaN and ±Inf are kept.
#[inline(always)]
pub fn f32_to_bf16_rn(v: f32) -> u16 {
    let r: u16;
    // SAFETY: register-only conversion.
    unsafe { asm!("cvt.rn.bf16.f32 {0}, {1};", out(reg16) r, in(reg32) v, options(pure, nomem, nostack)) };
    r
}
