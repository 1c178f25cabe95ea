//! Block-wide and warp-wide barriers.

use core::arch::asm;

/// `bar.sync 0` (PTX ISA 9.7.13.4): waits until every thread of the block arrives, and orders
/// their shared-memory accesses before it against those after it.
///
/// This is the only place the crate emits a barrier (see rust-lang/rust#137086 on why
/// barriers should not be duplicated by the optimiser).
///
/// # Safety
/// Every thread of the block must reach the same call the same number of times (call it only
/// from block-uniform control flow), or the block deadlocks.
#[inline(always)]
pub unsafe fn bar_sync() {
    asm!("bar.sync 0;", options(nostack));
}

/// `bar.warp.sync 0xffffffff` (PTX ISA 9.7.13.5): waits until all 32 lanes of the warp arrive,
/// and orders their memory accesses before it against those after it (e.g. a warp's
/// `ldmatrix` reads of shared memory before its own stores to the same bytes).
///
/// # Safety
/// All 32 lanes of the warp must execute the same call (warp-uniform control flow).
#[inline(always)]
pub unsafe fn bar_warp_sync() {
    asm!("bar.warp.sync 0xffffffff;", options(nostack));
}
