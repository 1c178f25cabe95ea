//! Element-wise operations between sublayers: `acc += x`, `x += bias` (per column), SwiGLU's
//! `out = silu(gate) · up`, and ReLU in place.
//!
//! Grid-stride over the 16-byte chunks of the matrix ([`super::rowwise::for_each_chunk`]);
//! each operand has its own leading dimension, so chunk `c` of row `r` is at element
//! `r · ld + 8c` of it. f32 arithmetic on the exact values, one rounding per result; padding
//! stays zero.

use super::rowwise::{for_each_chunk, load, pack, row_chunks, store, valid_in, widen};
use crate::mma::MmaElement;
use crate::numerics::silu;

/// `a ← round(a + b)`.
pub const ADD_ASSIGN: u32 = 0;
/// `a ← round(a + b[column])`, `b` one row.
pub const ADD_BIAS: u32 = 1;
/// `out ← round(silu(a) · b)`.
pub const SILU_MUL: u32 = 2;
/// `a ← relu(a)`: negative values become +0; NaN, ±0 and positive values stay.
pub const RELU: u32 = 3;

/// One of the operations above over a `rows × cols` matrix.
///
/// # Safety
/// Any launch shape; `a` (and `out` for `SILU_MUL`) are `rows × cols` with leading dimensions
/// `lda` (`ldo`), `b` is `rows × cols` with leading dimension `ldb` (`1 × cols` for `ADD_BIAS`;
/// unused for `RELU`), all 16-byte aligned, every `ld` a multiple of 8 ≥ `cols`, zero padding
/// in each last chunk; `a` is only read for `SILU_MUL`, and no written operand overlaps
/// another operand.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn elementwise<E: MmaElement, const OP: u32>(
    a: *mut u16, lda: u32, b: *const u16, ldb: u32, out: *mut u16, ldo: u32, rows: u32, cols: u32,
) {
    let cols = cols as usize;
    let (lda, ldb, ldo) = (lda as usize, ldb as usize, ldo as usize);
    for_each_chunk(rows as usize, row_chunks(cols), |row, c| {
        let (p, valid) = (row * lda + 8 * c, valid_in(c, cols));
        let x = widen::<E>(load(a.add(p)));
        let mut y = [0.0f32; 8];
        match OP {
            ADD_ASSIGN | SILU_MUL => {
                let v = widen::<E>(load(b.add(row * ldb + 8 * c)));
                if OP == ADD_ASSIGN {
                    unroll!(i in 0..8 => { y[i] = x[i] + v[i]; });
                } else {
                    unroll!(i in 0..8 => { y[i] = silu(x[i]) * v[i]; });
                }
            }
            ADD_BIAS => {
                let v = widen::<E>(load(b.add(8 * c)));
                unroll!(i in 0..8 => { y[i] = x[i] + v[i]; });
            }
            _ => {
                unroll!(i in 0..8 => { y[i] = if x[i] < 0.0 { 0.0 } else { x[i] }; });
            }
        }
        store(if OP == SILU_MUL { out.add(row * ldo + 8 * c) } else { a.add(p) }, pack::<E>(y, valid));
    });
}
