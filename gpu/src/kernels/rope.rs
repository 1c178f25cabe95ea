//! Rotary position embedding, in place, on rows of `heads` heads of `head_dim` columns each.
//!
//! Pair j of a head (j < head_dim/2) is rotated by the angle `pos · inv_freq_j`, both computed
//! as Hugging Face `transformers` does in f32 (`numerics::rope_inv_freq`), with sin and cos
//! from an f64 range reduction (`numerics::sin_cos`: accurate at the 10⁵–10⁶ rad that long
//! contexts reach). Which columns form pair j depends on the checkpoint's layout:
//! `(j, j + head_dim/2)` (Hugging Face LLaMA, "half split") or `(2j, 2j + 1)` (Meta and GGUF,
//! "interleaved").
//!
//! Thread layout: a block of `pairs · h` threads (the host picks h) serves a *work item*, h
//! heads of one row: item `i` is row `i / groups`, heads `h · (i % groups) ..` with `groups =
//! ⌈heads / h⌉`, and blocks walk the items grid-stride. Thread t owns pair `j = t % pairs` of
//! head `t / pairs` of the item: one load of each of its two values, one (sin, cos), one store
//! of each. (Giving a thread every h-th head of a row instead made a batch-1 step one block
//! per row whose threads each rotated a head after another, every round waiting on its
//! loads: `benches/results/NOTES.md` item 55.) `inv_freq_j` is computed once per thread. No
//! shared memory, no barriers.

use crate::mma::MmaElement;
use crate::numerics::{rope_inv_freq, sin_cos};
use crate::thread::{block_dim_x, block_idx_x, grid_dim_x, thread_idx_x};

/// Rotates every head of every row of `x` by `positions[row]`.
///
/// # Safety
/// One-dimensional blocks whose size is a multiple of `head_dim / 2`, any grid; `x` is `rows × ld` with
/// `heads · head_dim ≤ ld`, `head_dim` even and ≥ 2; `positions` holds `rows` readable u32.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn rope<E: MmaElement, const INTERLEAVED: bool>(
    x: *mut u16, positions: *const u32, rows: u32, ld: u32, heads: u32, head_dim: u32, theta: f32,
) {
    let pairs = head_dim / 2;
    if pairs == 0 {
        return;
    }
    let t = thread_idx_x();
    // `max(1)`: both are ≥ 1 under the contract; this lets the compiler know (no division
    // by zero to guard).
    let (j, head_in_item, per_item) = (t % pairs, t / pairs, (block_dim_x() / pairs).max(1));
    let inv_freq = rope_inv_freq(theta, j, head_dim);
    let (i0, i1) = if INTERLEAVED { (2 * j, 2 * j + 1) } else { (j, j + pairs) };
    let (rows, ld) = (rows as usize, ld as usize);
    let groups = (heads.div_ceil(per_item) as usize).max(1);
    let items = rows * groups;
    let mut item = block_idx_x() as usize;
    while item < items {
        let (row, group) = (item / groups, item % groups);
        let h = group as u32 * per_item + head_in_item;
        if h < heads {
            let angle = *positions.add(row) as f32 * inv_freq;
            let (sin, cos) = sin_cos(angle);
            let base = x.add(row * ld + (h * head_dim) as usize);
            let (p0, p1) = (base.add(i0 as usize), base.add(i1 as usize));
            let (x0, x1) = (E::to_f32(*p0), E::to_f32(*p1));
            *p0 = E::from_f32(x0 * cos - x1 * sin);
            *p1 = E::from_f32(x1 * cos + x0 * sin);
        }
        item += grid_dim_x() as usize;
    }
}
