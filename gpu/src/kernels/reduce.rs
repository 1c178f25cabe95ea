//! Split-K reductions: `Y` = the sum of a row tile's partial-sum slots, in a fixed order so
//! the result is bit-identical from run to run. Each thread sums 4 consecutive rows (16-byte
//! loads, up to `BATCH` slots in flight); each warp then drops the cache lines it read from
//! L2: the partials are dead, and without the discard the L2 would write them back to HBM.
//! Slot layout: [`super::tile::Epilogue`].
//!
//! - [`reduce_tile`]: the dense kernel's [`super::tile::WorkItem`] schedule, inside the dense
//!   kernel: the split row tile's `splits` slots are consecutive, and the block that writes
//!   the last of them ([`last_to_arrive`]) sums them;
//! - [`streamk_reduce`]: the sparse kernel's [`super::tile::StreamRange`] schedule, a kernel
//!   of its own (a row tile's slots belong to the consecutive blocks whose ranges meet it).

use super::tile::StreamRange;
use crate::cache::discard_l2_line;
use crate::flag;
use crate::griddep::wait_prior_grids;
use crate::layout::{REDUCE_THREADS, SPARSE_TILE_M};
use crate::mma::MmaElement;
use crate::shared::{dynamic_smem_base, ld_shared_v2_b32, st_shared_v2_b32};
use crate::sync::{bar_sync, bar_warp_sync};
use crate::thread::{block_dim_x, block_idx_x, grid_dim_x, lane_idx, thread_idx_x};

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

/// `Σ_{i < count} at(i)` (4 floats), summed in order of `i`.
///
/// # Safety
/// `count ≥ 1`; every `at(i)` is a 16-byte aligned pointer to 4 readable f32.
#[inline(always)]
unsafe fn sum_slots(count: usize, at: impl Fn(usize) -> *const f32) -> [f32; 4] {
    let mut sum = load4(at(0));
    let mut s = 1;
    while s < count {
        let mut v = [[0.0f32; 4]; BATCH];
        unroll!(i in 0..BATCH => {
            if s + i < count {
                v[i] = load4(at(s + i));
            }
        });
        unroll!(i in 0..BATCH => {
            if s + i < count {
                unroll!(j in 0..4 => { sum[j] += v[i][j]; });
            }
        });
        s += BATCH;
    }
    sum
}

/// Writes rows `gm .. gm + 4` of token `gn` of `Y`, dropping those outside `m × n`.
///
/// # Safety
/// `y` is `n × ldy` with `ldy ≥ m`.
#[inline(always)]
unsafe fn store4<E: MmaElement>(y: *mut u16, ldy: usize, m: usize, n: usize, gm: usize, gn: usize, sum: [f32; 4]) {
    if gn < n {
        unroll!(j in 0..4 => {
            if gm + j < m {
                *y.add(gn * ldy + gm + j) = E::from_f32(sum[j]);
            }
        });
    }
}

/// Drops the lines of the warp's groups of `count` slots from L2: every lane has used its
/// values (the sum), a line is 8 lanes' 16 bytes, and lanes 0, 8, 16 and 24 drop one each.
///
/// # Safety
/// All 32 lanes call it; `at(i)` as in [`sum_slots`], the lane's group of slot i, in a slot
/// whose lines no one reads again.
#[inline(always)]
unsafe fn discard_slots(count: usize, at: impl Fn(usize) -> *const f32) {
    bar_warp_sync();
    if lane_idx() % 8 == 0 {
        let mut s = 0;
        while s < count {
            discard_l2_line(at(s) as *const u8);
            s += 1;
        }
    }
}

/// Whether this block is the last of `count` blocks to arrive at `counter` in this launch
/// ([`flag::arrive`]; the counter is back at 0 afterwards). Every thread calls it after its
/// block's writes that the last block will read; when it returns true, the writes of every
/// block that arrived before are visible to every thread of this one.
///
/// # Safety
/// Called by every thread of the block from block-uniform control flow, once per launch
/// and counter by each of the `count ≥ 1` blocks; `counter` is a 4-byte aligned global u32
/// that held 0 at the start of the launch; the first 8 bytes of the block's dynamic shared
/// memory hold nothing live (they carry the answer to the other threads).
#[inline(always)]
pub unsafe fn last_to_arrive(counter: *mut u32, count: usize) -> bool {
    let answer = dynamic_smem_base();
    let last = count as u32 - 1;
    // Every thread's writes, and its reads of shared memory, before the arrival.
    bar_sync();
    if thread_idx_x() == 0 {
        st_shared_v2_b32(answer, [u32::from(flag::arrive(counter, last) == last), 0]);
    }
    // The arrival (its acquire) and the answer before every thread's next access.
    bar_sync();
    ld_shared_v2_b32(answer)[0] != 0
}

/// The dense kernel's split-K reduction of one output tile (`n_tile` tokens from `n0` × `rows`
/// W rows from `m0`), by the block that arrived last ([`last_to_arrive`]): `Y` = the sum of
/// the tile's `splits` consecutive slots at `slots`, in slot order, so the result does not
/// depend on which block that was. Thread t sums the 4-float groups `t, t + threads, …` of
/// the slot.
///
/// # Safety
/// Called by every thread of a block of whole warps, `4 · threads` dividing `n_tile · rows`
/// (every warp then runs the same iterations and reads whole 128-byte lines); `rows` a
/// multiple of 4; `slots` (128-byte aligned) holds `splits ≥ 1` slots of `n_tile · rows` f32,
/// written and visible; `y` is `n × ldy` (`ldy ≥ m`). The slots are undefined afterwards.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn reduce_tile<E: MmaElement>(
    slots: *const f32, splits: usize, rows: usize, n_tile: usize, y: *mut u16, ldy: usize, m: usize, n: usize,
    m0: usize, n0: usize,
) {
    let slot = n_tile * rows;
    let mut e = 4 * thread_idx_x() as usize;
    while e < slot {
        let at = |s: usize| slots.add(s * slot + e);
        let sum = sum_slots(splits, at);
        store4::<E>(y, ldy, m, n, m0 + e % rows, n0 + e / rows, sum);
        discard_slots(splits, at);
        e += 4 * block_dim_x() as usize;
    }
}

/// Waits until blocks `first .. first + count` of `flags` hold `launch`: thread t watches
/// flags `t, t + threads, …`, then the block meets at a barrier (the acquire pattern of
/// [`crate::flag`]), so every thread may read what those blocks wrote before publishing.
///
/// # Safety
/// Called by every thread of the block with the same arguments; `flags[first .. first +
/// count]` are readable.
#[inline(always)]
unsafe fn wait_for_blocks(flags: *const u32, first: usize, count: usize, launch: u32) {
    let mut i = thread_idx_x() as usize;
    while i < count {
        while flag::acquire(flags.add(first + i)) != launch {
            flag::nanosleep(256);
        }
        i += block_dim_x() as usize;
    }
    bar_sync();
}

/// The sparse kernel's reduction: row tile r of token tile y gets the segments of blocks
/// `block_of(r·K) ..= block_of(r·K + K - 1)`, in block order; a row tile inside one block's
/// range was written to `Y` by that block and is skipped.
///
/// The output is cut into chunks of `4 · REDUCE_THREADS` floats (inside one row tile and
/// token tile); block j sums chunks `j, j + grid, …`, each as soon as the row tile's
/// contributors have published `launch` in their `flags` (one per SpMM block and token tile,
/// [`crate::flag`]). Launched as the SpMM's programmatic dependent, the blocks are scheduled
/// onto SMs as the SpMM's blocks leave them, so most row tiles are summed while the rest of
/// the SpMM still runs; a grid of at most one wave of resident blocks never leaves chunks for
/// a second wave that could only start once the SpMM is done. Every thread still waits for
/// the whole SpMM grid ([`wait_prior_grids`]) before it exits, so the reduction never
/// completes before the SpMM.
///
/// # Safety
/// Launched with `layout::REDUCE_THREADS` threads per block and any number of blocks
/// (`R · token_tiles · n_tile · 256 / (4 · REDUCE_THREADS)` chunks, `R = ceil(m/256)`,
/// `n_tile` a multiple of 8, `token_tiles = ceil(n / n_tile)`); `partial` (128-byte aligned)
/// holds `2 · blocks · token_tiles · n_tile · 256` f32 with the slots of the segments the
/// SpMM launch before wrote (same `m`, `k_tiles`, `blocks`, `flags` and `launch`); `flags`
/// holds `token_tiles · blocks` u32 that the SpMM sets to `launch` (none of which held
/// `launch` before it); `y` is `n × ldy` (`ldy ≥ m`). The partials are undefined
/// afterwards. It may be launched as a programmatic dependent of that SpMM launch
/// ([`crate::griddep`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn streamk_reduce<E: MmaElement>(
    partial: *const f32, y: *mut u16, ldy: u32, m: u32, n: u32, k_tiles: u32, blocks: u32, n_tile: u32,
    flags: *const u32, launch: u32,
) {
    let (m, n, k_tiles, n_tile) = (m as usize, n as usize, k_tiles.max(1) as usize, n_tile as usize);
    let slot = n_tile * SPARSE_TILE_M;
    let row_tiles = m.div_ceil(SPARSE_TILE_M);
    let range = StreamRange { tiles: row_tiles * k_tiles, blocks: blocks as usize };
    const CHUNK: usize = 4 * REDUCE_THREADS;
    let chunks = row_tiles * n.div_ceil(n_tile) * slot / CHUNK;
    let mut chunk = block_idx_x() as usize;
    while chunk < chunks {
        let idx = chunk * CHUNK + 4 * thread_idx_x() as usize;
        let (unit, e) = (idx / slot, idx % slot);
        let (token_tile, r) = (unit / row_tiles, unit % row_tiles);
        let first = range.block_of(r * k_tiles);
        let count = range.block_of(r * k_tiles + k_tiles - 1) + 1 - first;
        // A whole row tile (count 1) was written to Y by its block. Everything the barrier
        // in the wait depends on is uniform over the launch block (one chunk, one row tile).
        if count > 1 {
            wait_for_blocks(flags, token_tile * range.blocks + first, count, launch);
            // Block b's segment of row tile r is in its first slot when r is its first row
            // tile: for every contributor but the first, whose range may start earlier.
            let first_starts_before = range.start(first) < r * k_tiles;
            let at = |i: usize| {
                let last = usize::from(i == 0 && first_starts_before);
                partial.add((2 * (token_tile * range.blocks + first + i) + last) * slot + e)
            };
            let sum = sum_slots(count, at);
            let (gm, gn) = (r * SPARSE_TILE_M + e % SPARSE_TILE_M, token_tile * n_tile + e / SPARSE_TILE_M);
            store4::<E>(y, ldy as usize, m, n, gm, gn, sum);
            discard_slots(count, at);
        }
        chunk += grid_dim_x() as usize;
    }
    // Launched as the SpMM's programmatic dependent (sm90): not done before it is.
    wait_prior_grids();
}
