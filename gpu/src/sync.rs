//! Block-wide barrier.

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
