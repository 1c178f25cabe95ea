//! L2 cache control (PTX ISA 9.7.9.13 `discard`, 9.7.9.15 `prefetch`, 9.7.9.18 `createpolicy`;
//! sm_80+, PTX 7.4).
//!
//! The SpMM streams each weight word exactly once, while the split-K partial sums written by
//! the same kernel are read again by the reduction right after. Marking the weight copies
//! *evict first* lets the partials stay in L2 instead of being pushed out to HBM by bytes
//! that will never be read again, and discarding the partials once they are summed saves
//! writing them back at all. The dense kernel prefetches its first weight tiles into L2
//! while it waits for the kernel before it (`griddep`).

use core::arch::asm;

/// An L2 cache-eviction policy for [`crate::cp_async::cp_async_16_hint`]: the opaque 64-bit
/// value `createpolicy.fractional` makes, covering every access it is attached to
/// (`fraction = 1.0`): `evict_first` when `first`, else `evict_normal` (what an access
/// without a hint gets).
#[inline(always)]
pub fn l2_policy(first: bool) -> u64 {
    let policy: u64;
    // SAFETY: creates a policy value in a register; touches no memory.
    unsafe {
        if first {
            asm!("createpolicy.fractional.L2::evict_first.b64 {0}, 1.0;", out(reg64) policy, options(pure, nomem, nostack));
        } else {
            asm!("createpolicy.fractional.L2::evict_normal.b64 {0}, 1.0;", out(reg64) policy, options(pure, nomem, nostack));
        }
    }
    policy
}

/// `discard.global.L2 [line], 128;`: drops the 128-byte L2 line at `line` without writing
/// it back; its contents become undefined.
///
/// # Safety
/// `line` is a 128-byte aligned global address of 128 bytes of an allocation that no one
/// reads again before writing it anew, and every access to it that should take effect has
/// completed (e.g. the values read from it were already used).
#[inline(always)]
pub unsafe fn discard_l2_line(line: *const u8) {
    asm!("discard.global.L2 [{0}], 128;", in(reg64) line, options(nostack));
}

/// `prefetch.global.L2 [line];`: brings the L2 line holding `line` in from memory, a hint
/// that changes no value: L2 is where the GPU keeps global memory coherent, so a later
/// write by any kernel (or copy) updates the prefetched line, and a read after that write
/// sees it.
///
/// # Safety
/// `line` is a global address inside a live allocation.
#[inline(always)]
pub unsafe fn prefetch_l2(line: *const u8) {
    asm!("prefetch.global.L2 [{0}];", in(reg64) line, options(nostack, readonly));
}
