//! Conversions between f32 and the 16-bit floats (PTX ISA 9.7.9.21, `cvt`): f32 → f16/bf16
//! rounding, and the exact widenings f16/bf16 → f32 the row-wise kernels compute in.

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

/// `cvt.f32.f16`: exact widening (every f16, subnormals, ±Inf and NaN included, is an f32).
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    let r: f32;
    // SAFETY: register-only conversion.
    unsafe { asm!("cvt.f32.f16 {0}, {1};", out(reg32) r, in(reg16) bits, options(pure, nomem, nostack)) };
    r
}

/// bf16 → f32, exact: a bf16 is the upper half of an f32 (no instruction needed).
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}
