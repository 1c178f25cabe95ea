//! Exchanges between the lanes of a warp (PTX ISA, data movement instructions: `shfl.sync`, sm_70+).
//!
//! `shfl.sync.bfly` reads a register of lane `lane ^ lane_mask`: with masks 1, 2, 4, … a
//! butterfly reduction over groups of 2, 4, 8, … lanes leaves the result in every lane of the
//! group (the quads of an `mma` C fragment reduce a row with masks 1 and 2).
//!
//! # Safety (all functions)
//! All 32 lanes of the warp execute the call together (the member mask is the full warp).

use core::arch::asm;

/// `shfl.sync.bfly.b32 d, v, lane_mask, 0x1f, 0xffffffff`: `v` of lane `lane ^ lane_mask`
/// (`lane_mask` < 32; the clamp 0x1f keeps the exchange inside the warp).
#[inline(always)]
pub unsafe fn shfl_xor_b32(v: u32, lane_mask: u32) -> u32 {
    let r: u32;
    // Not `pure`: the exchange is a warp-collective, which must not be moved into or out of
    // the (warp-uniform) control flow it is written in.
    asm!(
        "shfl.sync.bfly.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;",
        out(reg32) r, in(reg32) v, in(reg32) lane_mask,
        options(nomem, nostack)
    );
    r
}

/// [`shfl_xor_b32`] on the bits of an f32.
#[inline(always)]
pub unsafe fn shfl_xor_f32(v: f32, lane_mask: u32) -> f32 {
    f32::from_bits(shfl_xor_b32(v.to_bits(), lane_mask))
}
