//! Element-wise operations between sublayers: `acc += x`, `x += bias` (per column), SwiGLU's
//! `out = silu(gate) · up`, and ReLU in place.
//!
//! Grid-stride over the 16-byte chunks of the matrix ([`super::rowwise::for_each_chunk`]):
//! every operand has the same shape and hence the same leading dimension, so chunk i of each
//! is at element 8i. f32 arithmetic on the exact values, one rounding per result; padding
//! stays zero.

use super::rowwise::{for_each_chunk, load, pack, store, valid_in, widen};
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
/// Any launch shape; `a` (and `out` for `SILU_MUL`) are `rows × ld`, `b` is `rows × ld`
/// (`1 × ld` for `ADD_BIAS`; unused for `RELU`), 16-byte aligned, `ld` a multiple of 8 ≥ `cols`,
/// zero padding; `a` is only read for `SILU_MUL`, and no written operand overlaps another
/// operand.
#[inline(always)]
pub unsafe fn elementwise<E: MmaElement, const OP: u32>(
    a: *mut u16, b: *const u16, out: *mut u16, rows: u32, cols: u32, ld: u32,
) {
    let (cols, chunks) = (cols as usize, ld as usize / 8);
    for_each_chunk(rows as usize, chunks, |row, c| {
        let (p, valid) = (8 * (row * chunks + c), valid_in(c, cols));
        let x = widen::<E>(load(a.add(p)));
        let mut y = [0.0f32; 8];
        match OP {
            ADD_ASSIGN | SILU_MUL => {
                let v = widen::<E>(load(b.add(p)));
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
        store(if OP == SILU_MUL { out.add(p) } else { a.add(p) }, pack::<E>(y, valid));
    });
}
