//! Split-K reduction: for every split unit (row tile × token tile, see [`super::tile::Epilogue`]
//! for the workspace layout), `Y = Σ_s slot_s`, summed in split order so the result is
//! bit-identical from run to run. Each thread sums 4 consecutive rows (16-byte loads, up to
//! `BATCH` splits in flight); each warp then drops the cache lines it read from L2: the
//! partials are dead, and without the discard the L2 would write them back to HBM.

use crate::cache::discard_l2_line;
use crate::mma::MmaElement;
use crate::sync::bar_warp_sync;
use crate::thread::{block_dim_x, block_idx_x, lane_idx, thread_idx_x};

/// Slot loads in flight per thread.
const BATCH: usize = 8;

/// Four consecutive f32 of a slot, read with one 16-byte load.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct F32x4([f32; 4]);

/// # Safety
/// `p` is 16-byte aligned and points at 4 readable f32.
#[inline(always)]
unsafe fn load4(p: *const f32) -> [f32; 4] {
    (p as *const F32x4).read().0
}

/// # Safety
/// Launched with `layout::REDUCE_THREADS` threads per block and `units · n_tile · rows /
/// (4 · REDUCE_THREADS)` blocks (`rows` a multiple of 64, `n_tile` of 8, so this divides
/// and every warp reads whole 128-byte lines); `partial` (128-byte aligned) holds `units ·
/// splits · n_tile · rows` f32 written by the split blocks of the launch before, where
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
    let idx = 4 * (block_idx_x() as usize * block_dim_x() as usize + thread_idx_x() as usize);
    let (unit, e) = (idx / slot, idx % slot);
    let first = partial.add(unit * splits * slot + e);
    let mut sum = load4(first);
    let mut s = 1;
    while s < splits {
        let mut v = [[0.0f32; 4]; BATCH];
        unroll!(i in 0..BATCH => {
            if s + i < splits {
                v[i] = load4(first.add((s + i) * slot));
            }
        });
        unroll!(i in 0..BATCH => {
            if s + i < splits {
                unroll!(j in 0..4 => { sum[j] += v[i][j]; });
            }
        });
        s += BATCH;
    }
    let (row_tile, token_tile) = (full as usize + unit / token_tiles as usize, unit % token_tiles as usize);
    let (gm, gn) = (row_tile * rows + e % rows, token_tile * n_tile + e / rows);
    if gn < n {
        unroll!(j in 0..4 => {
            if gm + j < m {
                *y.add(gn * ldy as usize + gm + j) = E::from_f32(sum[j]);
            }
        });
    }
    // Every lane has used its values (the sums above); a line is 8 lanes' 16 bytes, and
    // lanes 0, 8, 16 and 24 drop one each per split.
    bar_warp_sync();
    if lane_idx() % 8 == 0 {
        let mut s = 0;
        while s < splits {
            discard_l2_line(first.add(s * slot) as *const u8);
            s += 1;
        }
    }
}
