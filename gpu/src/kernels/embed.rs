//! Row gathers: token embeddings (`out[i] = table[ids[i] + offset]`), OPT's learned positions
//! added on top (`out[i] += table[ids[i] + offset]`), and picking rows of a matrix (the last
//! position of each sequence before the LM head).
//!
//! Grid-stride over the 16-byte chunks of `out`'s rows. The row indices come from device memory and
//! are checked here: an index at or past the table's rows gives a row of NaN (padding zero)
//! and reads nothing of the table.

use super::rowwise::{for_each_chunk, load, pack, row_chunks, store, valid_in, widen};
use crate::mma::MmaElement;

/// `out[i] = table[ids[i] + offset]`, or `out[i] = round(out[i] + table[ids[i] + offset])`
/// with `accumulate`; a NaN row where `ids[i] + offset ≥ table_rows` (computed without
/// overflow).
///
/// # Safety
/// Any launch shape; `table` is `table_rows × cols` with leading dimension `ldt`, `out` is
/// `rows × cols` with leading dimension `ldo` (16-byte aligned, each `ld` a multiple of 8 ≥
/// `cols`, zero padding in each last chunk, no overlap); `ids` holds `rows` readable u32.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gather_rows<E: MmaElement>(
    table: *const u16, table_rows: u32, ldt: u32, ids: *const u32, offset: u32, accumulate: bool, out: *mut u16,
    ldo: u32, rows: u32, cols: u32,
) {
    let (cols, ldt, ldo) = (cols as usize, ldt as usize, ldo as usize);
    for_each_chunk(rows as usize, row_chunks(cols), |row, c| {
        let (p, valid) = (row * ldo + 8 * c, valid_in(c, cols));
        let src = *ids.add(row) as u64 + offset as u64;
        let bits = if src < table_rows as u64 {
            let t = load(table.add(src as usize * ldt + 8 * c));
            if accumulate {
                let (o, v) = (widen::<E>(load(out.add(p))), widen::<E>(t));
                let mut y = [0.0f32; 8];
                unroll!(i in 0..8 => { y[i] = o[i] + v[i]; });
                pack::<E>(y, valid)
            } else {
                // A copy: the table's bits (and zeros for its zero padding).
                let mut y = [0u16; 8];
                unroll!(i in 0..8 => { if i < valid { y[i] = t[i]; } });
                y
            }
        } else {
            pack::<E>([f32::NAN; 8], valid)
        };
        store(out.add(p), bits);
    });
}
