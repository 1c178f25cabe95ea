//! Asynchronous global → shared copies (PTX ISA 9.7.9.25, `cp.async`, sm_80+).
//!
//! A thread issues copies, groups them with [`commit_group`], and later waits with
//! [`wait_group`] until at most N of its groups are still in flight. The copies of *other*
//! threads become visible only after a barrier that follows the wait.

use crate::shared::SmemAddr;
use core::arch::asm;

/// `cp.async.cg.shared.global [dst], [src], 16;`: copies 16 bytes, bypassing L1.
///
/// # Safety
/// `src` must be a 16-byte aligned global address of 16 readable bytes; `dst` a 16-byte
/// aligned shared address inside the launch's dynamic shared memory that no one reads before
/// the matching wait + barrier.
#[inline(always)]
pub unsafe fn cp_async_16(dst: SmemAddr, src: *const u8) {
    asm!(
        "cp.async.cg.shared.global [{0}], [{1}], 16;",
        in(reg32) dst.0, in(reg64) src,
        options(nostack)
    );
}

/// `cp.async.cg.shared.global [dst], [src], 16, src_size;`: copies the first `src_size`
/// bytes (0..=16) and fills the rest of the 16 with zeros. With `src_size = 0` nothing is
/// read, which is how tiles are zero-padded past the edges of a matrix.
///
/// # Safety
/// As [`cp_async_16`], except only `src_size` bytes at `src` need to be readable; `src` must
/// still be a 16-byte aligned global address (pass the matrix base when `src_size == 0`).
#[inline(always)]
pub unsafe fn cp_async_16_zfill(dst: SmemAddr, src: *const u8, src_size: u32) {
    asm!(
        "cp.async.cg.shared.global [{0}], [{1}], 16, {2};",
        in(reg32) dst.0, in(reg64) src, in(reg32) src_size,
        options(nostack)
    );
}

/// `cp.async.cg.shared.global.L2::cache_hint [dst], [src], 16, policy;`: as
/// [`cp_async_16`], with an L2 eviction policy from [`crate::cache::l2_policy`] (a hint: it
/// changes what stays in L2, never the bytes copied).
///
/// # Safety
/// As [`cp_async_16`]; `policy` is a value `l2_policy` returned.
#[inline(always)]
pub unsafe fn cp_async_16_hint(dst: SmemAddr, src: *const u8, policy: u64) {
    asm!(
        "cp.async.cg.shared.global.L2::cache_hint [{0}], [{1}], 16, {2};",
        in(reg32) dst.0, in(reg64) src, in(reg64) policy,
        options(nostack)
    );
}

/// `cp.async.commit_group;`: closes the group of copies this thread issued since the last
/// commit (an empty group is allowed and completes at once).
#[inline(always)]
pub fn commit_group() {
    // SAFETY: no operands; only bookkeeping of this thread's copies.
    unsafe { asm!("cp.async.commit_group;", options(nostack)) };
}

/// `cp.async.wait_group N;`: waits until at most `N` of this thread's committed groups are
/// pending. Needs a following barrier before other threads' copies may be read.
#[inline(always)]
pub fn wait_group<const N: u32>() {
    // SAFETY: no memory operands; blocks this thread only.
    unsafe { asm!("cp.async.wait_group {n};", n = const N, options(nostack)) };
}
