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
//! The words stream through a shared-memory **ring** of `CHUNK_WORDS` words with 16-byte
//! `cp.async` copies. The unit of the pipeline is a *chunk*: a whole tile's list when it fits
//! the ring (density ≤ 50%: every tile of a pruned weight), else consecutive `CHUNK_WORDS`
//! pieces of it, so any density from 0 to 100% works (Flash-LLM stages a tile in registers
//! sized for 50% density and corrupts denser tiles). Chunks are variable-sized, so the
//! prefetch depth adapts to the density: as many chunks are in flight as the ring holds
//! (two tiles at 80%, the `STAGES - 1` tile limit of the X ring at 90%). Each chunk is one
//! `cp.async` group; the first chunk of a tile also brings the tile's X tile into a
//! `STAGES`-deep ring.
//!
//! Per chunk: wait for its group, barrier; scatter the chunk's words into the dense tile;
//! barrier; refill the ring (the chunk's words are free once every thread passed the
//! barrier). After a tile's last chunk, `ldmatrix` + `mma.sync` exactly as the dense kernel
//! does, and each warp then zeroes the rows it read (`tile::warp_zero_rows`; no other warp
//! reads them), so the tile is clean again when the next chunk's barrier lets the scatter
//! in — without an extra barrier or a per-word "unscatter". One dense tile is enough: the
//! first barrier of a step already waits for every warp's MMAs of the previous one, so a
//! second buffer would buy no overlap, and the 32 KiB it would take are what lets three
//! blocks share an SM (68–72 KiB of shared memory up to 16 tokens).
//!
//! # Thread mapping
//! `16/MT` warps, warp w owning W rows `16·MT·w ..` of the 256-row tile. Scatter: thread t
//! handles the 16-byte groups `t + threads·i` of a chunk, so a warp's 32 stores of one
//! instruction are one residue class mod 4 of an aligned 128-word block of the list; the
//! host's bank-aware reordering arranges each such set to hit distinct banks.
//!
//! Word and ring counters are `u32` (the host limits a weight to fewer than 2³² words), so
//! the per-chunk bookkeeping is 32-bit arithmetic, and the per-word loops run exactly as many
//! times as the chunk has groups for the thread (no predicated-off iterations).

use super::tile::{load_tile_async, warp_mma_tile, warp_zero_rows, Epilogue, WorkItem};
use crate::cp_async::{self, cp_async_16};
use crate::layout::{
    block_threads, CHUNK_WORDS, ROW_BYTES, SPARSE_TILE_ELEMS, SPARSE_TILE_M, SPMM_ROW_TILES, STAGES, TILE_BYTES,
    TILE_K,
};
use crate::mma::{FragC, MmaElement};
use crate::pipeline::wait_pending;
use crate::shared::{dynamic_smem_base, ld_shared_v4_b32, st_shared_b16, st_shared_v4_b32, SmemAddr};
use crate::sync::bar_sync;
use crate::thread::{block_idx_x, block_idx_y, thread_idx_x};

/// Bytes of the word ring.
pub const RING_BYTES: usize = CHUNK_WORDS * 4;
/// Bytes of one dense `SPARSE_TILE_M`×64 W tile in shared memory.
const DENSE_BYTES: usize = SPMM_ROW_TILES * TILE_BYTES;

/// Walks the tiles of one block's K range, reading each tile's end offset one tile ahead so
/// the load's latency is hidden behind a step.
struct TileCursor {
    /// Index of the current tile in `tile_offsets`.
    tile: usize,
    /// Last tile index of the range plus one.
    end_tile: usize,
    /// Word range of the current tile.
    start: u32,
    end: u32,
    /// End offset of the next tile (valid when there is one).
    next_end: u32,
}

impl TileCursor {
    /// # Safety
    /// `tile_offsets[first ..= end_tile]` are readable.
    #[inline(always)]
    unsafe fn new(tile_offsets: *const u32, first: usize, end_tile: usize) -> Self {
        let mut c = TileCursor { tile: first, end_tile, start: 0, end: 0, next_end: 0 };
        if first < end_tile {
            c.start = *tile_offsets.add(first);
            c.end = *tile_offsets.add(first + 1);
            if first + 1 < end_tile {
                c.next_end = *tile_offsets.add(first + 2);
            }
        }
        c
    }

    #[inline(always)]
    fn active(&self) -> bool {
        self.tile < self.end_tile
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        self.end - self.start
    }

    /// Chunks the current tile takes (at least one, so empty tiles still multiply X by zeros
    /// and Inf/NaN propagate as in dense math).
    #[inline(always)]
    fn chunks(&self) -> u32 {
        let len = self.len();
        if len == 0 { 1 } else { len.div_ceil(CHUNK_WORDS as u32) }
    }

    /// Words in chunk `c` of the current tile.
    #[inline(always)]
    fn chunk_len(&self, c: u32) -> u32 {
        let rest = self.len().saturating_sub(c * CHUNK_WORDS as u32);
        if rest < CHUNK_WORDS as u32 { rest } else { CHUNK_WORDS as u32 }
    }

    /// Moves to the next tile.
    ///
    /// # Safety
    /// As [`TileCursor::new`].
    #[inline(always)]
    unsafe fn advance(&mut self, tile_offsets: *const u32) {
        self.tile += 1;
        self.start = self.end;
        self.end = self.next_end;
        if self.tile + 1 < self.end_tile {
            self.next_end = *tile_offsets.add(self.tile + 2);
        }
    }
}

/// Shared address of ring word `word` (a multiple of 4; the counter wraps around the ring).
#[inline(always)]
fn ring_addr(ring: SmemAddr, word: u32) -> SmemAddr {
    SmemAddr(ring.0 + (word % CHUNK_WORDS as u32) * 4)
}

/// Copies `len` words (a multiple of 4) from `src` into the ring from word `at` on: thread t
/// copies the 16-byte groups `t, t + THREADS, …` (two per iteration).
#[inline(always)]
unsafe fn load_chunk_async<const THREADS: usize>(ring: SmemAddr, at: u32, src: *const u32, len: u32) {
    let step = 4 * THREADS as u32;
    let mut w = 4 * thread_idx_x();
    while w + step < len {
        cp_async_16(ring_addr(ring, at + w), src.add(w as usize) as *const u8);
        cp_async_16(ring_addr(ring, at + w + step), src.add((w + step) as usize) as *const u8);
        w += 2 * step;
    }
    if w < len {
        cp_async_16(ring_addr(ring, at + w), src.add(w as usize) as *const u8);
    }
}

/// Writes each word's value at its dense-tile position. Positions are reduced modulo the
/// tile (a power of two): the host validates them, the mask keeps even a corrupted word
/// inside this block's own tile.
#[inline(always)]
unsafe fn store_words(dense: SmemAddr, words: [u32; 4]) {
    unroll!(s in 0..4 => {
        let pos = (words[s] >> 16) % SPARSE_TILE_ELEMS as u32;
        st_shared_b16(SmemAddr(dense.0 + pos * 2), words[s] as u16);
    });
}

/// Scatters the chunk at ring word `at` (`len` words) into the dense tile: thread t takes the
/// 16-byte groups `t, t + THREADS, …` (two at a time, so their loads overlap).
#[inline(always)]
unsafe fn scatter_chunk<const THREADS: usize>(ring: SmemAddr, at: u32, len: u32, dense: SmemAddr) {
    let step = 4 * THREADS as u32;
    let mut w = 4 * thread_idx_x();
    while w + step < len {
        let a = ld_shared_v4_b32(ring_addr(ring, at + w));
        let b = ld_shared_v4_b32(ring_addr(ring, at + w + step));
        store_words(dense, a);
        store_words(dense, b);
        w += 2 * step;
    }
    if w < len {
        store_words(dense, ld_shared_v4_b32(ring_addr(ring, at + w)));
    }
}

/// Zeroes a whole dense `SPARSE_TILE_M`×64 tile.
#[inline(always)]
unsafe fn zero_tile<const THREADS: usize>(dense: SmemAddr) {
    let tid = thread_idx_x() as usize;
    unroll!(i in 0..DENSE_BYTES / 16 / THREADS => {
        st_shared_v4_b32(dense.offset((tid + i * THREADS) * 16), [0; 4]);
    });
}

/// # Safety
/// Launched with `layout::block_threads(SPMM_ROW_TILES, MT)` threads, grid
/// `(full + (R - full)·splits, ceil(n/(8·NT)), 1)` with `R = ceil(m/256)`, `full ≤ R`,
/// `splits ≥ 1`, and `layout::spmm_smem_bytes(NT)` bytes of dynamic shared memory.
/// `tile_offsets` / `words` form a Tiled-CSL matrix of `m × k` validated by the host
/// (offsets non-decreasing multiples of 4, fewer than 2³² words, positions inside the tile);
/// `x` is `n × ldx` (16-byte aligned, `ldx % 8 == 0`, `ldx ≥ k`, columns `k..ldx` zero); `y`
/// is `n × ldy` (`ldy ≥ m`); `partial` has `splits·n·(m - 256·full)` f32 when `splits > 1`
/// and `full < R`; `m, n, k ≥ 1`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn spmm_linear<E: MmaElement, const MT: usize, const NT: usize, const THREADS: usize>(
    tile_offsets: *const u32, words: *const u32, x: *const u16, ldx: u32, y: *mut u16,
    ldy: u32, partial: *mut f32, m: u32, n: u32, k: u32, full: u32, splits: u32,
) {
    const { assert!(THREADS == block_threads(SPMM_ROW_TILES, MT)) };
    const { assert!(CHUNK_WORDS.is_power_of_two()) };
    let (m, n, k, ldx) = (m as usize, n as usize, k as usize, ldx as usize);
    let tiles_k = k.div_ceil(TILE_K);
    let work = WorkItem::decode(block_idx_x() as usize, full as usize, splits as usize, tiles_k);
    let m0 = work.row_tile * SPARSE_TILE_M;
    let n0 = block_idx_y() as usize * NT * 8;
    let row_base = work.row_tile * tiles_k;
    let (first_tile, end_tile) = (row_base + work.kt_begin, row_base + work.kt_end);

    // Shared memory: dense W tile (256×64) | word ring (CHUNK_WORDS) | X tiles[STAGES]
    // (N_TILE×64). Tile i of the block's range (i = tile - first_tile) uses X slot i % STAGES.
    let smem = dynamic_smem_base();
    let dense = smem;
    let ring = smem.offset(DENSE_BYTES);
    let x_bytes = NT * 8 * ROW_BYTES;
    let x_tile = |tile: usize| smem.offset(DENSE_BYTES + RING_BYTES + ((tile - first_tile) % STAGES) * x_bytes);

    zero_tile::<THREADS>(dense);

    // Producer: the next chunk to issue is chunk `p_chunk` of tile `p.tile`; `issued` counts
    // the words put in the ring (mod 2³²) and `issued_chunks` the cp.async groups.
    // Consumer: chunk `c_chunk` of tile `c.tile`; `consumed` counts the words taken out.
    let mut p = TileCursor::new(tile_offsets, first_tile, end_tile);
    let mut c = TileCursor::new(tile_offsets, first_tile, end_tile);
    let (mut p_chunk, mut issued, mut issued_chunks) = (0u32, 0u32, 0u32);
    let (mut c_chunk, mut consumed, mut consumed_chunks) = (0u32, 0u32, 0u32);

    // Issues chunks while the ring has room and the X ring a free slot (tiles at most
    // STAGES - 1 ahead of `c_tile`, the tile whose MMAs come next). The chunk the consumer
    // needs next always fits: when it is not yet issued, the ring is empty.
    let refill = |p: &mut TileCursor, p_chunk: &mut u32, issued: &mut u32, issued_chunks: &mut u32, consumed: u32, c_tile: usize| {
        while p.active() && p.tile < c_tile + STAGES {
            let len = p.chunk_len(*p_chunk);
            if issued.wrapping_sub(consumed) + len > CHUNK_WORDS as u32 {
                break;
            }
            let src = words.add((p.start + *p_chunk * CHUNK_WORDS as u32) as usize);
            load_chunk_async::<THREADS>(ring, *issued, src, len);
            if *p_chunk == 0 {
                load_tile_async(x_tile(p.tile), NT * 8, THREADS, x, ldx, n, n0, k, (p.tile - row_base) * TILE_K);
            }
            cp_async::commit_group();
            *issued = issued.wrapping_add(len);
            *issued_chunks += 1;
            *p_chunk += 1;
            if *p_chunk == p.chunks() {
                p.advance(tile_offsets);
                *p_chunk = 0;
            }
        }
    };
    refill(&mut p, &mut p_chunk, &mut issued, &mut issued_chunks, consumed, first_tile);

    let mut acc = [[FragC::default(); NT]; MT]; // MT × NT × (16×8 f32)
    while c.active() {
        // The chunk's group is the oldest one we still need: all later ones may stay pending.
        wait_pending(issued_chunks - consumed_chunks - 1);
        bar_sync();
        let len = c.chunk_len(c_chunk);
        scatter_chunk::<THREADS>(ring, consumed, len, dense);
        consumed = consumed.wrapping_add(len);
        consumed_chunks += 1;
        c_chunk += 1;
        // Every thread is done with the chunk's ring words (and, after a tile's last chunk,
        // the dense tile is complete): the ring can take more.
        bar_sync();
        refill(&mut p, &mut p_chunk, &mut issued, &mut issued_chunks, consumed, c.tile);
        if c_chunk == c.chunks() {
            warp_mma_tile::<E, MT, NT>(dense, x_tile(c.tile), &mut acc);
            warp_zero_rows::<MT>(dense);
            c.advance(tile_offsets);
            c_chunk = 0;
        }
    }
    cp_async::wait_group::<0>();

    let split_m0 = full as usize * SPARSE_TILE_M;
    let out = Epilogue { y, ldy: ldy as usize, partial, split_m0, m, n, split: work.split, splits: work.splits };
    out.store::<E, MT, NT>(&acc, m0, n0);
}
