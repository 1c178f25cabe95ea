//! Causal attention of query rows over the KV cache, and the writes into the cache.
//!
//! # The cache
//! Per layer, K and V are each `[slots][kv_heads][max_seq][head_dim]` 16-bit elements
//! (`host/src/ops/kv_cache.rs`): the keys of one (sequence slot, kv head) are consecutive
//! rows of `head_dim` elements, so a block streams them as a plain row-major tile. The head
//! dimension is a multiple of 8, so every row is whole 16-byte chunks.
//!
//! # [`kv_write`]
//! Row i of K and V (`kv_heads·head_dim` elements each) goes to `(slots[i], positions[i])`;
//! a row whose slot or position is out of range is skipped. One thread per 16-byte chunk.
//!
//! # [`attention`]: split along the sequence (flash-decoding), on Tensor Cores
//! Grid `(rows · chunks, kv_heads · head_groups, 1)`, 128 threads. A block serves one query
//! row, one kv head and up to 16 of the query heads that share it (GQA: head h reads kv head
//! `h / (n_heads / kv_heads)`), over one chunk of the row's keys `0 ..= pos`
//! ([`super::attention_plan::chunk_range`]), so each K/V tile is read once for all those heads:
//!
//! - the Q rows of the heads (16 × head_dim, missing heads and columns zero-filled) come into
//!   shared memory once and stay in registers as `mma` A fragments;
//! - K and V tiles of 64 keys stream through a 2-stage `cp.async` pipeline (rows padded to
//!   an odd number of 16-byte units: conflict-free `ldmatrix`); keys past the chunk are
//!   zero-filled, never read;
//! - warp w owns keys `16w .. 16w + 16` of every tile: `S = Q·Kᵀ` (16 heads × 16 keys, f32)
//!   with `mma.sync.m16n8k16` (K rows are the B operand as they lie), masked past the chunk,
//!   scaled by `scale·log2 e`; an online softmax per head row (running max `m`, running sum
//!   `l`, the accumulator rescaled by `2^(m_old − m_new)`); the probabilities, rounded to the
//!   element type, are the A operand of `O += P·V` (V through `ldmatrix.trans`). The C
//!   fragment of S is exactly the A fragment layout of P, so P never leaves registers;
//! - after the last tile the four warps' states are combined in shared memory (fixed order);
//!   with one chunk per row the block writes `O / l` rounded to the element type, else its
//!   unnormalised f32 accumulator and (max, sum) to the workspace for [`attention_combine`].
//!
//! Every reduction happens in a fixed order (no atomics), so results are bit-identical from
//! run to run. A row whose slot or position is out of range gets NaN (written by the
//! attention kernel with one chunk, else by the combine) and its blocks read nothing.
//!
//! # [`attention_combine`]
//! Grid `(rows, ceil(n_heads·head_dim / 128), 1)`: each thread one output element, the
//! chunks' partials merged in chunk order: `O = Σ_c 2^(m_c − M)·acc_c / Σ_c 2^(m_c − M)·l_c`.

#[path = "attention_plan.rs"]
pub mod plan;

use self::plan::{
    active_chunks, chunk_range, ml_offset, stage_offset, tile_row_bytes, ATTN_STAGES, ATTN_THREADS, ATTN_WARPS,
    COMBINE_THREADS, HEADS_PER_BLOCK, KEY_TILE, KV_WRITE_THREADS, WARP_KEYS,
};
use crate::cp_async::{self, cp_async_16, cp_async_16_zfill};
use crate::layout::{frag_c_coord, ldmatrix_a_src, ldmatrix_b_src};
use crate::ldmatrix::{ldmatrix_x4, ldmatrix_x4_trans};
use crate::math::ex2_approx;
use crate::mma::{Bf16, FragA, FragB, FragC, MmaElement, F16};
use crate::pipeline::Pipeline;
use crate::shared::{dynamic_smem_base, ld_shared_v4_b32, st_shared_v4_b32, SmemAddr};
use crate::sync::bar_sync;
use crate::thread::{block_idx_x, block_idx_y, lane_idx, thread_idx_x, warp_idx};
use crate::warp::shfl_bfly_f32;

/// Sixteen bytes, moved with one vector load and store.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Chunk16([u32; 4]);

/// Largest head width in units of 16 (register arrays are sized for it; a kernel uses the
/// first `HD16` entries, the rest fold away).
const MAX_HD16: usize = 8;

/// Writes K and V rows into one layer of the cache.
///
/// # Safety
/// Launched with `KV_WRITE_THREADS` threads and grid `(n, ceil(2·kv_heads·head_dim / 8 /
/// KV_WRITE_THREADS), 1)`; `k` and `v` are `n × ld` 16-bit matrices (16-byte aligned,
/// `ld % 8 == 0`, `ld ≥ kv_heads·head_dim`); `slots` and `positions` hold `n` u32;
/// `k_cache` and `v_cache` (16-byte aligned) hold `cache_slots · kv_heads · max_seq ·
/// head_dim` elements each; `head_dim % 8 == 0`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn kv_write(
    k: *const u16, ldk: u32, v: *const u16, ldv: u32, k_cache: *mut u16, v_cache: *mut u16,
    slots: *const u32, positions: *const u32, kv_heads: u32, head_dim: u32, cache_slots: u32, max_seq: u32,
) {
    let row = block_idx_x() as usize;
    let (kv_heads, hd) = (kv_heads as usize, head_dim as usize);
    let per_matrix = kv_heads * hd / 8;
    let id = block_idx_y() as usize * KV_WRITE_THREADS + thread_idx_x() as usize;
    if id >= 2 * per_matrix {
        return;
    }
    let (slot, pos) = (*slots.add(row), *positions.add(row));
    if slot >= cache_slots || pos >= max_seq {
        return;
    }
    let (src, ld, dst, c) =
        if id < per_matrix { (k, ldk, k_cache, id) } else { (v, ldv, v_cache, id - per_matrix) };
    let e = c * 8;
    let (kh, d) = (e / hd, e % hd);
    let value = (src.add(row * ld as usize + e) as *const Chunk16).read();
    let at = ((slot as usize * kv_heads + kh) * max_seq as usize + pos as usize) * hd + d;
    (dst.add(at) as *mut Chunk16).write(value);
}

/// Two f32 rounded to the element type, packed as an `mma` register (`lo` in the low half:
/// the element of the lower column).
#[inline(always)]
fn pack<E: MmaElement>(lo: f32, hi: f32) -> u32 {
    E::from_f32(lo) as u32 | (E::from_f32(hi) as u32) << 16
}

/// The block's (max, sum) of head rows `g` and `g + 8` after the in-block combine: the
/// maximum of the warps' running maxima and the sum of their sums rescaled to it, in warp
/// order (every thread computes the same bits).
///
/// # Safety
/// The (max, sum) table at `ml` is written and visible (barrier).
#[inline(always)]
unsafe fn block_max_sum(ml: SmemAddr, g: usize) -> ([f32; 2], [f32; 2]) {
    let mut mw = [[0f32; 2]; ATTN_WARPS];
    let mut lw = [[0f32; 2]; ATTN_WARPS];
    let mut big_m = [f32::NEG_INFINITY; 2];
    unroll!(w in 0..ATTN_WARPS => {
        let t = ld_shared_v4_b32(ml.offset((w * 8 + g) * 16));
        mw[w] = [f32::from_bits(t[0]), f32::from_bits(t[2])];
        lw[w] = [f32::from_bits(t[1]), f32::from_bits(t[3])];
        unroll!(h in 0..2 => { big_m[h] = big_m[h].max(mw[w][h]); });
    });
    let mut big_l = [0f32; 2];
    unroll!(w in 0..ATTN_WARPS => {
        unroll!(h in 0..2 => { big_l[h] += lw[w][h] * ex2_approx(mw[w][h] - big_m[h]); });
    });
    (big_m, big_l)
}

/// Causal attention of one query row, one kv head's group of ≤ 16 query heads and one chunk
/// of the row's keys (module docs). `HD16` is the compiled head width in units of 16
/// (`head_dim ≤ 16·HD16`).
///
/// # Safety
/// Launched with `ATTN_THREADS` threads, grid `(n·chunks, kv_heads·ceil(ratio / 16), 1)`
/// (`ratio = n_heads / kv_heads`, `n_heads` a multiple of `kv_heads`, `chunks ≥ 1`) and
/// `plan::attention_smem_bytes(HD16)` bytes of dynamic shared memory. `q` and `out` are `n ×
/// ld` 16-bit matrices (16-byte aligned, `ld % 8 == 0`, `ld ≥ n_heads·head_dim`);
/// `head_dim % 8 == 0`, `head_dim ≤ 16·HD16`; `k_cache`, `v_cache` (16-byte aligned) hold
/// `cache_slots · kv_heads · max_seq · head_dim` elements each; `slots` and `positions`
/// hold `n` u32. With `chunks > 1`, `acc_ws` holds `n · n_heads · chunks · head_dim` f32 and
/// `ml_ws` `n · n_heads · chunks · 2` f32 ([`attention_combine`] then finishes `out`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention<E: MmaElement, const HD16: usize>(
    q: *const u16, ldq: u32, k_cache: *const u16, v_cache: *const u16, out: *mut u16, ldo: u32,
    acc_ws: *mut f32, ml_ws: *mut f32, slots: *const u32, positions: *const u32, n_heads: u32, kv_heads: u32,
    head_dim: u32, cache_slots: u32, max_seq: u32, chunks: u32, scale_log2: f32,
) {
    const { assert!(HD16 >= 1 && HD16 <= MAX_HD16) };
    let rb = tile_row_bytes(HD16);
    let (n_heads, kv_heads, hd) = (n_heads as usize, (kv_heads as usize).max(1), head_dim as usize);
    let chunks = (chunks as usize).max(1);
    let (row, chunk) = (block_idx_x() as usize / chunks, block_idx_x() as usize % chunks);
    let ratio = (n_heads / kv_heads).max(1);
    let groups = ratio.div_ceil(HEADS_PER_BLOCK);
    let (kvh, group) = (block_idx_y() as usize / groups, block_idx_y() as usize % groups);
    let h0 = kvh * ratio + group * HEADS_PER_BLOCK; // first query head of the block
    let nh = (ratio - group * HEADS_PER_BLOCK).min(HEADS_PER_BLOCK); // heads of the block
    let tid = thread_idx_x() as usize;
    let (warp, lane) = (warp_idx() as usize, lane_idx() as usize);
    let direct = chunks == 1;
    let (slot, pos) = (*slots.add(row), *positions.add(row));
    if slot >= cache_slots || pos >= max_seq {
        // Out of range: NaN, never a cache read. With several chunks the combine writes it.
        if direct {
            let o = out.add(row * ldo as usize + h0 * hd);
            let mut e = tid;
            while e < nh * hd {
                *o.add(e) = E::from_f32(f32::NAN);
                e += ATTN_THREADS;
            }
        }
        return;
    }
    let len = pos as usize + 1;
    let (start, end) = chunk_range(len, chunks, chunk);
    if start >= end {
        return; // past the row's last chunk: the combine does not read this one
    }

    // Shared memory: Q tile, the stages' K and V tiles, the (max, sum) table.
    let smem = dynamic_smem_base();
    let q_tile = smem;
    let k_tile = |s: usize| smem.offset(stage_offset(HD16, s));
    let v_tile = |s: usize| smem.offset(stage_offset(HD16, s) + KEY_TILE * rb);
    let ml = smem.offset(ml_offset(HD16));

    // Q: 16 head rows × 2·HD16 chunks of 16 bytes; heads past the block's and columns past
    // head_dim are zeros (their scores are 0 and never written out).
    let q_row = q.add(row * ldq as usize + h0 * hd);
    let mut id = tid;
    while id < HEADS_PER_BLOCK * 2 * HD16 {
        let (r, c) = (id / (2 * HD16), id % (2 * HD16));
        let dst = q_tile.offset(r * rb + c * 16);
        if r < nh && c * 8 < hd {
            cp_async_16(dst, q_row.add(r * hd + c * 8) as *const u8);
        } else {
            cp_async_16_zfill(dst, q_row as *const u8, 0);
        }
        id += ATTN_THREADS;
    }

    // K and V tiles of KEY_TILE keys from `start`; keys past `end` and columns past
    // head_dim are zero-filled without reading memory (a zero V row keeps 0·V finite).
    let head = (slot as usize * kv_heads + kvh) * max_seq as usize * hd;
    let (kp, vp) = (k_cache.add(head), v_cache.add(head));
    let tiles = (end - start).div_ceil(KEY_TILE);
    let load_tile = |t: usize| {
        let s = Pipeline::<ATTN_STAGES>::stage(t);
        let key0 = start + t * KEY_TILE;
        unroll!(i in 0..MAX_HD16 => {
            // KEY_TILE · 2·HD16 chunks per matrix = HD16 per thread.
            if i < HD16 {
                let id = tid + i * ATTN_THREADS;
                let (r, c) = (id / (2 * HD16), id % (2 * HD16));
                let off = r * rb + c * 16;
                let key = key0 + r;
                if key < end && c * 8 < hd {
                    cp_async_16(k_tile(s).offset(off), kp.add(key * hd + c * 8) as *const u8);
                    cp_async_16(v_tile(s).offset(off), vp.add(key * hd + c * 8) as *const u8);
                } else {
                    cp_async_16_zfill(k_tile(s).offset(off), kp as *const u8, 0);
                    cp_async_16_zfill(v_tile(s).offset(off), vp as *const u8, 0);
                }
            }
        });
    };

    // Prologue: Q and the first ATTN_STAGES - 1 tiles (Q travels in tile 0's group).
    let mut t = 0;
    while t < ATTN_STAGES - 1 {
        if t < tiles {
            load_tile(t);
        }
        Pipeline::<ATTN_STAGES>::producer_commit();
        t += 1;
    }

    let mut qa = [FragA::default(); MAX_HD16];
    let mut acc = [FragC::default(); 2 * MAX_HD16]; // 16 heads × 8 columns each
    let mut m = [f32::NEG_INFINITY; 2]; // running max of head rows g, g + 8 (log2 units)
    let mut l = [0f32; 2]; // running sum of this lane's probabilities of those rows
    let mut i = 0;
    while i < tiles {
        Pipeline::<ATTN_STAGES>::consumer_wait();
        if i == 0 {
            unroll!(kk in 0..MAX_HD16 => {
                if kk < HD16 {
                    let (r, c) = ldmatrix_a_src(lane, 0, kk);
                    qa[kk] = FragA(ldmatrix_x4(q_tile.offset(r * rb + c * 16)));
                }
            });
        }
        if i + ATTN_STAGES - 1 < tiles {
            load_tile(i + ATTN_STAGES - 1);
        }
        Pipeline::<ATTN_STAGES>::producer_commit();
        let s = Pipeline::<ATTN_STAGES>::stage(i);
        let key0 = start + i * KEY_TILE + warp * WARP_KEYS; // this warp's first key
        if key0 < end {
            // S = Q·Kᵀ: n-tiles 2·warp, 2·warp + 1 of the tile (keys key0 .. key0 + 16).
            let mut sc = [FragC::default(); 2];
            unroll!(kk in 0..MAX_HD16 => {
                if kk < HD16 {
                    let (r, c) = ldmatrix_b_src(lane, 2 * warp, kk);
                    let b = ldmatrix_x4(k_tile(s).offset(r * rb + c * 16));
                    E::mma_m16n8k16(&mut sc[0], &qa[kk], &FragB([b[0], b[1]]));
                    E::mma_m16n8k16(&mut sc[1], &qa[kk], &FragB([b[2], b[3]]));
                }
            });
            // Scores in log2 units, -inf past the chunk; row maxima over the quad.
            let mut st = [[0f32; 4]; 2];
            let mut mx = [f32::NEG_INFINITY; 2];
            unroll!(nt in 0..2 => {
                unroll!(e in 0..4 => {
                    let (_, col) = frag_c_coord(lane, e);
                    let x = if key0 + nt * 8 + col < end { sc[nt].0[e] * scale_log2 } else { f32::NEG_INFINITY };
                    st[nt][e] = x;
                    mx[e / 2] = mx[e / 2].max(x);
                });
            });
            let mut mu = [0f32; 2]; // the max the exponentials are taken against
            let mut alpha = [0f32; 2]; // rescaling of the old state
            unroll!(h in 0..2 => {
                mx[h] = mx[h].max(shfl_bfly_f32(mx[h], 1));
                mx[h] = mx[h].max(shfl_bfly_f32(mx[h], 2));
                let m_new = m[h].max(mx[h]);
                // A row with no key yet stays at -inf; 0 keeps 2^(-inf - 0) = 0 instead of NaN.
                mu[h] = if m_new == f32::NEG_INFINITY { 0.0 } else { m_new };
                alpha[h] = ex2_approx(m[h] - mu[h]);
                m[h] = m_new;
                l[h] *= alpha[h];
            });
            unroll!(j in 0..2 * MAX_HD16 => {
                if j < 2 * HD16 {
                    unroll!(e in 0..4 => { acc[j].0[e] *= alpha[e / 2]; });
                }
            });
            // P = 2^(S - max): the C fragments of S are the A fragment of P (a0a1 = row g
            // keys 2t.., a2a3 = row g + 8, a4a5 / a6a7 = keys 8 + 2t..).
            let mut pa = [0u32; 4];
            unroll!(nt in 0..2 => {
                let p = [
                    ex2_approx(st[nt][0] - mu[0]),
                    ex2_approx(st[nt][1] - mu[0]),
                    ex2_approx(st[nt][2] - mu[1]),
                    ex2_approx(st[nt][3] - mu[1]),
                ];
                l[0] += p[0] + p[1];
                l[1] += p[2] + p[3];
                pa[2 * nt] = pack::<E>(p[0], p[1]);
                pa[2 * nt + 1] = pack::<E>(p[2], p[3]);
            });
            let pf = FragA(pa);
            // O += P·V: V rows (keys) are the k dimension, so `ldmatrix.trans` gives the B
            // fragments of two 8-column n-tiles per load.
            unroll!(dp in 0..MAX_HD16 => {
                if dp < HD16 {
                    let (r, c) = (warp * WARP_KEYS + lane % 16, dp * 2 + lane / 16);
                    let b = ldmatrix_x4_trans(v_tile(s).offset(r * rb + c * 16));
                    E::mma_m16n8k16(&mut acc[2 * dp], &pf, &FragB([b[0], b[1]]));
                    E::mma_m16n8k16(&mut acc[2 * dp + 1], &pf, &FragB([b[2], b[3]]));
                }
            });
        }
        i += 1;
    }
    cp_async::wait_group::<0>();
    bar_sync(); // every warp is done with the tiles: the stage area becomes scratch

    // In-block combine. Each quad's lanes hold partial sums of rows g, g + 8.
    unroll!(h in 0..2 => {
        l[h] += shfl_bfly_f32(l[h], 1);
        l[h] += shfl_bfly_f32(l[h], 2);
    });
    let g = lane / 4;
    if lane % 4 == 0 {
        st_shared_v4_b32(ml.offset((warp * 8 + g) * 16), [m[0].to_bits(), l[0].to_bits(), m[1].to_bits(), l[1].to_bits()]);
    }
    bar_sync();
    // Every warp's accumulator, rescaled to the block max, as whole C fragments:
    // scratch[warp][j][lane] (16 bytes each).
    let scratch = smem.offset(stage_offset(HD16, 0));
    let frag_at = |w: usize, j: usize, ln: usize| scratch.offset(((w * 2 * HD16 + j) * 32 + ln) * 16);
    let (big_m, _) = block_max_sum(ml, g);
    let f = [ex2_approx(m[0] - big_m[0]), ex2_approx(m[1] - big_m[1])];
    unroll!(j in 0..2 * MAX_HD16 => {
        if j < 2 * HD16 {
            let c = acc[j].0;
            let v = [c[0] * f[0], c[1] * f[0], c[2] * f[1], c[3] * f[1]];
            st_shared_v4_b32(frag_at(warp, j, lane), v.map(f32::to_bits));
        }
    });
    bar_sync();
    // Thread `id` sums fragment j = id / 32 of lane id % 32 over the warps (in order).
    let rec = row * n_heads + h0; // the block's first (row, head) record
    let mut id = tid;
    while id < 2 * HD16 * 32 {
        let (j, ln) = (id / 32, id % 32);
        let mut sum = [0f32; 4];
        unroll!(w in 0..ATTN_WARPS => {
            let v = ld_shared_v4_b32(frag_at(w, j, ln));
            unroll!(e in 0..4 => { sum[e] += f32::from_bits(v[e]); });
        });
        let (_, big_l) = block_max_sum(ml, ln / 4);
        unroll!(e in 0..4 => {
            let (r, col) = frag_c_coord(ln, e);
            let d = 8 * j + col;
            if r < nh && d < hd {
                if direct {
                    *out.add(row * ldo as usize + (h0 + r) * hd + d) = E::from_f32(sum[e] / big_l[e / 2]);
                } else {
                    *acc_ws.add(((rec + r) * chunks + chunk) * hd + d) = sum[e];
                }
            }
        });
        id += ATTN_THREADS;
    }
    if !direct && tid < nh {
        let (big_m, big_l) = block_max_sum(ml, tid % 8);
        let at = ml_ws.add(((rec + tid) * chunks + chunk) * 2);
        // (Constant indices: a register array indexed at run time would go to local memory.)
        let (mm, ll) = if tid < 8 { (big_m[0], big_l[0]) } else { (big_m[1], big_l[1]) };
        *at = mm;
        *at.add(1) = ll;
    }
}

/// Merges the chunks' partial results of [`attention`] into `out` (module docs).
///
/// # Safety
/// Launched with `COMBINE_THREADS` threads and grid `(n, ceil(n_heads·head_dim /
/// COMBINE_THREADS), 1)` after an [`attention`] launch with the same arguments and
/// `chunks > 1` (which wrote the partials of every active chunk of every in-range row).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_combine<E: MmaElement>(
    acc_ws: *const f32, ml_ws: *const f32, out: *mut u16, ldo: u32, slots: *const u32, positions: *const u32,
    n_heads: u32, head_dim: u32, cache_slots: u32, max_seq: u32, chunks: u32,
) {
    let row = block_idx_x() as usize;
    let (n_heads, hd, chunks) = (n_heads as usize, head_dim as usize, (chunks as usize).max(1));
    let e = block_idx_y() as usize * COMBINE_THREADS + thread_idx_x() as usize;
    if e >= n_heads * hd {
        return;
    }
    let dst = out.add(row * ldo as usize + e);
    let (slot, pos) = (*slots.add(row), *positions.add(row));
    if slot >= cache_slots || pos >= max_seq {
        *dst = E::from_f32(f32::NAN);
        return;
    }
    let (h, d) = (e / hd, e % hd);
    let active = active_chunks(pos as usize + 1, chunks);
    let rec = (row * n_heads + h) * chunks;
    let mut big_m = f32::NEG_INFINITY;
    let mut c = 0;
    while c < active {
        big_m = big_m.max(*ml_ws.add((rec + c) * 2));
        c += 1;
    }
    let (mut l, mut o) = (0f32, 0f32);
    let mut c = 0;
    while c < active {
        let f = ex2_approx(*ml_ws.add((rec + c) * 2) - big_m);
        l += *ml_ws.add((rec + c) * 2 + 1) * f;
        o += *acc_ws.add((rec + c) * hd + d) * f;
        c += 1;
    }
    *dst = E::from_f32(o / l);
}

/// [`kv_write`] (the element type does not matter: 16-bit values are copied).
///
/// # Safety
/// See [`kv_write`].
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn attention_kv_write(
    k: *const u16, ldk: u32, v: *const u16, ldv: u32, k_cache: *mut u16, v_cache: *mut u16,
    slots: *const u32, positions: *const u32, kv_heads: u32, head_dim: u32, cache_slots: u32, max_seq: u32,
) {
    crate::griddep::begin_dependent();
    kv_write(k, ldk, v, ldv, k_cache, v_cache, slots, positions, kv_heads, head_dim, cache_slots, max_seq);
}

macro_rules! attention_entries {
    ($($name:ident: $elem:ty, $hd16:literal;)*) => {$(
        /// Attention over the KV cache (see [`attention`]).
        ///
        /// # Safety
        /// See [`attention`].
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name(
            q: *const u16, ldq: u32, k_cache: *const u16, v_cache: *const u16, out: *mut u16, ldo: u32,
            acc_ws: *mut f32, ml_ws: *mut f32, slots: *const u32, positions: *const u32, n_heads: u32,
            kv_heads: u32, head_dim: u32, cache_slots: u32, max_seq: u32, chunks: u32, scale_log2: f32,
        ) {
            crate::griddep::begin_dependent();
            attention::<$elem, $hd16>(
                q, ldq, k_cache, v_cache, out, ldo, acc_ws, ml_ws, slots, positions, n_heads, kv_heads, head_dim,
                cache_slots, max_seq, chunks, scale_log2,
            );
        }
    )*};
}

macro_rules! combine_entries {
    ($($name:ident: $elem:ty;)*) => {$(
        /// Merges the chunks of a split attention (see [`attention_combine`]).
        ///
        /// # Safety
        /// See [`attention_combine`].
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name(
            acc_ws: *const f32, ml_ws: *const f32, out: *mut u16, ldo: u32, slots: *const u32,
            positions: *const u32, n_heads: u32, head_dim: u32, cache_slots: u32, max_seq: u32, chunks: u32,
        ) {
            crate::griddep::begin_dependent();
            attention_combine::<$elem>(acc_ws, ml_ws, out, ldo, slots, positions, n_heads, head_dim, cache_slots, max_seq, chunks);
        }
    )*};
}

// One entry per element type and compiled head width (`plan::HEAD_DIM_CONFIGS`, × 16).
attention_entries! {
    attention_f16_d32: F16, 2;
    attention_f16_d64: F16, 4;
    attention_f16_d80: F16, 5;
    attention_f16_d96: F16, 6;
    attention_f16_d128: F16, 8;
    attention_bf16_d32: Bf16, 2;
    attention_bf16_d64: Bf16, 4;
    attention_bf16_d80: Bf16, 5;
    attention_bf16_d96: Bf16, 6;
    attention_bf16_d128: Bf16, 8;
}

combine_entries! {
    attention_combine_f16: F16;
    attention_combine_bf16: Bf16;
}
