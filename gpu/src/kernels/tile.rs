//! Building blocks shared by the dense and the sparse kernel: streaming a 16-bit row-major
//! tile into a swizzled shared tile, one warp's MMAs over its rows of the block's W tile, and the
//! epilogue.

use crate::cp_async::{cp_async_16, cp_async_16_zfill};
use crate::layout::{
    frag_c_coord, ldmatrix_a_src, ldmatrix_b_src, swizzled_chunk_offset, ROW_BYTES, TILE_K,
};
use crate::ldmatrix::{ldmatrix_x2, ldmatrix_x4};
use crate::mma::{FragA, FragB, FragC, MmaElement};
#[cfg(sm90)]
use crate::shared::take_shared_v2_b32;
use crate::shared::{ld_shared_v2_b32, st_shared_v4_b32, SmemAddr};
use crate::sync::bar_warp_sync;
use crate::thread::{block_idx_y, grid_dim_y, lane_idx, thread_idx_x, warp_idx};

/// Issues `cp.async` copies of the `tile_rows × TILE_K` tile at (`row0`, `k0`) of a row-major
/// 16-bit matrix (`rows` × `k`, leading dimension `ld` elements) into the swizzled shared tile
/// at `dst` (rows of 128 B). Rows ≥ `rows` and 8-column chunks starting at ≥ `k` are
/// zero-filled without reading memory.
///
/// # Safety
/// `src` is a device allocation of at least `rows·ld` elements, 16-byte aligned, with
/// `ld % 8 == 0`, `ld ≥ k`, and the columns `k..ld` of every row zero (so a chunk that starts
/// before `k` may be copied whole). `dst` has `tile_rows · 128` bytes of dynamic shared memory.
/// `tile_rows` and `threads` (the block size) are compile-time constants at every call site.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn load_tile_async(
    dst: SmemAddr,
    tile_rows: usize,
    threads: usize,
    src: *const u16,
    ld: usize,
    rows: usize,
    row0: usize,
    k: usize,
    k0: usize,
) {
    let tid = thread_idx_x() as usize;
    let chunks = tile_rows * (TILE_K / 8);
    let mut i = 0;
    while i < chunks.div_ceil(threads) {
        let id = tid + i * threads;
        if id < chunks {
            let (r, c) = (id / 8, id % 8);
            let (gr, gk) = (row0 + r, k0 + c * 8);
            let smem = dst.offset(swizzled_chunk_offset(r, c));
            if gr < rows && gk < k {
                cp_async_16(smem, src.add(gr * ld + gk) as *const u8);
            } else {
                cp_async_16_zfill(smem, src as *const u8, 0);
            }
        }
        i += 1;
    }
}

/// Most 16-byte chunks of one tile a thread copies in a [`TileStream`] step.
const MAX_STREAM_CHUNKS: usize = 8;

/// One thread's part in streaming the `tile_rows × TILE_K` tiles of a fixed band of rows of a
/// row-major 16-bit matrix along K into swizzled shared tiles (the dense kernel's W and X
/// tiles). Everything that does not depend on the K position — each chunk's shared offset,
/// source row and how far along K it may read — is computed once, so a step costs one
/// 32-bit compare and an address add per 16-byte copy instead of redoing the index arithmetic.
pub struct TileStream {
    /// Chunks each thread copies per step (compile-time constant at every call site).
    per_thread: usize,
    /// Whether every thread has `per_thread` chunks (then no per-chunk test is needed).
    exact: bool,
    /// Chunks this thread copies per step.
    count: usize,
    /// Shared byte offset of each chunk inside the tile.
    smem: [u32; MAX_STREAM_CHUNKS],
    /// Each chunk's source at K position 0 (its row and column inside the tile); the matrix
    /// base for rows outside the matrix (never read: those chunks are zero-filled).
    src: [*const u16; MAX_STREAM_CHUNKS],
    /// The chunk is copied at K position `k0` when `k0 < limit` (`k - column`, or 0 for rows
    /// outside the matrix), else zero-filled.
    limit: [u32; MAX_STREAM_CHUNKS],
}

impl TileStream {
    /// The chunks `tid, tid + threads, …` of a `tile_rows`-row tile starting at row `row0` of
    /// `src` (`rows` × `k`, leading dimension `ld`).
    ///
    /// # Safety
    /// As [`load_tile_async`]; `tile_rows · 8 ≤ MAX_STREAM_CHUNKS · threads`, `k < 2³²`, and
    /// `tile_rows` and `threads` are compile-time constants at every call site.
    #[inline(always)]
    pub unsafe fn new(
        tile_rows: usize,
        threads: usize,
        src: *const u16,
        ld: usize,
        rows: usize,
        row0: usize,
        k: usize,
    ) -> Self {
        let tid = thread_idx_x() as usize;
        let chunks = tile_rows * (TILE_K / 8);
        let mut t = TileStream {
            per_thread: chunks.div_ceil(threads),
            exact: chunks.is_multiple_of(threads),
            count: 0,
            smem: [0; MAX_STREAM_CHUNKS],
            src: [src; MAX_STREAM_CHUNKS],
            limit: [0; MAX_STREAM_CHUNKS],
        };
        unroll!(i in 0..MAX_STREAM_CHUNKS => {
            let id = tid + i * threads;
            if i < t.per_thread && id < chunks {
                let (r, c) = (id / 8, id % 8);
                t.count = i + 1;
                t.smem[i] = swizzled_chunk_offset(r, c) as u32;
                if row0 + r < rows {
                    t.src[i] = src.add((row0 + r) * ld + c * 8);
                    t.limit[i] = k.saturating_sub(c * 8) as u32;
                }
            }
        });
        t
    }

    /// Issues the copies of the tile at K position `k0` into `dst`; chunks of rows outside the
    /// matrix or starting at column ≥ `k` are zero-filled without reading memory.
    ///
    /// # Safety
    /// `dst` has `tile_rows · 128` bytes of dynamic shared memory; as [`load_tile_async`].
    #[inline(always)]
    pub unsafe fn load(&self, dst: SmemAddr, k0: usize) {
        unroll!(i in 0..MAX_STREAM_CHUNKS => {
            if i < self.per_thread && (self.exact || i < self.count) {
                let smem = SmemAddr(dst.0 + self.smem[i]);
                if (k0 as u32) < self.limit[i] {
                    cp_async_16(smem, self.src[i].add(k0) as *const u8);
                } else {
                    cp_async_16_zfill(smem, self.src[i] as *const u8, 0);
                }
            }
        });
    }
}

/// The B fragments of k-step `kk` (0..4) of an `(8·NT)`×64 swizzled X tile: `8·NT` tokens ×
/// 16 k as NT 16×8 fragments.
///
/// # Safety
/// All threads of the warp call it together; the X tile is complete and visible.
#[inline(always)]
unsafe fn load_b_frags<const NT: usize>(x_tile: SmemAddr, lane: usize, kk: usize) -> [FragB; NT] {
    let mut b = [FragB::default(); NT];
    if NT == 1 {
        // lanes 0–15 supply the addresses of ldmatrix.x2
        let (br, bc) = ldmatrix_b_src(lane % 16, 0, kk);
        b[0] = FragB(ldmatrix_x2(x_tile.offset(swizzled_chunk_offset(br, bc))));
    } else {
        unroll!(pair in 0..NT / 2 => {
            let (br, bc) = ldmatrix_b_src(lane, 2 * pair, kk);
            let [b0, b1, b2, b3] = ldmatrix_x4(x_tile.offset(swizzled_chunk_offset(br, bc)));
            b[2 * pair] = FragB([b0, b1]);
            b[2 * pair + 1] = FragB([b2, b3]);
        });
    }
    b
}

/// One warp's share of a block's W tile times an `(8·NT)`×64 X tile. The warp owns `16·MT`
/// rows starting at `16·MT·warp` and computes, as 4 k16 steps,
/// `acc[mt][nt] += W[rows of m-tile mt, :] · X[8·nt .. 8·nt+8, :]ᵀ`, with `load_a(mt, kk)`
/// giving the A fragment of m-tile `mt` at k-step `kk` (the W tile's layout is the caller's).
/// The B fragments of a k step are loaded once and reused by all `MT` m-tiles, so a warp
/// with more rows reads the X tile from shared memory fewer times per row of W.
///
/// # Safety
/// All threads of the warp call it together; the X tile is complete and visible (barrier),
/// and so is whatever `load_a` reads.
#[inline(always)]
pub unsafe fn warp_mma<E: MmaElement, const MT: usize, const NT: usize>(
    x_tile: SmemAddr,
    acc: &mut [[FragC; NT]; MT],
    load_a: impl Fn(usize, usize) -> FragA,
) {
    const { assert!(NT == 1 || (NT % 2 == 0 && NT <= 8)) };
    const { assert!(MT >= 1 && MT <= 4) };
    let lane = lane_idx() as usize;
    unroll!(kk in 0..4 => {
        let b = load_b_frags::<NT>(x_tile, lane, kk);
        unroll!(mt in 0..MT => {
            let a = load_a(mt, kk);
            unroll!(nt in 0..NT => {
                E::mma_m16n8k16(&mut acc[mt][nt], &a, &b[nt]);
            });
        });
    });
}

/// [`warp_mma`] on a swizzled W tile (`layout::swizzled_chunk_offset`, the dense kernel's):
/// each A fragment (16 rows × 16 k) is one `ldmatrix.x4`.
///
/// # Safety
/// As [`warp_mma`]; the W tile is complete and visible.
#[inline(always)]
pub unsafe fn warp_mma_tile<E: MmaElement, const MT: usize, const NT: usize>(
    w_tile: SmemAddr,
    x_tile: SmemAddr,
    acc: &mut [[FragC; NT]; MT],
) {
    let lane = lane_idx() as usize;
    let warp_row0 = warp_idx() as usize * 16 * MT;
    warp_mma::<E, MT, NT>(x_tile, acc, |mt, kk| {
        let (ar, ac) = ldmatrix_a_src(lane, warp_row0 + 16 * mt, kk);
        FragA(ldmatrix_x4(w_tile.offset(swizzled_chunk_offset(ar, ac))))
    });
}

/// Byte offset of the 16×16 block of the fragment-native W tile (`layout::frag_pos`) that
/// holds this warp's m-tile `mt` (of `MT` per warp) at k-step `kk`, plus this lane's 8 bytes
/// in the block's first 8-row half (the second half is 256 bytes further on).
#[inline(always)]
fn frag_block_lane_offset<const MT: usize>(mt: usize, kk: usize) -> usize {
    let block = (warp_idx() as usize * MT + mt) * (TILE_K / 16) + kk;
    block * 512 + lane_idx() as usize * 8
}

/// [`warp_mma`] on a fragment-native W tile (`layout::frag_pos`, the SpMM's rebuilt
/// tile): each A fragment is two 8-byte loads per lane (2 wavefronts each: the bytes of
/// `ldmatrix.x4`). With `take` (only in the `sm90` build) the loads are exchanges with
/// zeros, so the warp's rows of the W tile are clear once its MMAs have read them.
///
/// # Safety
/// As [`warp_mma`]; the W tile is complete and visible; `take` only where `cfg!(sm90)`.
#[inline(always)]
pub unsafe fn warp_mma_frag_tile<E: MmaElement, const MT: usize, const NT: usize>(
    w_tile: SmemAddr,
    x_tile: SmemAddr,
    acc: &mut [[FragC; NT]; MT],
    take: bool,
) {
    warp_mma::<E, MT, NT>(x_tile, acc, |mt, kk| {
        let at = w_tile.offset(frag_block_lane_offset::<MT>(mt, kk));
        // Rows 0–7 give a0a1 and a4a5, rows 8–15 a2a3 and a6a7.
        let (top, bottom) = (load_frag_half(at, take), load_frag_half(at.offset(256), take));
        FragA([top[0], bottom[0], top[1], bottom[1]])
    });
}

/// One warp's share of a block's fragment-native W tile times an `(8·NT)`×64 X tile with
/// **W as the `mma` B operand**: `Yᵀ` tiles `X · Wᵀ`, X giving the A fragments of `NT/2`
/// token m-tiles of 16 (`ldmatrix.x4`, as the dense kernel loads its W) and each 8-row half
/// of the warp's 16×16 W blocks one B fragment, a single 8-byte load (or exchange with
/// zeros, `take`) per lane. `acc[mt][2·tm + h]` is the 16×8 tile tokens `16·tm ..` × W rows
/// `16·(MT·warp + mt) + 8·h ..` ([`Epilogue`] with `w_as_b`).
///
/// Why: a 16-byte exchange's result is copied into other registers before `mma` reads it
/// (`ptxas`), which at 32 and 64 tokens costs more than the exchange saves; an 8-byte B
/// fragment is exchanged straight into the registers `mma` reads (`benches/results/NOTES.md`
/// item 36).
///
/// # Safety
/// As [`warp_mma`] (NT even); the W tile is complete and visible; `take` only where
/// `cfg!(sm90)`.
#[inline(always)]
pub unsafe fn warp_mma_frag_tile_w_as_b<E: MmaElement, const MT: usize, const NT: usize>(
    w_tile: SmemAddr,
    x_tile: SmemAddr,
    acc: &mut [[FragC; NT]; MT],
    take: bool,
) {
    const { assert!(NT <= 8 && MT >= 1 && MT <= 4) };
    // Token m-tiles are 16 tokens. Not a compile-time assertion: the SpMM instantiates this
    // for every NT and calls it for even NT only; the check folds away, and a call with an
    // odd NT would trap instead of leaving 8 tokens out.
    assert!(NT % 2 == 0);
    let lane = lane_idx() as usize;
    unroll!(kk in 0..4 => {
        let mut x = [FragA::default(); NT]; // the first NT / 2 used
        unroll!(tm in 0..NT / 2 => {
            let (r, chunk) = ldmatrix_a_src(lane, 16 * tm, kk);
            x[tm] = FragA(ldmatrix_x4(x_tile.offset(swizzled_chunk_offset(r, chunk))));
        });
        // W n-tile j = 2·mt + h: rows 8·h .. of the warp's m-tile mt.
        unroll!(j in 0..2 * MT => {
            let at = w_tile.offset(frag_block_lane_offset::<MT>(j / 2, kk) + (j % 2) * 256);
            let w = FragB(load_frag_half(at, take));
            unroll!(tm in 0..NT / 2 => {
                E::mma_m16n8k16(&mut acc[j / 2][2 * tm + j % 2], &x[tm], &w);
            });
        });
    });
}

/// This lane's 8 bytes of one 8-row half of a fragment-native 16×16 block, cleared behind
/// it when `take` (sm90 build only).
///
/// # Safety
/// `at` is 8-byte aligned in the launch's dynamic shared memory, written and made visible
/// by a barrier before; with `take`, no other thread reads those bytes before they are
/// written again.
#[inline(always)]
unsafe fn load_frag_half(at: SmemAddr, take: bool) -> [u32; 2] {
    #[cfg(sm90)]
    if take {
        return take_shared_v2_b32(at);
    }
    debug_assert!(!take);
    ld_shared_v2_b32(at)
}

/// Zeroes the `16·MT` rows of a W tile that this warp reads in [`warp_mma_frag_tile`] (rows
/// `16·MT·warp ..`, 128 B each: one contiguous range), after the warp's reads of them.
/// No other warp reads these rows, so no block barrier is needed: the SpMM kernel clears its
/// rebuilt tile this way, each warp right after its MMAs.
///
/// # Safety
/// All threads of the warp call it together, after their `warp_mma_frag_tile` on the same tile.
#[inline(always)]
pub unsafe fn warp_zero_rows<const MT: usize>(w_tile: SmemAddr) {
    let lane = lane_idx() as usize;
    let rows = w_tile.offset(warp_idx() as usize * 16 * MT * ROW_BYTES);
    bar_warp_sync(); // the warp's ldmatrix reads of these rows come first
    unroll!(i in 0..4 * MT => {
        st_shared_v4_b32(rows.offset((i * 32 + lane) * 16), [0; 4]);
    });
}

/// The share of the output and of K one block computes under the schedule "`full` row tiles
/// whole, the rest split `splits` ways along K" (a bandwidth-bound kernel then gives every SM
/// the same number of bytes even when the row tiles do not divide evenly among the SMs).
#[derive(Clone, Copy)]
pub struct WorkItem {
    /// Row tile (of the block's height) this block computes.
    pub row_tile: usize,
    /// K split index and split count of this row tile (`splits == 1`: whole K, final output).
    pub split: usize,
    /// Number of K splits of this row tile.
    pub splits: usize,
    /// K tiles `[kt_begin, kt_end)` this block walks.
    pub kt_begin: usize,
    /// End of the K range (exclusive).
    pub kt_end: usize,
}

impl WorkItem {
    /// Decodes block `block` (grid x): blocks `0..full` own row tiles `0..full` with all of K;
    /// block `full + j` owns split `j % splits` of row tile `full + j / splits`.
    #[inline(always)]
    pub fn decode(block: usize, full: usize, splits: usize, k_tiles: usize) -> Self {
        let splits = splits.max(1); // a launch never passes 0; this lets the compiler know
        let (row_tile, split, splits) = if block < full {
            (block, 0, 1)
        } else {
            let j = block - full;
            (full + j / splits, j % splits, splits)
        };
        let (kt_begin, kt_end) = split_range(k_tiles, split, splits);
        WorkItem { row_tile, split, splits, kt_begin, kt_end }
    }
}

/// Where a block's results go: `Y` when the block computed a whole row tile (all of K),
/// else its f32 partial sums to a *slot* of the split-K workspace for [`super::reduce`]. A
/// slot holds one block's output tile, `n_tile × rows` f32, element (token t, row r) at
/// `t·rows + r`; slots are whole 128-byte lines, so the reduction reads whole cache lines and
/// can drop them from L2 afterwards. Which slot a block uses is the schedule's business
/// ([`unit_slot`], [`StreamRange`]).
pub struct Epilogue {
    /// Output `Y` (`n × ldy` elements).
    pub y: *mut u16,
    /// Leading dimension of `Y`.
    pub ldy: usize,
    /// Rows of W (= columns of Y).
    pub m: usize,
    /// Tokens (= rows of Y).
    pub n: usize,
    /// Rows of W per block (the output tile is `n_tile × rows`).
    pub rows: usize,
    /// The accumulators are those of [`warp_mma_frag_tile_w_as_b`] (tokens as the C rows)
    /// rather than W rows as the C rows (the other MMA loops).
    pub w_as_b: bool,
}

impl Epilogue {
    /// Stores one warp's accumulators for W rows `m0 + 16·MT·warp ..` and tokens `n0 ..` to
    /// `Y`, dropping elements outside `m × n` (either accumulator layout, [`Self::w_as_b`]).
    ///
    /// # Safety
    /// `y` is an allocation of `n × ldy` elements.
    #[inline(always)]
    pub unsafe fn store_y<E: MmaElement, const MT: usize, const NT: usize>(
        &self,
        acc: &[[FragC; NT]; MT],
        m0: usize,
        n0: usize,
    ) {
        if self.w_as_b {
            return self.store_y_w_as_b::<E, MT, NT>(acc, m0, n0);
        }
        for_each_acc(acc, |row, token, v| {
            if m0 + row < self.m && n0 + token < self.n {
                *self.y.add((n0 + token) * self.ldy + m0 + row) = E::from_f32(v);
            }
        });
    }

    /// Stores one warp's accumulators, the whole output tile, to `slot` (either accumulator
    /// layout).
    ///
    /// # Safety
    /// `slot` points at `n_tile × rows` writable f32 (`n_tile = 8·NT`).
    #[inline(always)]
    pub unsafe fn store_slot<const MT: usize, const NT: usize>(&self, acc: &[[FragC; NT]; MT], slot: *mut f32) {
        if self.w_as_b {
            return self.store_slot_w_as_b::<MT, NT>(acc, slot);
        }
        for_each_acc(acc, |row, token, v| *slot.add(token * self.rows + row) = v);
    }

    /// [`Self::store_y`] for the accumulators of [`warp_mma_frag_tile_w_as_b`]. Each lane
    /// holds W rows `r, r + 1` of a token side by side, which are adjacent in `Y`: stored as
    /// one 32-bit write where both are inside `m` and the address is 4-byte aligned, so a
    /// warp's stores fill whole 32-byte sectors as the W-as-A layout's do.
    ///
    /// # Safety
    /// As [`Self::store_y`].
    #[inline(always)]
    unsafe fn store_y_w_as_b<E: MmaElement, const MT: usize, const NT: usize>(
        &self,
        acc: &[[FragC; NT]; MT],
        m0: usize,
        n0: usize,
    ) {
        for_each_pair_w_as_b(acc, |row, token, v| {
            let (row, token) = (m0 + row, n0 + token);
            if token >= self.n || row >= self.m {
                return;
            }
            let p = self.y.add(token * self.ldy + row);
            let (lo, hi) = (E::from_f32(v[0]), E::from_f32(v[1]));
            if row + 1 < self.m && (p as usize).is_multiple_of(4) {
                *(p as *mut u32) = lo as u32 | (hi as u32) << 16;
            } else {
                *p = lo;
                if row + 1 < self.m {
                    *p.add(1) = hi;
                }
            }
        });
    }

    /// [`Self::store_slot`] for the accumulators of [`warp_mma_frag_tile_w_as_b`]: each pair
    /// of rows is one 8-byte write (rows are even and `rows` is, so pairs are 8-byte aligned).
    ///
    /// # Safety
    /// As [`Self::store_slot`]; `slot` is 8-byte aligned.
    #[inline(always)]
    unsafe fn store_slot_w_as_b<const MT: usize, const NT: usize>(&self, acc: &[[FragC; NT]; MT], slot: *mut f32) {
        for_each_pair_w_as_b(acc, |row, token, v| {
            let pair = v[0].to_bits() as u64 | (v[1].to_bits() as u64) << 32;
            *(slot.add(token * self.rows + row) as *mut u64) = pair;
        });
    }
}

/// Calls `f(row, token, [v, v'])` for each pair of this lane's accumulator elements of
/// [`warp_mma_frag_tile_w_as_b`]: W rows `row` (even) and `row + 1` inside the block's tile
/// (the warp owns rows `16·MT·warp ..`), `token` inside the `8·NT`-token tile (the C
/// fragment with tokens as rows, `layout::frag_c_coord`).
#[inline(always)]
fn for_each_pair_w_as_b<const MT: usize, const NT: usize>(
    acc: &[[FragC; NT]; MT],
    mut f: impl FnMut(usize, usize, [f32; 2]),
) {
    let lane = lane_idx() as usize;
    let warp_row = warp_idx() as usize * 16 * MT;
    unroll!(mt in 0..MT => {
        unroll!(j in 0..NT => {
            // acc[mt][j]: token m-tile j / 2, the 8 rows 8·(j % 2) .. of m-tile mt.
            let c = &acc[mt][j].0;
            unroll!(h in 0..2 => {
                let (token, row) = frag_c_coord(lane, 2 * h);
                f(warp_row + 16 * mt + 8 * (j % 2) + row, 16 * (j / 2) + token, [c[2 * h], c[2 * h + 1]]);
            });
        });
    });
}

/// Calls `f(row, token, value)` for each of this lane's accumulator elements: `row` is the
/// W row inside the block's tile (the warp owns rows `16·MT·warp ..`), `token` the token
/// inside the `8·NT`-token tile (the `mma` C-fragment layout, `layout::frag_c_coord`).
#[inline(always)]
fn for_each_acc<const MT: usize, const NT: usize>(acc: &[[FragC; NT]; MT], mut f: impl FnMut(usize, usize, f32)) {
    let lane = lane_idx() as usize;
    let warp_row = warp_idx() as usize * 16 * MT;
    unroll!(mt in 0..MT => {
        unroll!(nt in 0..NT => {
            unroll!(i in 0..4 => {
                let (r, c) = frag_c_coord(lane, i);
                f(warp_row + 16 * mt + r, nt * 8 + c, acc[mt][nt].0[i]);
            });
        });
    });
}

/// The split unit of a split block of the [`WorkItem`] schedule (grid y = token tile):
/// `u = (row_tile - full) · token_tiles + token_tile`. Unit u owns `splits` consecutive
/// slots, split s's at `partial + (u·splits + s) · n_tile·rows`, and arrival counter u.
#[inline(always)]
pub fn split_unit(work: &WorkItem, full: usize) -> usize {
    (work.row_tile - full) * grid_dim_y() as usize + block_idx_y() as usize
}

/// The stream-K schedule of the sparse kernel: the `R × K` tiles of W in row-major order
/// (the order of the Tiled-CSL lists) are cut into `blocks` contiguous ranges of equal
/// length (±1), one per block, so every block gets the same work whatever the row tiles
/// and the SM count. A range may start or end inside a row tile: those *segments* go to
/// slots (the reduction sums a row tile's segments in block order), segments covering a
/// whole row tile go straight to `Y`. Block b of token tile y has two slots:
/// `2·(y·blocks + b)` for the segment of its first row tile and `+ 1` for that of its last.
/// With `blocks = R·s` this is the uniform split of every row tile into `s` K ranges.
#[derive(Clone, Copy)]
pub struct StreamRange {
    /// Tiles of W (`R × K`).
    pub tiles: usize,
    /// Blocks sharing them (grid x), at most `tiles`.
    pub blocks: usize,
}

impl StreamRange {
    /// First tile of block `b` (`b ≤ blocks`; `b = blocks` gives the end).
    #[inline(always)]
    pub fn start(self, b: usize) -> usize {
        (b as u64 * self.tiles as u64 / self.blocks.max(1) as u64) as usize
    }

    /// The block whose range holds tile `t`.
    #[inline(always)]
    pub fn block_of(self, t: usize) -> usize {
        (((t as u64 + 1) * self.blocks as u64).div_ceil(self.tiles.max(1) as u64) - 1) as usize
    }
}

/// The K tiles `[begin, end)` that split `split` of `splits` owns (contiguous, sizes differ
/// by at most one).
#[inline(always)]
pub fn split_range(k_tiles: usize, split: usize, splits: usize) -> (usize, usize) {
    let splits = splits.max(1); // a grid dimension is never 0; this lets the compiler know
    (split * k_tiles / splits, (split + 1) * k_tiles / splits)
}
