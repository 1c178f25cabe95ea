//! Sparse `Y[N×M] = X[N×K] · W[M×K]ᵀ` with W in Tiled-CSL: Load-as-Sparse, Compute-as-Dense
//! (after Flash-LLM, Xia et al., VLDB 2024).
//!
//! # Format
//! W is cut into `SPARSE_TILE_M`×64 = 256×64 tiles (row-major over tiles). Tile t's nonzeros are the 32-bit words
//! `words[tile_offsets[t] .. tile_offsets[t+1]]`, each `pos << 16 | value_bits`, where `pos`
//! is the element's index in the *swizzled* shared tile (`layout::swizzled_pos`). Lists are
//! padded to 4 words by repeating a real word.
//!
//! # Pipeline
//! The unit of the `STAGES`-deep `cp.async` pipeline is a *chunk*: up to `CHUNK_WORDS` words
//! of one tile. A tile of `w` words takes `max(1, ceil(w / CHUNK_WORDS))` chunks, so any
//! density from 0 to 100% is handled (Flash-LLM stages a tile in registers sized for 50%
//! density and corrupts denser tiles). The first chunk of a tile also brings the tile's X
//! tile into a separate `STAGES`-deep ring. Per chunk, after the barrier:
//! 1. the producer issues the chunk `STAGES-1` ahead (global → shared, 16-byte `cp.async`);
//! 2. every thread scatters its ≤ 16 words of the current chunk into the dense W tile;
//! 3. after a tile's last chunk: barrier, zero the *other* dense buffer (the next tile's),
//!    and run the same `ldmatrix` + `mma.sync` code as the dense kernel.
//!
//! Compared with Flash-LLM's register staging, the words wait in shared memory, so the
//! prefetch depth (`STAGES` chunks) does not cost registers and is the same for every density.
//!
//! # Thread mapping
//! `BLOCK_THREADS` = 512 threads (16 warps). Scatter: thread t handles the 16-byte groups
//! `t + 512·i` of a chunk, so a warp's 32 stores of one instruction are the words
//! `4·(32·(16i + w) + lane) + s`, i.e. one residue class mod 4 of an aligned 128-word block;
//! the host's bank-aware reordering arranges each such set to hit distinct banks. MMA: as the
//! dense kernel (warp w owns W rows `16w..16w+16` of the 256-row tile).

use super::tile::{load_tile_async, split_range, warp_mma_tile, Epilogue};
use crate::cp_async::{self, cp_async_16};
use crate::layout::{
    CHUNK_WORDS, ROW_BYTES, SPARSE_TILE_ELEMS, SPARSE_TILE_M, SPMM_ROW_TILES, STAGES, THREADS,
    TILE_BYTES, TILE_K,
};
use crate::mma::{FragC, MmaElement};
use crate::pipeline::Pipeline;
use crate::shared::{dynamic_smem_base, ld_shared_v4_b32, st_shared_b16, st_shared_v4_b32, SmemAddr};
use crate::sync::bar_sync;
use crate::thread::{block_idx_x, block_idx_y, block_idx_z, grid_dim_z, thread_idx_x};

/// Bytes of one chunk slot.
pub const CHUNK_BYTES: usize = CHUNK_WORDS * 4;
/// Threads per block: 16 warps, 16 rows of the 256-row tile each.
pub const BLOCK_THREADS: usize = SPMM_ROW_TILES * THREADS;
/// Bytes of one dense `SPARSE_TILE_M`×64 W tile in shared memory.
const DENSE_BYTES: usize = SPMM_ROW_TILES * TILE_BYTES;


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

/// Copies `len` words (a multiple of 4) from `src` into a chunk slot.
#[inline(always)]
unsafe fn load_chunk_async(slot: SmemAddr, src: *const u32, len: usize) {
    let tid = thread_idx_x() as usize;
    let mut i = 0;
    while i < CHUNK_WORDS / 4 / BLOCK_THREADS {
        let g = tid + i * BLOCK_THREADS;
        if 4 * g < len {
            cp_async_16(slot.offset(g * 16), src.add(4 * g) as *const u8);
        }
        i += 1;
    }
}

/// Writes the `len` words of a chunk slot into the dense tile at `dense`. Positions are
/// masked to the tile (`% SPARSE_TILE_ELEMS`, a power of two): the host validates them, the
/// mask keeps even a corrupted word inside this block's own tile.
#[inline(always)]
unsafe fn scatter_chunk(slot: SmemAddr, len: usize, dense: SmemAddr) {
    let tid = thread_idx_x() as usize;
    let mut i = 0;
    while i < CHUNK_WORDS / 4 / BLOCK_THREADS {
        let g = tid + i * BLOCK_THREADS;
        if 4 * g < len {
            let words = ld_shared_v4_b32(slot.offset(g * 16));
            let mut s = 0;
            while s < 4 {
                let pos = (words[s] >> 16) as usize % SPARSE_TILE_ELEMS;
                st_shared_b16(dense.offset(pos * 2), words[s] as u16);
                s += 1;
            }
        }
        i += 1;
    }
}

/// Zeroes a dense `SPARSE_TILE_M`×64 tile (each thread 4 × 16 bytes).
#[inline(always)]
unsafe fn zero_tile(dense: SmemAddr) {
    let tid = thread_idx_x() as usize;
    let mut i = 0;
    while i < DENSE_BYTES / 16 / BLOCK_THREADS {
        st_shared_v4_b32(dense.offset((tid + i * BLOCK_THREADS) * 16), [0; 4]);
        i += 1;
    }
}

/// # Safety
/// Launched with `BLOCK_THREADS` threads, grid `(ceil(m/256), ceil(n/(8·NT)), splits)`,
/// `layout::spmm_smem_bytes(NT)` bytes of dynamic shared memory. `tile_offsets` / `words` form a Tiled-CSL
/// matrix of `m × k` validated by the host (offsets non-decreasing multiples of 4, positions
/// inside the matrix); `x` is `n × ldx` (16-byte aligned, `ldx % 8 == 0`, `ldx ≥ k`, columns
/// `k..ldx` zero); `y` is `n × ldy` (`ldy ≥ m`); `partial` has `splits·n·m` f32 when
/// `splits > 1`; `m, n, k ≥ 1`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn spmm_linear<E: MmaElement, const NT: usize>(
    tile_offsets: *const u32, words: *const u32, x: *const u16, ldx: u32, y: *mut u16,
    ldy: u32, partial: *mut f32, m: u32, n: u32, k: u32,
) {
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

    zero_tile(dense(kt_begin));
    zero_tile(dense(kt_begin + 1));

    // Producer cursor: the chunk `p_chunk` of tile `p_kt` is pipeline step `p_step`.
    let (mut p_kt, mut p_chunk, mut p_step) = (kt_begin, 0usize, 0usize);
    let mut issue_next = || {
        if p_kt < kt_end {
            let t = tile(p_kt);
            let src = words.add(t.start + p_chunk * CHUNK_WORDS);
            load_chunk_async(chunk_slot(p_step), src, t.chunk_len(p_chunk));
            if p_chunk == 0 {
                load_tile_async(x_tile(p_kt), NT * 8, BLOCK_THREADS, x, ldx, n, n0, k, p_kt * TILE_K);
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

    let mut acc = [FragC::default(); NT]; // NT × (16×8 f32)
    let (mut c_kt, mut c_chunk, mut c_step) = (kt_begin, 0usize, 0usize);
    while c_kt < kt_end {
        Pipeline::<STAGES>::consumer_wait();
        issue_next();
        let t = tile(c_kt);
        scatter_chunk(chunk_slot(c_step), t.chunk_len(c_chunk), dense(c_kt));
        c_step += 1;
        c_chunk += 1;
        if c_chunk == t.chunks() {
            bar_sync(); // the dense tile is complete
            zero_tile(dense(c_kt + 1));
            warp_mma_tile::<E, NT>(dense(c_kt), x_tile(c_kt), &mut acc);
            c_kt += 1;
            c_chunk = 0;
        }
    }
    cp_async::wait_group::<0>();

    let out = Epilogue { y, ldy: ldy as usize, partial, m, n, split, splits };
    out.store::<E, NT>(&acc, m0, n0);
}
