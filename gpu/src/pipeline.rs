//! An N-stage shared-memory pipeline over `cp.async` (multi-buffering).
//!
//! Protocol, per block (every thread runs the same sequence, so group counts match):
//! 1. prologue: for stages 0..N-1, issue the copies of step s into `stage(s)`, then
//!    [`Pipeline::producer_commit`] (commit even when a thread issued nothing);
//! 2. for each step i: [`Pipeline::consumer_wait`] (step i's data is now visible to the whole
//!    block), issue step i+N-1 into `stage(i+N-1)` and commit, then compute on `stage(i)`.
//!
//! Step i+N-1 reuses the buffer of step i-1, which every thread finished reading before it
//! arrived at step i's barrier, so one barrier per step is enough.

use crate::cp_async;
use crate::sync::bar_sync;

/// A pipeline of `STAGES` buffers.
pub struct Pipeline<const STAGES: usize>;

impl<const STAGES: usize> Pipeline<STAGES> {
    /// Number of stages.
    pub const STAGES: usize = STAGES;

    /// Buffer index used by step `step`.
    #[inline(always)]
    pub const fn stage(step: usize) -> usize {
        step % STAGES
    }

    /// Closes the copies of one step (producer side).
    #[inline(always)]
    pub fn producer_commit() {
        cp_async::commit_group();
    }

    /// Waits until the oldest in-flight step has landed in shared memory and is visible to
    /// every thread of the block (consumer side): `cp.async.wait_group STAGES-2` + barrier.
    ///
    /// # Safety
    /// Block-uniform control flow (it contains a barrier).
    #[inline(always)]
    pub unsafe fn consumer_wait() {
        // STAGES-1 groups are committed ahead of the consumer; allowing STAGES-2 pending
        // leaves the oldest one complete.
        const { assert!(STAGES >= 2 && STAGES <= 6, "pipeline depth must be 2..=6") };
        match STAGES {
            2 => cp_async::wait_group::<0>(),
            3 => cp_async::wait_group::<1>(),
            4 => cp_async::wait_group::<2>(),
            5 => cp_async::wait_group::<3>(),
            _ => cp_async::wait_group::<4>(),
        }
        bar_sync();
    }
}

/// Waits until at most `pending` (0..=7) of this thread's committed `cp.async` groups are still
/// in flight, for pipelines whose groups are not one per step (a run-time count; the
/// instruction takes an immediate, so this selects among the eight forms). Counts above 7
/// wait for everything.
#[inline(always)]
pub fn wait_pending(pending: u32) {
    match pending {
        0 => cp_async::wait_group::<0>(),
        1 => cp_async::wait_group::<1>(),
        2 => cp_async::wait_group::<2>(),
        3 => cp_async::wait_group::<3>(),
        4 => cp_async::wait_group::<4>(),
        5 => cp_async::wait_group::<5>(),
        6 => cp_async::wait_group::<6>(),
        7 => cp_async::wait_group::<7>(),
        _ => cp_async::wait_group::<0>(),
    }
}
