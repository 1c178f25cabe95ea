//! Completion flags between blocks of different grids, and arrival counters between blocks of
//! one grid (PTX ISA 8, memory consistency model: release and acquire patterns at `.gpu`
//! scope; 9.7.13.9 `ld`/`st` with `.acquire` / `.release`, sm_70+; 9.7.13.5 `atom` with
//! `.acq_rel`, sm_70+; 9.7.19.2 `nanosleep`, sm_70+).
//!
//! The SpMM's blocks each publish "my partial sums are written" with one release store of a
//! per-launch number, and the split-K reduction's blocks wait for the flags of exactly the
//! blocks they read from (acquire loads), so a row tile is summed as soon as its own
//! contributors are done instead of after the whole SpMM grid (`host/src/linear.rs` gives
//! every launch a new number, so a flag left from an earlier launch never matches).
//!
//! The pattern on both sides is the one CUDA's grid-wide barriers use: the block's threads
//! meet at `bar.sync`, then one thread releases (writer) or acquires and then meets the
//! others at `bar.sync` (reader). Causality order in the PTX model is transitive through the
//! barrier, so every thread's stores before the writer's barrier happen before every
//! thread's loads after the reader's barrier.

use core::arch::asm;

/// `st.release.gpu.global.u32 [flag], value;`: a store that no earlier memory access of this
/// thread (nor, through a preceding `bar.sync`, of its block) can be observed after, by a
/// thread of any block on the device that reads `value` with [`acquire`].
///
/// # Safety
/// `flag` is a 4-byte aligned, writable global address.
#[inline(always)]
pub unsafe fn release(flag: *mut u32, value: u32) {
    asm!("st.release.gpu.global.u32 [{0}], {1};", in(reg64) flag, in(reg32) value, options(nostack));
}

/// `ld.acquire.gpu.global.u32`: reads `flag`; when it returns the value of a [`release`],
/// every access that release orders is visible to this thread's later loads (and, through a
/// following `bar.sync`, to its block's).
///
/// # Safety
/// `flag` is a 4-byte aligned, readable global address.
#[inline(always)]
pub unsafe fn acquire(flag: *const u32) -> u32 {
    let v: u32;
    asm!("ld.acquire.gpu.global.u32 {0}, [{1}];", out(reg32) v, in(reg64) flag, options(nostack));
    v
}

/// `atom.acq_rel.gpu.global.inc.u32 old, [counter], last;`: counts one arrival and returns
/// the count before it, wrapping to 0 after `last` (`counter ← old ≥ last ? 0 : old + 1`).
/// The dense kernel's split blocks of one output tile each arrive once per launch at a
/// counter that starts at 0: the one that reads `last` arrived last, and its increment put the
/// counter back to 0 for the next launch. Release and acquire at once: everything the earlier
/// arrivals' blocks wrote before their barrier and arrival is visible to the last one's block
/// after its arrival and a barrier (the pattern of [`release`] and [`acquire`]).
///
/// # Safety
/// `counter` is a 4-byte aligned, writable global address.
#[inline(always)]
pub unsafe fn arrive(counter: *mut u32, last: u32) -> u32 {
    let old: u32;
    asm!("atom.acq_rel.gpu.global.inc.u32 {0}, [{1}], {2};", out(reg32) old, in(reg64) counter, in(reg32) last, options(nostack));
    old
}

/// `nanosleep.u32 ns;`: suspends the thread for about `ns` nanoseconds (at most 1 ms), so a
/// waiting thread leaves the SM's issue slots to the blocks it waits for.
///
/// # Safety
/// None beyond running in a kernel.
#[inline(always)]
pub unsafe fn nanosleep(ns: u32) {
    asm!("nanosleep.u32 {0};", in(reg32) ns, options(nostack));
}
