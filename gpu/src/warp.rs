//! Register exchange between the lanes of a warp: `shfl.sync` (PTX ISA 9.7.9.6, Data Movement
//! and Conversion Instructions: shfl.sync; PTX 6.0+, sm_30+), the building block of the
//! row-wise kernels' warp reductions and scans (`kernels::rowwise`).
//!
//! Every wrapper exchanges one 32-bit register among all 32 lanes (membermask `0xffffffff`):
//! each lane must execute the same call, in warp-uniform control flow, or the warp deadlocks
//! or reads undefined values. The `asm!` blocks are not `pure`, so the compiler neither drops
//! nor hoists them into lane-dependent branches.

use core::arch::asm;

/// `shfl.sync.bfly.b32 d, v, lane_mask, 0x1f, 0xffffffff`: the value of lane
/// `lane ^ lane_mask` (a butterfly step; `lane_mask` < 32).
///
/// # Safety
/// All 32 lanes of the warp execute the same call (warp-uniform control flow).
#[inline(always)]
pub unsafe fn shfl_bfly(v: u32, lane_mask: u32) -> u32 {
    let r: u32;
    asm!(
        "shfl.sync.bfly.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;",
        out(reg32) r, in(reg32) v, in(reg32) lane_mask,
        options(nomem, nostack)
    );
    r
}

/// `shfl.sync.up.b32 d, v, delta, 0x0, 0xffffffff`: the value of lane `lane - delta`, or the
/// lane's own value for lanes below `delta` (a scan step; `delta` < 32).
///
/// # Safety
/// All 32 lanes of the warp execute the same call (warp-uniform control flow).
#[inline(always)]
pub unsafe fn shfl_up(v: u32, delta: u32) -> u32 {
    let r: u32;
    asm!(
        "shfl.sync.up.b32 {0}, {1}, {2}, 0x0, 0xffffffff;",
        out(reg32) r, in(reg32) v, in(reg32) delta,
        options(nomem, nostack)
    );
    r
}

/// [`shfl_bfly`] on the bits of an f32 (no instruction of its own).
///
/// # Safety
/// As [`shfl_bfly`].
#[inline(always)]
pub unsafe fn shfl_bfly_f32(v: f32, lane_mask: u32) -> f32 {
    f32::from_bits(shfl_bfly(v.to_bits(), lane_mask))
}
