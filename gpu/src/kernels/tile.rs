//! Building blocks shared by the dense and the sparse kernel: streaming a 16-bit row-major
//! tile into a swizzled shared tile, one warp's MMAs over a 64×64 W tile, and the epilogue.

use crate::cp_async::{cp_async_16, cp_async_16_zfill};
use crate::global::{atom_add_u32, fence_acq_rel_gpu, ld_global_cg_f32};
use crate::shared::{ld_shared_b32, st_shared_b32};
use crate::sync::bar_sync;
use crate::layout::{
    frag_c_coord, ldmatrix_a_src, ldmatrix_b_src, swizzled_chunk_offset, TILE_K,
};
use crate::ldmatrix::{ldmatrix_x2, ldmatrix_x4};
use crate::mma::{FragA, FragB, FragC, MmaElement};
use crate::shared::SmemAddr;
use crate::thread::{block_idx_x, block_idx_y, grid_dim_x, lane_idx, thread_idx_x, warp_idx};

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

/// One warp's share of a block's W tile times an `(8·NT)`×64 X tile. The warp owns `16·MT`
/// rows starting at `16·MT·warp` and computes, as 4 k16 steps,
/// `acc[mt][nt] += W[rows of m-tile mt, :] · X[8·nt .. 8·nt+8, :]ᵀ`.
/// The B fragments of a k step are loaded once and reused by all `MT` m-tiles, so a warp
/// with more rows reads the X tile from shared memory fewer times per row of W.
/// Both tiles are swizzled (`layout::swizzled_chunk_offset`).
///
/// # Safety
/// All threads of the warp call it together; both tiles are complete and visible (barrier).
#[inline(always)]
pub unsafe fn warp_mma_tile<E: MmaElement, const MT: usize, const NT: usize>(
    w_tile: SmemAddr,
    x_tile: SmemAddr,
    acc: &mut [[FragC; NT]; MT],
) {
    const { assert!(NT == 1 || (NT % 2 == 0 && NT <= 8)) };
    const { assert!(MT >= 1 && MT <= 4) };
    let lane = lane_idx() as usize;
    let warp_row0 = warp_idx() as usize * 16 * MT;
    unroll!(kk in 0..4 => {
        // B: 8·NT tokens × 16 k of X (NT × 16×8)
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
        unroll!(mt in 0..MT => {
            // A: 16 rows × 16 k of W (16×16)
            let (ar, ac) = ldmatrix_a_src(lane, warp_row0 + 16 * mt, kk);
            let a = FragA(ldmatrix_x4(w_tile.offset(swizzled_chunk_offset(ar, ac))));
            unroll!(nt in 0..NT => {
                E::mma_m16n8k16(&mut acc[mt][nt], &a, &b[nt]);
            });
        });
    });
}

/// Where a block's results go, and how split-K partial sums are combined.
///
/// With one split the block rounds its accumulators and writes `Y`. With several, every block
/// writes its f32 partial tile to `partial[split]`, then counts itself in with an atomic on
/// the output tile's counter; the block that arrives last sums the `splits` partials in split
/// order (so the result does not depend on which block is last: bit-identical run to run),
/// writes `Y`, and resets the counter to 0 for the next launch. No second kernel is launched.
pub struct Epilogue {
    /// Output `Y` (`n × ldy` elements).
    pub y: *mut u16,
    /// Leading dimension of `Y`.
    pub ldy: usize,
    /// f32 partial sums `[splits][n][m]` (used when `splits > 1`).
    pub partial: *mut f32,
    /// One arrival counter per output tile, zero between launches (used when `splits > 1`).
    pub counters: *mut u32,
    /// Rows of W (= columns of Y).
    pub m: usize,
    /// Tokens (= rows of Y).
    pub n: usize,
    /// This block's split index.
    pub split: usize,
    /// Number of K splits (grid z).
    pub splits: usize,
}

impl Epilogue {
    /// Calls `f(mt, nt, i, gm, gn)` for each accumulator element of this thread that lies
    /// inside `m × n` (warp rows from `m0 + 16·MT·warp`, tokens from `n0`).
    #[inline(always)]
    fn for_each_element<const MT: usize, const NT: usize>(&self, m0: usize, n0: usize, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        let lane = lane_idx() as usize;
        let warp_row0 = m0 + warp_idx() as usize * 16 * MT;
        unroll!(mt in 0..MT => {
            unroll!(nt in 0..NT => {
                unroll!(i in 0..4 => {
                    let (r, c) = frag_c_coord(lane, i);
                    let (gm, gn) = (warp_row0 + 16 * mt + r, n0 + nt * 8 + c);
                    if gm < self.m && gn < self.n {
                        f(mt, nt, i, gm, gn);
                    }
                });
            });
        });
    }

    /// Writes the block's results (see the type's docs). `flag` is 4 bytes of shared memory
    /// no warp reads any more.
    ///
    /// # Safety
    /// Called once by every thread of the block (it contains barriers), after the last MMA;
    /// `y`, `partial` and `counters` are allocations of the documented sizes.
    #[inline(always)]
    pub unsafe fn finish<E: MmaElement, const MT: usize, const NT: usize>(
        &self,
        acc: &[[FragC; NT]; MT],
        m0: usize,
        n0: usize,
        flag: SmemAddr,
    ) {
        if self.splits == 1 {
            self.for_each_element::<MT, NT>(m0, n0, |mt, nt, i, gm, gn| {
                *self.y.add(gn * self.ldy + gm) = E::from_f32(acc[mt][nt].0[i]);
            });
            return;
        }
        let slice = |s: usize| self.partial.add(s * self.n * self.m);
        self.for_each_element::<MT, NT>(m0, n0, |mt, nt, i, gm, gn| {
            *slice(self.split).add(gn * self.m + gm) = acc[mt][nt].0[i];
        });
        fence_acq_rel_gpu(); // release: the partial tile before the arrival
        bar_sync();
        let counter = self.counters.add(block_idx_x() as usize + block_idx_y() as usize * grid_dim_x() as usize);
        if thread_idx_x() == 0 {
            let last = atom_add_u32(counter, 1) as usize == self.splits - 1;
            st_shared_b32(flag, last as u32);
        }
        bar_sync();
        if ld_shared_b32(flag) == 0 {
            return;
        }
        fence_acq_rel_gpu(); // acquire: every other split's partial tile
        self.for_each_element::<MT, NT>(m0, n0, |_, _, _, gm, gn| {
            let mut sum = 0.0f32;
            let mut s = 0;
            while s < self.splits {
                sum += ld_global_cg_f32(slice(s).add(gn * self.m + gm));
                s += 1;
            }
            *self.y.add(gn * self.ldy + gm) = E::from_f32(sum);
        });
        if thread_idx_x() == 0 {
            *counter = 0;
        }
    }
}

/// The K tiles `[begin, end)` that split `split` of `splits` owns (contiguous, sizes differ
/// by at most one).
#[inline(always)]
pub fn split_range(k_tiles: usize, split: usize, splits: usize) -> (usize, usize) {
    let splits = splits.max(1); // a grid dimension is never 0; this lets the compiler know
    (split * k_tiles / splits, (split + 1) * k_tiles / splits)
}
