//! Split-K reduction: for every split unit (row tile × token tile, see [`super::tile::Epilogue`]
//! for the workspace layout), `Y = Σ_s slot_s`, summed in split order so the result is
//! bit-identical from run to run. Each warp then drops the cache lines it read from L2: the
//! partials are dead, and without the discard the L2 would write them back to HBM.

use crate::cache::discard_l2_line;
use crate::mma::MmaElement;
use crate::sync::bar_warp_sync;
use crate::thread::{block_dim_x, block_idx_x, lane_idx, thread_idx_x};

/// Slot loads in flight per thread.
const BATCH: usize = 4;

/// # Safety
/// Launched with `layout::REDUCE_THREADS` threads per block and `units · n_tile · rows /
/// REDUCE_THREADS` blocks (`rows` a multiple of 64, `n_tile` of 8, so this divides and every
/// warp reads whole 128-byte lines); `partial` (128-byte aligned) holds `units · splits ·
/// n_tile · rows` f32 written by the split blocks of the launch before, where
/// `units = (R - full) · token_tiles`; `y` is `n × ldy` (`ldy ≥ m`). The partials are
/// undefined afterwards.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn splitk_reduce<E: MmaElement>(
    partial: *const f32, y: *mut u16, ldy: u32, m: u32, n: u32, splits: u32, full: u32, rows: u32, n_tile: u32,
    token_tiles: u32,
) {
    let (m, n, splits, rows, n_tile) = (m as usize, n as usize, splits.max(1) as usize, rows as usize, n_tile as usize);
    let slot = n_tile * rows;
    let idx = block_idx_x() as usize * block_dim_x() as usize + thread_idx_x() as usize;
    let (unit, e) = (idx / slot, idx % slot);
    let first = partial.add(unit * splits * slot + e);
    let mut sum = *first;
    let mut s = 1;
    while s + BATCH <= splits {
        let mut v = [0.0f32; BATCH];
        unroll!(i in 0..BATCH => { v[i] = *first.add((s + i) * slot); });
        unroll!(i in 0..BATCH => { sum += v[i]; });
        s += BATCH;
    }
    while s < splits {
        sum += *first.add(s * slot);
        s += 1;
    }
    let (row_tile, token_tile) = (full as usize + unit / token_tiles as usize, unit % token_tiles as usize);
    let (gm, gn) = (row_tile * rows + e % rows, token_tile * n_tile + e / rows);
    if gm < m && gn < n {
        *y.add(gn * ldy as usize + gm) = E::from_f32(sum);
    }
    // The warp's 32 floats of each slot are one aligned line, and every lane has used its
    // values (the sum above): lane 0 drops the lines.
    bar_warp_sync();
    if lane_idx() == 0 {
        let mut s = 0;
        while s < splits {
            discard_l2_line(first.add(s * slot) as *const u8);
            s += 1;
        }
    }
}
