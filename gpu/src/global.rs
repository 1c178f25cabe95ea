//! Global-memory operations beyond plain loads and stores: the atomic, fence and L2-only load
//! that let the last block of a split-K group reduce the partial sums itself.

use core::arch::asm;

/// `atom.global.add.u32` (PTX ISA 9.7.13.5): adds `v` to `*ptr` atomically (relaxed, gpu
/// scope) and returns the old value.
///
/// # Safety
/// `ptr` is a 4-byte aligned global address of a live `u32`.
#[inline(always)]
pub unsafe fn atom_add_u32(ptr: *mut u32, v: u32) -> u32 {
    let old: u32;
    asm!("atom.global.add.u32 {0}, [{1}], {2};", out(reg32) old, in(reg64) ptr, in(reg32) v, options(nostack));
    old
}

/// `fence.acq_rel.gpu` (PTX ISA 9.7.13.4, sm_70+): orders this thread's memory accesses
/// before the fence against those after it, for every observer on the GPU. Used as release
/// (before announcing written partials) and as acquire (before reading others' partials).
#[inline(always)]
pub fn fence_acq_rel_gpu() {
    // SAFETY: no operands; only orders memory accesses.
    unsafe { asm!("fence.acq_rel.gpu;", options(nostack)) };
}

/// `ld.global.cg.f32` (PTX ISA 9.7.9.8): loads through L2 only, never from a possibly stale
/// L1 line — for data other blocks wrote during this launch.
///
/// # Safety
/// `ptr` is a 4-byte aligned global address of a live `f32`.
#[inline(always)]
pub unsafe fn ld_global_cg_f32(ptr: *const f32) -> f32 {
    let v: f32;
    asm!("ld.global.cg.f32 {0}, [{1}];", out(reg32) v, in(reg64) ptr, options(nostack, readonly));
    v
}
