//! Warp-wide loads of 8×8 16-bit matrices from shared memory into MMA fragments
//! (PTX ISA 9.7.9.27, `ldmatrix`, sm_75+).
//!
//! For `.xN`, lanes 8j..8j+7 supply the 8 row addresses of matrix j (each row 16 contiguous
//! bytes, 16-byte aligned); every lane receives one 32-bit register per matrix holding row
//! `lane / 4`, elements `2 * (lane % 4)` and `+1` (see `layout::ldmatrix_coord`). `.trans`
//! delivers the transposed matrix instead.
//!
//! # Safety (all functions)
//! Must be called by all 32 lanes of the warp together (`.sync.aligned`), with each
//! addressing lane's `row_addr` 16-byte aligned, inside the dynamic shared memory and holding
//! data made visible by a barrier.

use crate::shared::SmemAddr;
use core::arch::asm;

/// `ldmatrix.sync.aligned.m8n8.x1.shared.b16`: one matrix, addresses from lanes 0–7.
#[inline(always)]
pub unsafe fn ldmatrix_x1(row_addr: SmemAddr) -> u32 {
    let r: u32;
    asm!("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {{{0}}}, [{1}];",
        out(reg32) r, in(reg32) row_addr.0, options(nostack, readonly));
    r
}

/// `ldmatrix.sync.aligned.m8n8.x2.shared.b16`: two matrices, addresses from lanes 0–15.
#[inline(always)]
pub unsafe fn ldmatrix_x2(row_addr: SmemAddr) -> [u32; 2] {
    let (a, b): (u32, u32);
    asm!("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {{{0}, {1}}}, [{2}];",
        out(reg32) a, out(reg32) b, in(reg32) row_addr.0, options(nostack, readonly));
    [a, b]
}

/// `ldmatrix.sync.aligned.m8n8.x4.shared.b16`: four matrices, addresses from all lanes.
#[inline(always)]
pub unsafe fn ldmatrix_x4(row_addr: SmemAddr) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    asm!("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{0}, {1}, {2}, {3}}}, [{4}];",
        out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) row_addr.0,
        options(nostack, readonly));
    [a, b, c, d]
}

/// `ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16`: one transposed matrix.
#[inline(always)]
pub unsafe fn ldmatrix_x1_trans(row_addr: SmemAddr) -> u32 {
    let r: u32;
    asm!("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {{{0}}}, [{1}];",
        out(reg32) r, in(reg32) row_addr.0, options(nostack, readonly));
    r
}

/// `ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16`: two transposed matrices.
#[inline(always)]
pub unsafe fn ldmatrix_x2_trans(row_addr: SmemAddr) -> [u32; 2] {
    let (a, b): (u32, u32);
    asm!("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {{{0}, {1}}}, [{2}];",
        out(reg32) a, out(reg32) b, in(reg32) row_addr.0, options(nostack, readonly));
    [a, b]
}

/// `ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16`: four transposed matrices.
#[inline(always)]
pub unsafe fn ldmatrix_x4_trans(row_addr: SmemAddr) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    asm!("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{0}, {1}, {2}, {3}}}, [{4}];",
        out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) row_addr.0,
        options(nostack, readonly));
    [a, b, c, d]
}
