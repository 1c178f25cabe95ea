//! Choosing the next token from each row of logits: greedy (`argmax`) and sampled (`sample`:
//! temperature, top-k, top-p).
//!
//! One block per row (grid-stride over rows); rows of any length (vocabularies of 256k and
//! more) are read in 16-byte chunks, thread t taking chunks t, t + blockDim, …; everything is
//! decided from block-wide counts, sums and scans, so the result depends on the logits, the
//! parameters, the seed, the step and the row alone — not on the block size or the timing.
//!
//! Logits are compared through *order keys*: the 16 bits of an f16/bf16 mapped to a u32 that
//! orders like the value (−0 and +0 share one key), with 0 reserved for NaN, which is never a
//! candidate. A threshold on the value is then a threshold on an integer in `1..=0xFFFF`, found
//! exactly by bisection in at most 16 passes over the row.

use super::rowwise::{block_exclusive_scan_u64, block_max, block_min, block_reduce, load, valid_in};
use crate::mma::MmaElement;
use crate::numerics::{covers, draw, sample_bits, sample_weight, weight_shift, NO_TOKEN};
use crate::thread::{block_dim_x, block_idx_x, grid_dim_x, thread_idx_x};

/// The order key of a 16-bit float (see the module docs): 0 for NaN, else 1..=0xFFFF, larger
/// for larger values. Sign-magnitude bits map to an unsigned order by flipping the sign bit of
/// positives and all bits of negatives; −0 is first made +0. The smallest key of a non-NaN
/// value, that of −Inf, is 0x03FF (f16) or 0x007F (bf16).
#[inline(always)]
fn key<E: MmaElement>(bits: u16) -> u32 {
    if E::to_f32(bits).is_nan() {
        return 0;
    }
    let b = if bits & 0x7FFF == 0 { 0 } else { bits };
    (if b & 0x8000 != 0 { !b } else { b | 0x8000 }) as u32
}

/// The bits of the value whose (non-zero) key is `k`: the inverse of [`key`].
#[inline(always)]
fn key_bits(k: u32) -> u16 {
    let k = k as u16;
    if k & 0x8000 != 0 { k ^ 0x8000 } else { !k }
}

/// Calls `f(index, bits)` for every element of the row at `row` (`cols` elements), the
/// chunks shared among the block's threads in turn.
///
/// # Safety
/// `row` points at `8 · ceil(cols / 8)` readable elements, 16-byte aligned.
#[inline(always)]
unsafe fn for_each_strided(row: *const u16, cols: usize, mut f: impl FnMut(usize, u16)) {
    let chunks = cols.div_ceil(8);
    let mut c = thread_idx_x() as usize;
    while c < chunks {
        let (bits, valid) = (load(row.add(8 * c)), valid_in(c, cols));
        unroll!(i in 0..8 => {
            if i < valid {
                f(8 * c + i, bits[i]);
            }
        });
        c += block_dim_x() as usize;
    }
}

/// Index of the largest logit of each row: ties go to the lowest index, NaN never wins, and a
/// row of NaN alone gives [`NO_TOKEN`].
///
/// The block-wide maximum of `(key << 32) | !index` (a u64) is exactly that: a larger key
/// first, then a smaller index.
///
/// # Safety
/// Launched with a one-dimensional block of whole warps and `rowwise::SCRATCH_BYTES` of
/// dynamic shared memory, any grid; `logits` is `rows × ld` (16-byte aligned, `ld` a multiple
/// of 8 ≥ `cols`, `cols < 2³²−1`); `out` holds `rows` writable u32.
#[inline(always)]
pub unsafe fn argmax<E: MmaElement>(logits: *const u16, rows: u32, cols: u32, ld: u32, out: *mut u32) {
    let (rows, cols, ld) = (rows as usize, cols as usize, ld as usize);
    let mut row = block_idx_x() as usize;
    while row < rows {
        let mut best = 0u64;
        for_each_strided(logits.add(row * ld), cols, |i, bits| {
            let k = key::<E>(bits);
            let packed = ((k as u64) << 32) | !(i as u32) as u64;
            if k != 0 && packed > best {
                best = packed;
            }
        });
        let best = block_max(best);
        if thread_idx_x() == 0 {
            *out.add(row) = if best == 0 { NO_TOKEN } else { !(best as u32) };
        }
        row += grid_dim_x() as usize;
    }
}

/// One token per row, drawn from softmax(logits / temperature) restricted to the top-k
/// logits, then to the top-p nucleus (see `host/src/ops/sample.rs` for the contract):
///
/// 1. one pass: the largest and smallest key and the number of non-NaN logits (none: the row
///    gets [`NO_TOKEN`]);
/// 2. top-k (`0 < top_k <` that number): the largest key τ with at least `top_k` logits at or
///    above it, by bisection on the key (≤ 16 counting passes): ties at the k-th value are
///    all kept;
/// 3. the weights `sample_weight` (integers ∝ exp((v − max) / temperature)) and their total W
///    above τ; top-p (`top_p < 1`): the largest key τ' ≥ τ whose logits at or above it carry
///    at least `top_p · W` (`covers`), by bisection (≤ 16 passes of sums);
/// 4. the draw: the target `draw(M, sample_bits(seed, step, row))` ∈ [0, M), M the weight
///    above τ', and the token is the one whose cumulative weight, in index order, first
///    exceeds it. Each thread sums the weights of its own contiguous segment of the row, a
///    block-wide exclusive scan gives every segment's starting sum, and the thread whose
///    segment holds the target walks it.
///
/// All sums are exact integers, so the token equals the one the host reference
/// (`sparse_tc::ops::reference::sample`) picks from the same logits.
///
/// # Safety
/// As [`argmax`]; `temperature` > 0 and finite, `top_p` ∈ [0, 1].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn sample<E: MmaElement>(
    logits: *const u16, rows: u32, cols: u32, ld: u32, out: *mut u32, temperature: f32, top_k: u32, top_p: f32,
    seed: u64, step: u64,
) {
    let shift = weight_shift(cols);
    let (rows, cols, ld) = (rows as usize, cols as usize, ld as usize);
    let (tid, threads) = (thread_idx_x() as usize, block_dim_x() as usize);
    // The contiguous segment of the final walk: whole chunks, so loads stay aligned.
    let seg = cols.div_ceil(8).div_ceil(threads) * 8;
    let (start, end) = ((tid * seg).min(cols), (tid * seg + seg).min(cols));
    let mut row = block_idx_x() as usize;
    while row < rows {
        let logits = logits.add(row * ld);
        let (mut kmax, mut kmin, mut valid) = (0u32, u32::MAX, 0u32);
        for_each_strided(logits, cols, |_, bits| {
            let k = key::<E>(bits);
            if k != 0 {
                kmax = kmax.max(k);
                kmin = kmin.min(k);
                valid += 1;
            }
        });
        let (kmax, kmin, valid) = (block_max(kmax), block_min(kmin), block_reduce(valid, |a, b| a + b));
        if valid == 0 {
            if tid == 0 {
                *out.add(row) = NO_TOKEN;
            }
            row += grid_dim_x() as usize;
            continue;
        }
        let vmax = E::to_f32(key_bits(kmax));
        let weight = |bits: u16| sample_weight(E::to_f32(bits), vmax, temperature, shift);
        // Logits at or above key `t`: how many, and their weight.
        let count = |t: u32| {
            let mut n = 0u32;
            for_each_strided(logits, cols, |_, bits| n += u32::from(key::<E>(bits) >= t));
            block_reduce(n, |a, b| a + b)
        };
        let mass = |t: u32| {
            let mut m = 0u64;
            for_each_strided(logits, cols, |_, bits| {
                if key::<E>(bits) >= t {
                    m += weight(bits);
                }
            });
            block_reduce(m, |a, b| a + b)
        };
        // Keys at or above `lo` are candidates (`lo ≥ kmin ≥ 1`: never NaN).
        let mut lo = kmin;
        if top_k != 0 && top_k < valid {
            let mut hi = kmax;
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if count(mid) >= top_k {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
        }
        let mut kept = mass(lo);
        if top_p < 1.0 {
            let total = kept;
            let mut hi = kmax;
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                let m = mass(mid);
                if covers(m, total, top_p) {
                    lo = mid;
                    kept = m;
                } else {
                    hi = mid - 1;
                }
            }
        }
        let target = draw(kept, sample_bits(seed, step, row as u64));
        // This thread's segment: its weight, then where it starts in the row's cumulative sum.
        let mut mine = 0u64;
        let mut i = start;
        while i < end {
            let bits = load(logits.add(i));
            unroll!(j in 0..8 => {
                if i + j < end && key::<E>(bits[j]) >= lo {
                    mine += weight(bits[j]);
                }
            });
            i += 8;
        }
        let (before, _) = block_exclusive_scan_u64(mine);
        if before <= target && target < before + mine {
            let mut acc = before;
            let mut i = start;
            'walk: while i < end {
                let bits = load(logits.add(i));
                unroll!(j in 0..8 => {
                    if i + j < end && key::<E>(bits[j]) >= lo {
                        acc += weight(bits[j]);
                        if acc > target {
                            *out.add(row) = (i + j) as u32;
                            break 'walk;
                        }
                    }
                });
                i += 8;
            }
        }
        row += grid_dim_x() as usize;
    }
}
