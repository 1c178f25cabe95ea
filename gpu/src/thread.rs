//! Thread, block, warp and lane indices (PTX ISA 10, special registers `%tid`, `%ctaid`,
//! `%ntid`, `%nctaid`). Each wraps one `mov.u32` from a special register via the
//! `core::arch::nvptx` intrinsics, which LLVM knows the ranges of.

use core::arch::nvptx;

/// `%tid.x`: thread index inside the block.
#[inline(always)]
pub fn thread_idx_x() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_thread_idx_x() as u32 }
}

/// `%ctaid.x`: block index along x.
#[inline(always)]
pub fn block_idx_x() -> u32 {
    // SAFETY: as above.
    unsafe { nvptx::_block_idx_x() as u32 }
}

/// `%ctaid.y`: block index along y.
#[inline(always)]
pub fn block_idx_y() -> u32 {
    // SAFETY: as above.
    unsafe { nvptx::_block_idx_y() as u32 }
}

/// `%ctaid.z`: block index along z.
#[inline(always)]
pub fn block_idx_z() -> u32 {
    // SAFETY: as above.
    unsafe { nvptx::_block_idx_z() as u32 }
}

/// `%ntid.x`: threads per block along x.
#[inline(always)]
pub fn block_dim_x() -> u32 {
    // SAFETY: as above.
    unsafe { nvptx::_block_dim_x() as u32 }
}

/// `%nctaid.x`: blocks in the grid along x.
#[inline(always)]
pub fn grid_dim_x() -> u32 {
    // SAFETY: as above.
    unsafe { nvptx::_grid_dim_x() as u32 }
}

/// `%nctaid.y`: blocks in the grid along y.
#[inline(always)]
pub fn grid_dim_y() -> u32 {
    // SAFETY: as above.
    unsafe { nvptx::_grid_dim_y() as u32 }
}

/// Warp index inside the block (`%tid.x / 32`; blocks here are one-dimensional).
#[inline(always)]
pub fn warp_idx() -> u32 {
    thread_idx_x() / 32
}

/// Lane inside the warp (`%tid.x % 32`).
#[inline(always)]
pub fn lane_idx() -> u32 {
    thread_idx_x() % 32
}
