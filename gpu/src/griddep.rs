//! Programmatic dependent launch (PTX ISA `griddepcontrol`, among the parallel
//! synchronization instructions; sm_90, PTX 7.8).
//!
//! A kernel launched with the programmatic-stream-serialization attribute may start while
//! the kernel before it on the stream is still running: its blocks are scheduled once
//! every block of the earlier grid has signalled [`launch_dependents`] (or exited). It must
//! call [`wait_prior_grids`] before touching anything that grid writes, or synchronise with
//! that grid's blocks otherwise (the SpMM's completion flags, [`crate::flag`]), and call it
//! before it exits. The host uses this only with the `sm90` build (on Hopper): for the
//! split-K reductions of the SpMM and the dense kernel, so a reduction's launch and block
//! start overlap the last blocks of the kernel before it (and the SpMM's reduction sums row
//! tiles while that kernel still runs); and, unless `SPARSE_TC_DEPENDENT_LAUNCH=0`, for
//! every other kernel too, which is why every entry point begins with [`wait_prior_grids`]
//! (most through [`begin_dependent`]): a decode step is hundreds of short kernels, and each
//! one's launch and block scheduling then overlaps the kernel before it.
//!
//! In the portable build both are no-ops: the host never launches a dependent grid with
//! it, so the stream orders the kernels as usual.

#[cfg(sm90)]
use core::arch::asm;

/// `griddepcontrol.launch_dependents`: lets the grid launched after this one on the stream
/// (if it was launched as a programmatic dependent) be scheduled once every block of this
/// grid has called it or exited. Says nothing about this grid's memory: the dependent
/// still waits for it with [`wait_prior_grids`].
///
/// # Safety
/// None beyond running in a kernel; it only affects scheduling.
#[inline(always)]
pub unsafe fn launch_dependents() {
    #[cfg(sm90)]
    asm!("griddepcontrol.launch_dependents;", options(nostack));
}

/// `griddepcontrol.wait`: waits until the grids this one depends on programmatically have
/// completed and their memory writes are visible. Returns at once when there are none.
///
/// # Safety
/// None beyond running in a kernel. A kernel the host may launch as a programmatic
/// dependent must call this in every thread before it reads or writes memory the earlier
/// grid writes, and before it exits (so that it cannot complete before the earlier grid).
#[inline(always)]
pub unsafe fn wait_prior_grids() {
    #[cfg(sm90)]
    asm!("griddepcontrol.wait;", options(nostack));
}

/// The start of a kernel that may be launched as a programmatic dependent and touches
/// memory only after it: [`wait_prior_grids`], then [`launch_dependents`], so the next
/// kernel's blocks may be scheduled (and wait) while this one runs, but only once this
/// grid's predecessor is complete — a dependent never overlaps more than one grid.
///
/// # Safety
/// None beyond running in a kernel; every thread of the block calls it first.
#[inline(always)]
pub unsafe fn begin_dependent() {
    wait_prior_grids();
    launch_dependents();
}
