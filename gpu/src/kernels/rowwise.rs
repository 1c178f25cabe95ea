//! Pieces shared by the model-operation kernels (`norm`, `elementwise`, `embed`, `rope`,
//! `sample`): 16-byte chunks of a row, the grid-stride walk over the chunks of a matrix, and
//! block-wide reductions and scans.
//!
//! Matrices are row-major 16-bit elements with a leading dimension `ld` that is a multiple of 8
//! (16 bytes) and rows that start 16-byte aligned (`host/src/matrix.rs`), so a row of `cols`
//! elements is [`row_chunks`]`(cols)` chunks of 8 elements, each read and written with one
//! 16-byte access. The padding elements of the last chunk (columns `cols..⌈cols/8⌉·8`) are
//! zero and stay zero: [`pack`] writes zeros there whatever was computed. Columns past the
//! last chunk (up to `ld`, in a matrix over the caller's memory or a view of a wider one) are
//! neither read nor written, and every operand of a kernel has its own `ld`.
//!
//! The block-wide operations use the first [`SCRATCH_BYTES`] of dynamic shared memory (one
//! 8-byte slot per warp) and work for any block of 32–1024 threads that is a whole number of
//! warps. They are called by every thread of the block from block-uniform control flow (they
//! contain barriers), and return the same value, bit for bit, to every thread.

use crate::mma::MmaElement;
use crate::shared::{dynamic_smem_base, ld_shared_v2_b32, st_shared_v2_b32, SmemAddr};
use crate::sync::bar_sync;
use crate::thread::{block_dim_x, block_idx_x, grid_dim_x, lane_idx, thread_idx_x, warp_idx};
use crate::warp::{shfl_bfly, shfl_up};

/// Dynamic shared memory the block-wide operations need: 8 bytes for each of up to 32 warps.
pub const SCRATCH_BYTES: usize = 32 * 8;

/// Eight 16-bit elements, read or written with one 16-byte access.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Chunk([u16; 8]);

/// Loads the 8 elements at `p`.
///
/// # Safety
/// `p` is 16-byte aligned and points at 8 readable elements.
#[inline(always)]
pub unsafe fn load(p: *const u16) -> [u16; 8] {
    (p as *const Chunk).read().0
}

/// Stores 8 elements at `p`.
///
/// # Safety
/// `p` is 16-byte aligned and points at 8 writable elements.
#[inline(always)]
pub unsafe fn store(p: *mut u16, v: [u16; 8]) {
    (p as *mut Chunk).write(Chunk(v))
}

/// The 8 elements as f32 (exact).
#[inline(always)]
pub fn widen<E: MmaElement>(c: [u16; 8]) -> [f32; 8] {
    let mut v = [0.0f32; 8];
    unroll!(i in 0..8 => { v[i] = E::to_f32(c[i]); });
    v
}

/// The first `valid` values rounded to `E` (round to nearest even), zeros after them (the
/// padding of a row's last chunk).
#[inline(always)]
pub fn pack<E: MmaElement>(v: [f32; 8], valid: usize) -> [u16; 8] {
    let mut c = [0u16; 8];
    unroll!(i in 0..8 => { if i < valid { c[i] = E::from_f32(v[i]); } });
    c
}

/// The number of real (non-padding) elements of chunk `chunk` of a row of `cols` elements
/// (1..=8 for the chunks a row has).
#[inline(always)]
pub fn valid_in(chunk: usize, cols: usize) -> usize {
    let start = chunk * 8;
    if cols >= start + 8 { 8 } else { cols.saturating_sub(start) }
}

/// The 16-byte chunks of a row of `cols` elements, `⌈cols/8⌉` (the last one may end in
/// padding).
#[inline(always)]
pub fn row_chunks(cols: usize) -> usize {
    cols.div_ceil(8)
}

/// Calls `f(row, chunk)` for every chunk of a `rows × (8·chunks_per_row)` matrix, the chunks
/// spread over all threads of the grid (grid-stride, in row-major order: consecutive threads
/// take consecutive chunks, so a warp reads contiguous bytes). The chunk's element offset in
/// an operand of leading dimension `ld` is `row · ld + 8 · chunk`. Row and chunk are stepped
/// incrementally, with one 64-bit division per thread, so matrices of more than 2³² chunks
/// work.
#[inline(always)]
pub fn for_each_chunk(rows: usize, chunks_per_row: usize, mut f: impl FnMut(usize, usize)) {
    let total = rows * chunks_per_row;
    let first = block_idx_x() as usize * block_dim_x() as usize + thread_idx_x() as usize;
    let stride = grid_dim_x() as usize * block_dim_x() as usize;
    // (`chunks_per_row` ≥ 1 for a real matrix; the test also spares the divisions a
    // division-by-zero trap.)
    if first >= total || chunks_per_row == 0 {
        return;
    }
    let (mut row, mut chunk) = (first / chunks_per_row, first % chunks_per_row);
    let (step_rows, step_chunks) = (stride / chunks_per_row, stride % chunks_per_row);
    let mut i = first;
    while i < total {
        f(row, chunk);
        i += stride;
        row += step_rows;
        chunk += step_chunks;
        if chunk >= chunks_per_row {
            chunk -= chunks_per_row;
            row += 1;
        }
    }
}

/// A value the block-wide operations can move through a 64-bit shuffle and slot.
pub trait Lane: Copy {
    fn to_bits(self) -> u64;
    fn from_bits(b: u64) -> Self;
}

impl Lane for u64 {
    #[inline(always)]
    fn to_bits(self) -> u64 {
        self
    }
    #[inline(always)]
    fn from_bits(b: u64) -> Self {
        b
    }
}

impl Lane for u32 {
    #[inline(always)]
    fn to_bits(self) -> u64 {
        self as u64
    }
    #[inline(always)]
    fn from_bits(b: u64) -> Self {
        b as u32
    }
}

impl Lane for f32 {
    #[inline(always)]
    fn to_bits(self) -> u64 {
        f32::to_bits(self) as u64
    }
    #[inline(always)]
    fn from_bits(b: u64) -> Self {
        f32::from_bits(b as u32)
    }
}

/// Shuffles 64 bits as two 32-bit halves.
///
/// # Safety
/// Warp-uniform, as [`shfl_bfly`].
#[inline(always)]
unsafe fn bfly<T: Lane>(v: T, mask: u32) -> T {
    let b = v.to_bits();
    let lo = shfl_bfly(b as u32, mask);
    let hi = shfl_bfly((b >> 32) as u32, mask);
    T::from_bits(((hi as u64) << 32) | lo as u64)
}

/// As [`bfly`], with [`shfl_up`].
#[inline(always)]
unsafe fn up(v: u64, delta: u32) -> u64 {
    let lo = shfl_up(v as u32, delta);
    let hi = shfl_up((v >> 32) as u32, delta);
    ((hi as u64) << 32) | lo as u64
}

/// Slot `i` of the scratch (8 bytes).
#[inline(always)]
fn slot(i: u32) -> SmemAddr {
    dynamic_smem_base().offset(8 * i as usize)
}

#[inline(always)]
unsafe fn put(i: u32, v: u64) {
    st_shared_v2_b32(slot(i), [v as u32, (v >> 32) as u32]);
}

#[inline(always)]
unsafe fn get(i: u32) -> u64 {
    let [lo, hi] = ld_shared_v2_b32(slot(i));
    ((hi as u64) << 32) | lo as u64
}

/// `op` over the values of all threads of the block, the same bits in every thread.
///
/// `op` must be commutative (`op(a, b) == op(b, a)` bit for bit: sums, max, min): each warp
/// combines by butterfly, where both partners of a step compute `op` of the same two values,
/// so all lanes agree; then every thread folds the per-warp results in warp order. The
/// grouping is fixed by the block size alone, so results are reproducible run to run.
///
/// # Safety
/// Called by every thread of the block (block-uniform control flow); the launch has at least
/// [`SCRATCH_BYTES`] of dynamic shared memory, and the block is whole warps.
#[inline(always)]
pub unsafe fn block_reduce<T: Lane>(v: T, op: impl Fn(T, T) -> T) -> T {
    let mut w = v;
    unroll!(i in 0..5 => { w = op(w, bfly(w, (16 >> i) as u32)); });
    if lane_idx() == 0 {
        put(warp_idx(), w.to_bits());
    }
    bar_sync();
    let mut acc = T::from_bits(get(0));
    let warps = block_dim_x() / 32;
    let mut i = 1;
    while i < warps {
        acc = op(acc, T::from_bits(get(i)));
        i += 1;
    }
    // The slots are free again only once every thread has read them.
    bar_sync();
    acc
}

/// Sum over the block (f32, see [`block_reduce`] for the order).
///
/// # Safety
/// As [`block_reduce`].
#[inline(always)]
pub unsafe fn block_sum_f32(v: f32) -> f32 {
    block_reduce(v, |a, b| a + b)
}

/// Sum over the block (u64, exact: the caller keeps it below 2⁶⁴).
///
/// # Safety
/// As [`block_reduce`].
#[inline(always)]
pub unsafe fn block_sum_u64(v: u64) -> u64 {
    block_reduce(v, |a, b| a + b)
}

/// Largest value over the block.
///
/// # Safety
/// As [`block_reduce`].
#[inline(always)]
pub unsafe fn block_max<T: Lane + Ord>(v: T) -> T {
    block_reduce(v, |a, b| if b > a { b } else { a })
}

/// Smallest value over the block.
///
/// # Safety
/// As [`block_reduce`].
#[inline(always)]
pub unsafe fn block_min<T: Lane + Ord>(v: T) -> T {
    block_reduce(v, |a, b| if b < a { b } else { a })
}

/// Exclusive prefix sum over the block in thread order, and the total: thread t gets
/// `(v₀ + … + v_{t−1}, v₀ + … + v_{last})`. Integers, so exact in any grouping (the caller
/// keeps the total below 2⁶⁴).
///
/// # Safety
/// As [`block_reduce`].
#[inline(always)]
pub unsafe fn block_exclusive_scan_u64(v: u64) -> (u64, u64) {
    let lane = lane_idx();
    let mut incl = v;
    unroll!(i in 0..5 => {
        let d = 1u32 << i;
        let t = up(incl, d);
        if lane >= d {
            incl += t;
        }
    });
    if lane == 31 {
        put(warp_idx(), incl);
    }
    bar_sync();
    let (me, warps) = (warp_idx(), block_dim_x() / 32);
    let (mut before, mut total) = (0u64, 0u64);
    let mut i = 0;
    while i < warps {
        let t = get(i);
        if i < me {
            before += t;
        }
        total += t;
        i += 1;
    }
    bar_sync();
    (before + incl - v, total)
}
