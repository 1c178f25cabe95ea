//! Split-K reduction: `Y[n][m] = Σ_s partial[s][n][m]`, summed in split order so the result
//! is bit-identical from run to run.

use crate::mma::MmaElement;
use crate::thread::{block_dim_x, block_idx_x, thread_idx_x};

/// # Safety
/// Launched with `layout::REDUCE_THREADS` threads and `ceil(m·n / REDUCE_THREADS)` blocks;
/// `partial` holds `splits·n·m` f32, `y` is `n × ldy` with `ldy ≥ m`.
#[inline(always)]
pub unsafe fn splitk_reduce<E: MmaElement>(
    partial: *const f32, y: *mut u16, ldy: u32, m: u32, n: u32, splits: u32,
) {
    let (m, n, splits) = (m.max(1) as usize, n as usize, splits as usize);
    let idx = block_idx_x() as usize * block_dim_x() as usize + thread_idx_x() as usize;
    if idx >= m * n {
        return;
    }
    let mut sum = 0.0f32;
    let mut s = 0;
    while s < splits {
        sum += *partial.add(s * m * n + idx);
        s += 1;
    }
    let (gn, gm) = (idx / m, idx % m);
    *y.add(gn * ldy as usize + gm) = E::from_f32(sum);
}
