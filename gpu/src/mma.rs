//! Typed MMA fragments and `mma.sync.aligned.m16n8k16` (PTX ISA 9.7.14.5.8).
//!
//! Shapes: D[16×8] = A[16×16] · B[16×8] + C[16×8], A row-major, B column-major ("row.col"),
//! 16-bit inputs, f32 accumulators. Which lane holds which element is in
//! [`crate::layout`] (`frag_a_coord`, `frag_b_coord`, `frag_c_coord`).

use core::arch::asm;

/// A fragment: 16×16 16-bit elements, 4 registers of two halves per lane
/// (a0a1, a2a3, a4a5, a6a7).
#[derive(Clone, Copy, Default)]
pub struct FragA(pub [u32; 4]);

/// B fragment: 16×8 16-bit elements, 2 registers of two halves per lane (b0b1, b2b3).
#[derive(Clone, Copy, Default)]
pub struct FragB(pub [u32; 2]);

/// C/D fragment: 16×8 f32 accumulators, 4 per lane (c0..c3).
#[derive(Clone, Copy, Default)]
pub struct FragC(pub [f32; 4]);

/// A 16-bit input type of the Tensor Core MMA and its conversions to and from f32.
pub trait MmaElement {
    /// `d = a · b + c` for one m16n8k16 tile with f32 accumulation.
    ///
    /// Must be called by all 32 lanes of the warp together (`.sync.aligned`).
    fn mma_m16n8k16(d: &mut FragC, a: &FragA, b: &FragB);
    /// f32 → this type's bits, round to nearest even.
    fn from_f32(v: f32) -> u16;
    /// This type's bits → f32 (exact).
    fn to_f32(bits: u16) -> f32;
}

/// IEEE half precision.
pub enum F16 {}
/// bfloat16.
pub enum Bf16 {}

/// Implements [`MmaElement`] for one input type: its `mma.sync` instruction and its conversions.
macro_rules! mma_element {
    ($ty:ty, $instr:literal, $cvt:path, $widen:path) => {
        impl MmaElement for $ty {
            #[doc = concat!("`", $instr, "`.")]
            #[inline(always)]
            fn mma_m16n8k16(d: &mut FragC, a: &FragA, b: &FragB) {
                let c = d.0;
                // SAFETY: register-only instruction; warp convergence is the caller's contract
                // (kernels call it from warp-uniform control flow).
                unsafe {
                    asm!(
                        concat!($instr, " {{{0}, {1}, {2}, {3}}}, {{{4}, {5}, {6}, {7}}}, {{{8}, {9}}}, {{{10}, {11}, {12}, {13}}};"),
                        out(reg32) d.0[0], out(reg32) d.0[1], out(reg32) d.0[2], out(reg32) d.0[3],
                        in(reg32) a.0[0], in(reg32) a.0[1], in(reg32) a.0[2], in(reg32) a.0[3],
                        in(reg32) b.0[0], in(reg32) b.0[1],
                        in(reg32) c[0], in(reg32) c[1], in(reg32) c[2], in(reg32) c[3],
                        options(pure, nomem, nostack)
                    );
                }
            }
            #[inline(always)]
            fn from_f32(v: f32) -> u16 {
                $cvt(v)
            }
            #[inline(always)]
            fn to_f32(bits: u16) -> f32 {
                $widen(bits)
            }
        }
    };
}

mma_element!(F16, "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", crate::convert::f32_to_f16_rn, crate::convert::f16_to_f32);
mma_element!(Bf16, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", crate::convert::f32_to_bf16_rn, crate::convert::bf16_to_f32);
