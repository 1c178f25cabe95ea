//! Sparse `Y[N×M] = X[N×K] · W[M×K]ᵀ` with W in Tiled-CSL: Load-as-Sparse, Compute-as-Dense
//! (after Flash-LLM, Xia et al., VLDB 2024).
//!
//! # Format
//! W is cut into `SPARSE_TILE_M`×64 = 256×64 tiles (row-major over tiles). Tile t's nonzeros
//! are the 32-bit words `words[tile_offsets[t] .. tile_offsets[t+1]]`, each
//! `pos << 16 | value_bits`, where `pos` is the element's index in the *fragment-native*
//! shared tile (`layout::frag_pos`: each 16×16 block is 512 bytes, two 256-byte halves of 8
//! rows in which every lane's 8 bytes are its `mma` B fragment of those rows, and half of
//! its A fragment of the 16). Lists are padded by repeating a real word, to a multiple of 32
//! words by the packer (128 bytes: each list starts on a cache line); any multiple of 4 works.
//!
//! # Pipeline
//! The words stream through a shared-memory **ring** of `ring_words` (a launch parameter:
//! the host sizes it per weight and token count so that a typical tile fits and as many
//! blocks as possible share an SM) with 16-byte `cp.async` copies. The unit of the pipeline
//! is a *chunk*: a whole tile's list when it fits the ring, else consecutive ring-sized
//! pieces of it, so any density from 0 to 100% works (Flash-LLM stages a tile in registers
//! sized for 50% density and corrupts denser tiles). Chunks are variable-sized, so the
//! prefetch depth adapts to the density: as many chunks are in flight as the ring holds, up
//! to the tile limit of the X ring (`layout::spmm_x_slots`). Each chunk is one `cp.async`
//! group; the first chunk of a tile also brings the tile's X tile into that ring. The words
//! are read with an L2 evict-first policy (read once; the split-K partials stay in L2).
//!
//! Per chunk: wait for its group, barrier; scatter the chunk's words into the dense tile;
//! barrier; refill the ring (the chunk's words are free once every thread passed the
//! barrier). After a tile's last chunk, each warp multiplies its rows of the tile by the X
//! tile with `mma.sync`:
//! - at 8 tokens, W is the A operand: each A fragment is two 8-byte loads per lane
//!   (`tile::warp_mma_frag_tile`), X gives B fragments with `ldmatrix` as in the dense
//!   kernel;
//! - from 16 tokens on (but at 64 in the portable build), W is the **B** operand
//!   (`tile::warp_mma_frag_tile_w_as_b`): X gives the A fragments of its 16-token m-tiles,
//!   each 8-row half of a W block one B fragment, a single 8-byte load per lane. Same
//!   shared-memory bytes, but see the exchange below.
//!
//! The tile must be all zeros again before the next scatter; one of three ways:
//! - in the `sm90` build (H100), the W loads are 8-byte exchanges with zeros
//!   (`atom.shared.exch.b64`), which on the H100 cost one shared-memory pass, like a store
//!   alone: the clear comes with the read. With W as B, each exchange writes exactly the
//!   registers the MMAs read; the 16-byte exchange of an A fragment made `ptxas` copy every
//!   fragment, which at 32 and 64 tokens cost more than it saved (NOTES items 34–36);
//! - else (the portable build) a tile of ≤ 12.5% density up to 16 tokens keeps each
//!   thread's words in registers and writes zeros back at their positions after the next
//!   barrier, followed by one more barrier: at 90% sparsity that is a third of the
//!   shared-memory stores of zeroing;
//! - else each warp zeroes the rows it read (`tile::warp_zero_rows`; no other warp reads
//!   them), so the tile is clean when the next chunk's barrier lets the scatter in, with no
//!   extra barrier.
//!
//! One dense tile is enough: the first barrier of a step already waits for every warp's
//! MMAs of the previous one, so a second buffer would buy no overlap, and the 32 KiB it would
//! take are what lets three or four blocks share an SM.
//!
//! # Thread mapping
//! `16/MT` warps, warp w owning W rows `16·MT·w ..` of the 256-row tile. Scatter: thread t
//! handles the 16-byte groups `t + threads·i` of a chunk, so a warp's 32 stores of one
//! instruction are one residue class mod 4 of an aligned 128-word block of the list; the
//! host's bank-aware reordering arranges each such set to hit distinct banks.
//!
//! Word offsets and ring positions are `u32` (the host limits a weight to fewer than 2³²
//! words), so the per-chunk bookkeeping is 32-bit arithmetic, and the copy and scatter loops
//! run exactly as many times as the chunk has groups for the thread (only the register-kept
//! path has a fixed, predicated count of four).

use super::tile::{
    load_tile_async, warp_mma_frag_tile, warp_mma_frag_tile_w_as_b, warp_zero_rows, Epilogue, StreamRange,
};
use crate::cache::l2_policy;
use crate::cp_async::{self, cp_async_16_hint};
use crate::flag;
use crate::griddep::begin_dependent;
use crate::layout::{
    block_threads, spmm_x_slots, ROW_BYTES, SPARSE_TILE_ELEMS, SPARSE_TILE_M, SPMM_ROW_TILES, TILE_BYTES,
    TILE_K,
};
use crate::mma::{FragC, MmaElement};
use crate::pipeline::wait_pending;
use crate::shared::{dynamic_smem_base, ld_shared_v4_b32, st_shared_b16, SmemAddr};
use crate::sync::bar_sync;
use crate::thread::{block_idx_x, block_idx_y, thread_idx_x};

/// Bytes of one dense `SPARSE_TILE_M`×64 W tile in shared memory.
const DENSE_BYTES: usize = SPMM_ROW_TILES * TILE_BYTES;

/// Walks the tiles of one block's range, reading each tile's end offset one tile ahead so
/// the load's latency is hidden behind a step, and tracking the tile's position along K
/// without a division per tile.
struct TileCursor {
    /// Index of the current tile in `tile_offsets`.
    tile: usize,
    /// Its K index inside its row tile (`tile % tiles_k`).
    kt: u32,
    /// K tiles per row tile.
    tiles_k: u32,
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
    /// `tile_offsets[first ..= end_tile]` are readable; `tiles_k ≥ 1`.
    #[inline(always)]
    unsafe fn new(tile_offsets: *const u32, first: usize, end_tile: usize, tiles_k: u32) -> Self {
        let kt = (first % tiles_k as usize) as u32;
        let mut c = TileCursor { tile: first, kt, tiles_k, end_tile, start: 0, end: 0, next_end: 0 };
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

    /// Whether chunk `c` is the last of the chunks of at most `ring` words the current tile
    /// takes (`(c + 1)·ring ≥ len`; an empty tile is one empty chunk, so that it still
    /// multiplies X by zeros and Inf/NaN propagate as in dense math). A multiplication, not
    /// `len.div_ceil(ring)`: a 32-bit division by the run-time ring is some 30 dependent
    /// instructions, and this test runs twice per chunk. No overflow: a validated tile has at
    /// most 16384 + 31 words (see [`spmm_linear`]) and `c·ring ≤ len`, so `(c + 1)·ring` stays
    /// far below 2³².
    #[inline(always)]
    fn is_last_chunk(&self, c: u32, ring: u32) -> bool {
        (c + 1) * ring >= self.len()
    }

    /// Words in chunk `c` of the current tile.
    #[inline(always)]
    fn chunk_len(&self, c: u32, ring: u32) -> u32 {
        let rest = self.len().saturating_sub(c * ring);
        if rest < ring { rest } else { ring }
    }

    /// Moves to the next tile.
    ///
    /// # Safety
    /// As [`TileCursor::new`].
    #[inline(always)]
    unsafe fn advance(&mut self, tile_offsets: *const u32) {
        self.tile += 1;
        self.kt += 1;
        if self.kt == self.tiles_k {
            self.kt = 0;
        }
        self.start = self.end;
        self.end = self.next_end;
        if self.tile + 1 < self.end_tile {
            self.next_end = *tile_offsets.add(self.tile + 2);
        }
    }
}

/// The shared-memory word ring: `words` 32-bit words from `base` on. Positions are kept in
/// `0..words`; a chunk may wrap around the end (its 16-byte groups never straddle it, as
/// chunks and the ring are multiples of 4 words).
#[derive(Clone, Copy)]
struct Ring {
    base: SmemAddr,
    words: u32,
}

impl Ring {
    /// Position `at + w` wrapped into the ring (`at < words`, `w < words`).
    #[inline(always)]
    fn wrap(self, at: u32, w: u32) -> u32 {
        let p = at + w;
        if p >= self.words { p - self.words } else { p }
    }

    /// Shared address of the 16-byte group at position `at + w`.
    #[inline(always)]
    fn addr(self, at: u32, w: u32) -> SmemAddr {
        SmemAddr(self.base.0 + self.wrap(at, w) * 4)
    }
}

/// Copies `len` words (a multiple of 4) from `src` into the ring from position `at` on, with
/// the L2 policy `policy`: thread t copies the 16-byte groups `t, t + THREADS, …` (two per
/// iteration).
#[inline(always)]
unsafe fn load_chunk_async<const THREADS: usize>(ring: Ring, at: u32, src: *const u32, len: u32, policy: u64) {
    let step = 4 * THREADS as u32;
    let mut w = 4 * thread_idx_x();
    while w + step < len {
        cp_async_16_hint(ring.addr(at, w), src.add(w as usize) as *const u8, policy);
        cp_async_16_hint(ring.addr(at, w + step), src.add((w + step) as usize) as *const u8, policy);
        w += 2 * step;
    }
    if w < len {
        cp_async_16_hint(ring.addr(at, w), src.add(w as usize) as *const u8, policy);
    }
}

/// Writes each word's value (or 0, to clear) at its dense-tile position. Positions are
/// reduced modulo the tile (a power of two): the host validates them, the mask keeps even a
/// corrupted word inside this block's own tile.
#[inline(always)]
unsafe fn store_words(dense: SmemAddr, words: [u32; 4], clear: bool) {
    unroll!(s in 0..4 => {
        let pos = (words[s] >> 16) % SPARSE_TILE_ELEMS as u32;
        st_shared_b16(SmemAddr(dense.0 + pos * 2), if clear { 0 } else { words[s] as u16 });
    });
}

/// 16-byte groups per thread up to which a tile's words stay in registers after the scatter
/// (2048 words at 128 threads: tiles of ≤ 12.5% density), so the tile is cleared by writing
/// zeros back at the same positions instead of zeroing all of it.
const KEEP_GROUPS: usize = 4;

/// One thread's groups of a kept tile.
type Kept = [[u32; 4]; KEEP_GROUPS];

/// Scatters a tile of `len ≤ 16·THREADS` words at ring position `at` and returns this
/// thread's groups of it.
#[inline(always)]
unsafe fn scatter_keep<const THREADS: usize>(ring: Ring, at: u32, len: u32, dense: SmemAddr) -> Kept {
    let tid = thread_idx_x();
    let mut kept = [[0; 4]; KEEP_GROUPS];
    unroll!(i in 0..KEEP_GROUPS => {
        let w = 4 * (tid + (i * THREADS) as u32);
        if w < len {
            kept[i] = ld_shared_v4_b32(ring.addr(at, w));
            store_words(dense, kept[i], false);
        }
    });
    kept
}

/// Undoes [`scatter_keep`]: zeros at the same positions.
#[inline(always)]
unsafe fn unscatter<const THREADS: usize>(kept: &Kept, len: u32, dense: SmemAddr) {
    let tid = thread_idx_x();
    unroll!(i in 0..KEEP_GROUPS => {
        if 4 * (tid + (i * THREADS) as u32) < len {
            store_words(dense, kept[i], true);
        }
    });
}

/// Scatters the chunk at ring position `at` (`len` words) into the dense tile: thread t
/// takes the 16-byte groups `t, t + THREADS, …` (two at a time, so their loads overlap).
#[inline(always)]
unsafe fn scatter_chunk<const THREADS: usize>(ring: Ring, at: u32, len: u32, dense: SmemAddr) {
    let step = 4 * THREADS as u32;
    let mut w = 4 * thread_idx_x();
    while w + step < len {
        let a = ld_shared_v4_b32(ring.addr(at, w));
        let b = ld_shared_v4_b32(ring.addr(at, w + step));
        store_words(dense, a, false);
        store_words(dense, b, false);
        w += 2 * step;
    }
    if w < len {
        store_words(dense, ld_shared_v4_b32(ring.addr(at, w)), false);
    }
}

/// # Safety
/// Launched with `layout::block_threads(SPMM_ROW_TILES, MT)` threads, grid
/// `(blocks, ceil(n/(8·NT)), 1)` with `R ≤ blocks ≤ R·K` (`R = ceil(m/256)`,
/// `K = ceil(k/64)`; the stream-K schedule `tile::StreamRange`: a range is then at most K
/// tiles long, so it meets at most two row tiles), and
/// `layout::spmm_smem_bytes(NT, ring_words)` bytes of dynamic shared memory, `ring_words` a
/// positive multiple of 128.
/// `tile_offsets` / `words` form a Tiled-CSL matrix of `m × k` validated by the host
/// (offsets non-decreasing multiples of 4, fewer than 2³² words, positions inside the tile,
/// each once per tile but for fewer than 32 padding duplicates: at most 16384 + 31 words);
/// `x` is `n × ldx` (16-byte aligned, `ldx % 8 == 0`, `ldx ≥ k`, columns `k..ldx` zero); `y`
/// is `n × ldy` (`ldy ≥ m`); `partial` has `2·blocks·ceil(n/(8·NT))·8·NT·256` f32 when some
/// range boundary falls inside a row tile (the split-K workspace); `m, n, k ≥ 1`.
/// `evict_first` marks the weight words' copies evict-first in L2 (`cache::l2_policy`).
/// With the workspace, `flags` holds `ceil(n/(8·NT))·blocks` u32: once all of its stores are
/// done, the block sets its own (`block_idx_y()·blocks + block_idx_x()`) to `launch`, for
/// the reduction (`crate::flag`); else `flags` may be null.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn spmm_linear<E: MmaElement, const MT: usize, const NT: usize, const THREADS: usize>(
    tile_offsets: *const u32, words: *const u32, x: *const u16, ldx: u32, y: *mut u16,
    ldy: u32, partial: *mut f32, m: u32, n: u32, k: u32, blocks: u32, ring_words: u32, evict_first: bool,
    flags: *mut u32, launch: u32,
) {
    const { assert!(THREADS == block_threads(SPMM_ROW_TILES, MT)) };
    // After the kernel before it (this one may be a programmatic dependent, `griddep`). The
    // split-K reduction (launched as a programmatic dependent in the sm90 build) may be
    // scheduled onto SMs as this grid's blocks leave them; it reads a block's slots once the
    // block's completion flag is set, and exits only after this grid is done.
    begin_dependent();
    let (m, n, k, ldx) = (m as usize, n as usize, k as usize, ldx as usize);
    let tiles_k = k.div_ceil(TILE_K);
    let range = StreamRange { tiles: m.div_ceil(SPARSE_TILE_M) * tiles_k, blocks: blocks as usize };
    let b = block_idx_x() as usize;
    let (first_tile, end_tile) = (range.start(b), range.start(b + 1));
    let n0 = block_idx_y() as usize * NT * 8;
    // The block's two slots (its first and its last row tile's segments).
    let slots = partial.wrapping_add(2 * (block_idx_y() as usize * range.blocks + b) * NT * 8 * SPARSE_TILE_M);
    // From 16 tokens on, W is the `mma` B operand (`w_as_b`; see the module docs); the
    // 8-token kernels take it as A, and so does the portable build's 64-token kernel
    // (as B, without the exchange, `ptxas` spills 24 bytes of it for sm_80).
    let w_as_b = NT >= 2 && (cfg!(sm90) || NT <= 4);
    let out = Epilogue { y, ldy: ldy as usize, m, n, rows: SPARSE_TILE_M, w_as_b };

    // Shared memory: dense W tile (256×64) | word ring | X tiles[x_slots] (N_TILE×64).
    // Tile i of the block's range (i = tile - first_tile) uses X slot i % x_slots.
    let x_slots = spmm_x_slots(NT);
    let smem = dynamic_smem_base();
    let dense = smem;
    let ring = Ring { base: smem.offset(DENSE_BYTES), words: ring_words };
    let policy = l2_policy(evict_first);
    let x_bytes = NT * 8 * ROW_BYTES;
    let x_tile = |tile: usize| smem.offset(DENSE_BYTES + ring_words as usize * 4 + ((tile - first_tile) % x_slots) * x_bytes);

    // The warps' rows cover the tile; the first chunk's barrier orders these stores before
    // any scatter.
    warp_zero_rows::<MT>(dense);

    // Producer: the next chunk to issue, where it goes in the ring, the ring's fill, and the
    // cp.async groups committed (one per chunk).
    struct Producer {
        tile: TileCursor,
        chunk: u32,
        at: u32,
        used: u32,
        groups: u32,
    }
    let cursor = || TileCursor::new(tile_offsets, first_tile, end_tile, tiles_k as u32);
    let mut p = Producer { tile: cursor(), chunk: 0, at: 0, used: 0, groups: 0 };
    // Issues chunks while the ring has room and the X ring a free slot (tiles at most
    // x_slots - 1 ahead of `c_tile`, the tile whose MMAs come next). The chunk the consumer
    // needs next always fits: when it is not yet issued, the ring is empty.
    let refill = |p: &mut Producer, c_tile: usize| {
        while p.tile.active() && p.tile.tile < c_tile + x_slots {
            let len = p.tile.chunk_len(p.chunk, ring.words);
            if p.used + len > ring.words {
                break;
            }
            let src = words.add((p.tile.start + p.chunk * ring.words) as usize);
            load_chunk_async::<THREADS>(ring, p.at, src, len, policy);
            if p.chunk == 0 {
                let k0 = p.tile.kt as usize * TILE_K;
                load_tile_async(x_tile(p.tile.tile), NT * 8, THREADS, x, ldx, n, n0, k, k0);
            }
            cp_async::commit_group();
            p.at = ring.wrap(p.at, len);
            p.used += len;
            p.groups += 1;
            if p.tile.is_last_chunk(p.chunk, ring.words) {
                p.tile.advance(tile_offsets);
                p.chunk = 0;
            } else {
                p.chunk += 1;
            }
        }
    };
    refill(&mut p, first_tile);

    // Consumer: chunk `c_chunk` of tile `c.tile`, at ring position `c_at`; `c_groups` counts
    // the chunks taken.
    let mut c = cursor();
    let (mut c_chunk, mut c_at, mut c_groups) = (0u32, 0u32, 0u32);
    let mut acc = [[FragC::default(); NT]; MT]; // MT × NT × (16×8 f32)
    // How the dense tile is cleared after a tile's MMAs (see the module docs):
    // - in the sm90 build (`take`), the MMAs' W loads are exchanges with zeros;
    // - else a sparse one-chunk tile up to 16 tokens keeps its words in registers (`kept`,
    //   `kept_len` > 0) and is cleared after the next barrier by writing zeros back (one
    //   more barrier, far fewer shared-memory writes than zeroing 32 KiB); only one-chunk
    //   tiles are kept (the registers hold one chunk): at most the ring; not from 32 tokens
    //   on, where the kept words would cost the fourth block per SM;
    // - else each warp zeroes its rows.
    let take = cfg!(sm90);
    let keep_tiles = !take && NT < 4;
    let keep_cap = ((4 * KEEP_GROUPS * THREADS) as u32).min(ring.words);
    let (mut kept, mut kept_len): (Kept, u32) = ([[0; 4]; KEEP_GROUPS], 0);
    // First tile of the current row tile's segment.
    let mut segment = first_tile;
    while c.active() {
        // The chunk's group is the oldest one we still need: all later ones may stay pending.
        wait_pending(p.groups - c_groups - 1);
        bar_sync();
        if kept_len > 0 {
            // Every warp's MMAs of the previous tile are done (barrier above).
            unscatter::<THREADS>(&kept, kept_len, dense);
            kept_len = 0;
            bar_sync();
        }
        let len = c.chunk_len(c_chunk, ring.words);
        let keep = keep_tiles && c.len() <= keep_cap;
        if keep {
            kept = scatter_keep::<THREADS>(ring, c_at, len, dense);
        } else {
            scatter_chunk::<THREADS>(ring, c_at, len, dense);
        }
        c_at = ring.wrap(c_at, len);
        c_groups += 1;
        let last_chunk = c.is_last_chunk(c_chunk, ring.words);
        c_chunk += 1;
        // Every thread is done with the chunk's ring words (and, after a tile's last chunk,
        // the dense tile is complete): the ring can take more.
        bar_sync();
        p.used -= len;
        refill(&mut p, c.tile);
        if last_chunk {
            // With `take` the loads leave the warp's rows clear.
            if w_as_b {
                warp_mma_frag_tile_w_as_b::<E, MT, NT>(dense, x_tile(c.tile), &mut acc, take);
            } else {
                warp_mma_frag_tile::<E, MT, NT>(dense, x_tile(c.tile), &mut acc, take);
            }
            if keep {
                kept_len = len;
            } else if !take {
                warp_zero_rows::<MT>(dense);
            }
            let row_end = c.kt + 1 == c.tiles_k;
            c.advance(tile_offsets);
            c_chunk = 0;
            // A row tile ends inside the range: its segment is the block's first one and
            // partial (a range is at most K tiles long), so it goes to the first slot.
            if row_end && c.active() {
                out.store_slot::<MT, NT>(&acc, slots);
                acc = [[FragC::default(); NT]; MT];
                segment = c.tile;
            }
        }
    }
    cp_async::wait_group::<0>();

    // The last segment: a whole row tile goes to Y, a part of one to the slot of the block's
    // first or last row tile.
    let row_tile = segment / tiles_k;
    if segment % tiles_k == 0 && end_tile - segment == tiles_k {
        out.store_y::<E, MT, NT>(&acc, row_tile * SPARSE_TILE_M, n0);
    } else {
        let last = usize::from(segment != first_tile);
        out.store_slot::<MT, NT>(&acc, slots.wrapping_add(last * NT * 8 * SPARSE_TILE_M));
    }
    // Publish the block's slots (both were written by now) to the reduction: every thread's
    // stores are done at the barrier, then one release store (`crate::flag`).
    if !flags.is_null() {
        bar_sync();
        if thread_idx_x() == 0 {
            flag::release(flags.add(block_idx_y() as usize * range.blocks + b), launch);
        }
    }
}
