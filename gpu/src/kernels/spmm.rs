//! Sparse `Y[N×M] = X[N×K] · W[M×K]ᵀ` with W in Tiled-CSL: Load-as-Sparse, Compute-as-Dense
//! (after Flash-LLM, Xia et al., VLDB 2024).
//!
//! # Format
//! W is cut into `SPARSE_TILE_M`×64 = 256×64 tiles (row-major over tiles). Tile t's nonzeros
//! are the 32-bit words `words[tile_offsets[t] .. tile_offsets[t+1]]`, each
//! `pos << 16 | value_bits`, where `pos` is the element's index in the *swizzled* shared tile
//! (`layout::swizzled_pos`). Lists are padded to 4 words by repeating a real word.
//!
//! # Pipeline
//! The unit of the `STAGES`-deep `cp.async` pipeline is a *chunk*: up to `CHUNK_WORDS` words
//! of one tile. A tile of `w` words takes `max(1, ceil(w / CHUNK_WORDS))` chunks, so any
//! density from 0 to 100% is handled (Flash-LLM stages a tile in registers sized for 50%
//! density and corrupts denser tiles). The first chunk of a tile also brings the tile's X
//! tile into a separate `STAGES`-deep ring. Per chunk, after the barrier:
//! 1. the dense buffer of the previous tile (its MMAs are finished: barrier) is cleared for
//!    reuse — by writing zeros back at the positions each thread scattered, when that tile
//!    was one chunk (the thread kept its words in registers), else by zeroing it whole;
//! 2. the producer issues the chunk `STAGES-1` ahead (global → shared, 16-byte `cp.async`);
//! 3. every thread scatters its words of the current chunk into the tile's dense buffer;
//! 4. after a tile's last chunk: barrier, then `ldmatrix` + `mma.sync` exactly as the dense
//!    kernel does.
//!
//! The words wait in shared memory rather than registers (Flash-LLM's choice), so the
//! prefetch depth (`STAGES` chunks) costs no registers and is the same for every density.
//!
//! # Thread mapping
//! `16/MT` warps, warp w owning W rows `16·MT·w ..` of the 256-row tile. Scatter: thread t
//! handles the 16-byte groups `t + threads·i` of a chunk, so a warp's 32 stores of one
//! instruction are one residue class mod 4 of an aligned 128-word block of the list; the
//! host's bank-aware reordering arranges each such set to hit distinct banks.

use super::tile::{load_tile_async, split_range, warp_mma_tile, Epilogue};
use crate::cp_async::{self, cp_async_16};
use crate::layout::{
    block_threads, CHUNK_WORDS, ROW_BYTES, SPARSE_TILE_ELEMS, SPARSE_TILE_M, SPMM_ROW_TILES, STAGES, TILE_BYTES,
    TILE_K,
};
use crate::mma::{FragC, MmaElement};
use crate::pipeline::Pipeline;
use crate::shared::{dynamic_smem_base, ld_shared_v4_b32, st_shared_b16, st_shared_v4_b32, SmemAddr};
use crate::sync::bar_sync;
use crate::thread::{block_idx_x, block_idx_y, block_idx_z, grid_dim_z, thread_idx_x};

/// Bytes of one chunk slot.
pub const CHUNK_BYTES: usize = CHUNK_WORDS * 4;
/// Bytes of one dense `SPARSE_TILE_M`×64 W tile in shared memory.
const DENSE_BYTES: usize = SPMM_ROW_TILES * TILE_BYTES;
/// Capacity for the 16-byte groups of one chunk a thread handles: 4 at 128 threads; sized
/// to `unroll!`'s limit so constant indices never exceed it (unused entries are dead code
/// and take no registers).
const MAX_GROUPS: usize = 8;


/// The word range of one tile.
#[derive(Clone, Copy)]
struct TileWords {
    start: usize,
    len: usize,
}

impl TileWords {
    #[inline(always)]
    unsafe fn read(tile_offsets: *const u32, tile: usize) -> Self {
        let start = *tile_offsets.add(tile) as usize;
        let end = *tile_offsets.add(tile + 1) as usize;
        TileWords { start, len: end - start }
    }

    /// Pipeline steps this tile takes (at least one, so empty tiles still multiply X by
    /// zeros and Inf/NaN propagate as in dense math).
    #[inline(always)]
    fn chunks(self) -> usize {
        if self.len == 0 { 1 } else { self.len.div_ceil(CHUNK_WORDS) }
    }

    /// Words in chunk `c`.
    #[inline(always)]
    fn chunk_len(self, c: usize) -> usize {
        let rest = self.len.saturating_sub(c * CHUNK_WORDS);
        if rest < CHUNK_WORDS { rest } else { CHUNK_WORDS }
    }
}

/// One thread's share of a chunk, kept in registers after the scatter so the same positions
/// can be zeroed again once the tile's MMAs are done.
struct Scattered {
    words: [[u32; 4]; MAX_GROUPS],
    len: usize,
}

/// Copies `len` words (a multiple of 4) from `src` into a chunk slot.
#[inline(always)]
unsafe fn load_chunk_async<const THREADS: usize>(slot: SmemAddr, src: *const u32, len: usize) {
    let tid = thread_idx_x() as usize;
    unroll!(i in 0..CHUNK_WORDS / 4 / THREADS => {
        let g = tid + i * THREADS;
        if 4 * g < len {
            cp_async_16(slot.offset(g * 16), src.add(4 * g) as *const u8);
        }
    });
}

/// Writes `value` (the word's own value, or 0) at the dense-tile position of each word.
/// Positions are reduced modulo the tile (a power of two): the host validates them, the mask
/// keeps even a corrupted word inside this block's own tile.
#[inline(always)]
unsafe fn store_words(dense: SmemAddr, words: [u32; 4], zero: bool) {
    unroll!(s in 0..4 => {
        let pos = (words[s] >> 16) as usize % SPARSE_TILE_ELEMS;
        st_shared_b16(dense.offset(pos * 2), if zero { 0 } else { words[s] as u16 });
    });
}

/// Scatters this thread's groups of a chunk slot (`len` words) into the dense tile and
/// returns them.
#[inline(always)]
unsafe fn scatter_chunk<const THREADS: usize>(slot: SmemAddr, len: usize, dense: SmemAddr) -> Scattered {
    let tid = thread_idx_x() as usize;
    let mut kept = Scattered { words: [[0; 4]; MAX_GROUPS], len };
    unroll!(i in 0..CHUNK_WORDS / 4 / THREADS => {
        let g = tid + i * THREADS;
        if 4 * g < len {
            kept.words[i] = ld_shared_v4_b32(slot.offset(g * 16));
            store_words(dense, kept.words[i], false);
        }
    });
    kept
}

/// Undoes [`scatter_chunk`]: zeros at the same positions.
#[inline(always)]
unsafe fn unscatter_chunk<const THREADS: usize>(kept: &Scattered, dense: SmemAddr) {
    let tid = thread_idx_x() as usize;
    unroll!(i in 0..CHUNK_WORDS / 4 / THREADS => {
        if 4 * (tid + i * THREADS) < kept.len {
            store_words(dense, kept.words[i], true);
        }
    });
}

/// Zeroes a whole dense `SPARSE_TILE_M`×64 tile.
#[inline(always)]
unsafe fn zero_tile<const THREADS: usize>(dense: SmemAddr) {
    let tid = thread_idx_x() as usize;
    let mut i = 0;
    while i < DENSE_BYTES / 16 / THREADS {
        st_shared_v4_b32(dense.offset((tid + i * THREADS) * 16), [0; 4]);
        i += 1;
    }
}

/// # Safety
/// Launched with `layout::block_threads(SPMM_ROW_TILES, MT)` threads, grid `(ceil(m/256), ceil(n/(8·NT)), splits)`,
/// `layout::spmm_smem_bytes(NT)` bytes of dynamic shared memory. `tile_offsets` / `words`
/// form a Tiled-CSL matrix of `m × k` validated by the host (offsets non-decreasing multiples
/// of 4, positions inside the matrix); `x` is `n × ldx` (16-byte aligned, `ldx % 8 == 0`,
/// `ldx ≥ k`, columns `k..ldx` zero); `y` is `n × ldy` (`ldy ≥ m`); `partial` has
/// `splits·n·m` f32 when `splits > 1`; `m, n, k ≥ 1`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn spmm_linear<E: MmaElement, const MT: usize, const NT: usize, const THREADS: usize>(
    tile_offsets: *const u32, words: *const u32, x: *const u16, ldx: u32, y: *mut u16,
    ldy: u32, partial: *mut f32, m: u32, n: u32, k: u32,
) {
    const { assert!(THREADS == block_threads(SPMM_ROW_TILES, MT) && CHUNK_WORDS / 4 / THREADS <= MAX_GROUPS) };
    let (m, n, k, ldx) = (m as usize, n as usize, k as usize, ldx as usize);
    let tile_row = block_idx_x() as usize;
    let m0 = tile_row * SPARSE_TILE_M;
    let n0 = block_idx_y() as usize * NT * 8;
    let (split, splits) = (block_idx_z() as usize, grid_dim_z() as usize);
    let tiles_k = k.div_ceil(TILE_K);
    let (kt_begin, kt_end) = split_range(tiles_k, split, splits);
    let tile = |kt: usize| TileWords::read(tile_offsets, tile_row * tiles_k + kt);

    // Shared memory: dense[2] (256×64) | chunk slots[STAGES] | X tiles[STAGES] (N_TILE×64)
    let smem = dynamic_smem_base();
    let dense = |kt: usize| smem.offset(((kt - kt_begin) % 2) * DENSE_BYTES);
    let chunk_slot = |step: usize| smem.offset(2 * DENSE_BYTES + Pipeline::<STAGES>::stage(step) * CHUNK_BYTES);
    let x_bytes = NT * 8 * ROW_BYTES;
    let x_tile = |kt: usize| {
        smem.offset(2 * DENSE_BYTES + STAGES * CHUNK_BYTES + ((kt - kt_begin) % STAGES) * x_bytes)
    };

    zero_tile::<THREADS>(dense(kt_begin));
    zero_tile::<THREADS>(dense(kt_begin + 1));

    // Producer cursor: the chunk `p_chunk` of tile `p_kt` is pipeline step `p_step`.
    let (mut p_kt, mut p_chunk, mut p_step) = (kt_begin, 0usize, 0usize);
    let mut issue_next = || {
        if p_kt < kt_end {
            let t = tile(p_kt);
            let src = words.add(t.start + p_chunk * CHUNK_WORDS);
            load_chunk_async::<THREADS>(chunk_slot(p_step), src, t.chunk_len(p_chunk));
            if p_chunk == 0 {
                load_tile_async(x_tile(p_kt), NT * 8, THREADS, x, ldx, n, n0, k, p_kt * TILE_K);
            }
            p_chunk += 1;
            if p_chunk == t.chunks() {
                p_kt += 1;
                p_chunk = 0;
            }
            p_step += 1;
        }
        Pipeline::<STAGES>::producer_commit();
    };

    let mut s = 0;
    while s < STAGES - 1 {
        issue_next();
        s += 1;
    }

    let mut acc = [[FragC::default(); NT]; MT]; // MT × NT × (16×8 f32)
    let (mut c_kt, mut c_chunk, mut c_step) = (kt_begin, 0usize, 0usize);
    // The dense buffer of the last finished tile still holds its values; cleared after the
    // next barrier. `kept` is this thread's share of that tile when it was a single chunk.
    let mut dirty: Option<(usize, bool)> = None; // (tile, single chunk)
    let mut kept = Scattered { words: [[0; 4]; MAX_GROUPS], len: 0 };
    while c_kt < kt_end {
        Pipeline::<STAGES>::consumer_wait();
        if let Some((kt, single)) = dirty.take() {
            if single {
                unscatter_chunk::<THREADS>(&kept, dense(kt));
            } else {
                zero_tile::<THREADS>(dense(kt));
            }
        }
        issue_next();
        let t = tile(c_kt);
        kept = scatter_chunk::<THREADS>(chunk_slot(c_step), t.chunk_len(c_chunk), dense(c_kt));
        c_step += 1;
        c_chunk += 1;
        if c_chunk == t.chunks() {
            bar_sync(); // the dense tile is complete
            warp_mma_tile::<E, MT, NT>(dense(c_kt), x_tile(c_kt), &mut acc);
            dirty = Some((c_kt, t.chunks() == 1));
            c_kt += 1;
            c_chunk = 0;
        }
    }
    cp_async::wait_group::<0>();

    let out = Epilogue { y, ldy: ldy as usize, partial, m, n, split, splits };
    out.store::<E, MT, NT>(&acc, m0, n0);
}
