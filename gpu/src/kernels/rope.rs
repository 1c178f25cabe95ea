//! Rotary position embedding, in place, on rows of `heads` heads of `head_dim` columns each.
//!
//! Pair j of a head (j < head_dim/2) is rotated by the angle `pos · inv_freq_j`, both computed
//! as Hugging Face `transformers` does in f32 (`numerics::rope_inv_freq`), with sin and cos
//! from an f64 range reduction (`numerics::sin_cos`: accurate at the 10⁵–10⁶ rad that long
//! contexts reach). Which columns form pair j depends on the checkpoint's layout:
//! `(j, j + head_dim/2)` (Hugging Face LLaMA, "half split") or `(2j, 2j + 1)` (Meta and GGUF,
//! "interleaved").
//!
//! Thread layout: a block of `pairs · h` threads (the host picks h); thread t owns pair
//! `j = t % pairs` of heads `t / pairs`, `+ h`, `+ 2h`, … of each row it visits (grid-stride
//! over rows by block), so it computes `inv_freq_j` once and one (sin, cos) per row, shared by
//! its heads. No shared memory, no barriers.

use crate::mma::MmaElement;
use crate::numerics::{rope_inv_freq, sin_cos};
use crate::thread::{block_dim_x, block_idx_x, grid_dim_x, thread_idx_x};

/// Rotates every head of every row of `x` by `positions[row]`.
///
/// # Safety
/// One-dimensional blocks whose size is a multiple of `head_dim / 2`; `x` is `rows × ld` with
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
    let (j, first_head, head_step) = (t % pairs, t / pairs, block_dim_x() / pairs);
    let inv_freq = rope_inv_freq(theta, j, head_dim);
    let (i0, i1) = if INTERLEAVED { (2 * j, 2 * j + 1) } else { (j, j + pairs) };
    let (rows, ld) = (rows as usize, ld as usize);
    let mut row = block_idx_x() as usize;
    while row < rows {
        let angle = *positions.add(row) as f32 * inv_freq;
        let (sin, cos) = sin_cos(angle);
        let mut h = first_head;
        while h < heads {
            let base = x.add(row * ld + (h * head_dim) as usize);
            let (p0, p1) = (base.add(i0 as usize), base.add(i1 as usize));
            let (x0, x1) = (E::to_f32(*p0), E::to_f32(*p1));
            *p0 = E::from_f32(x0 * cos - x1 * sin);
            *p1 = E::from_f32(x1 * cos + x0 * sin);
            h += head_step;
        }
        row += grid_dim_x() as usize;
    }
}
