//! Row gathers: embeddings and picking rows.

/// `out[i] = table[ids[i] + offset]`, or with `accumulate`, `out[i] += table[ids[i] + offset]`
/// (f32), rows of `cols` values. A row whose `ids[i] + offset` (no overflow) is at or past the
/// table's rows becomes NaN, as on the GPU.
///
/// # Panics
/// If `cols` is 0, `table.len()` is not a multiple of `cols`, or `out.len() != ids.len() ·
/// cols`.
pub fn embed(table: &[f32], cols: usize, ids: &[u32], offset: u32, accumulate: bool, out: &mut [f32]) {
    assert!(cols > 0 && table.len().is_multiple_of(cols), "embed: the table is not a whole number of rows of {cols}");
    assert_eq!(out.len(), ids.len() * cols, "embed: out must hold one row per id");
    let rows = table.len() / cols;
    for (o, &id) in out.chunks_exact_mut(cols).zip(ids) {
        let src = u64::from(id) + u64::from(offset);
        match usize::try_from(src).ok().filter(|&r| r < rows) {
            Some(r) => {
                let t = &table[r * cols..(r + 1) * cols];
                if accumulate {
                    super::elementwise::add_assign(o, t);
                } else {
                    o.copy_from_slice(t);
                }
            }
            None => o.fill(f32::NAN),
        }
    }
}

/// `out[i] = x[rows[i]]` (rows of `cols` values); an index past `x`'s rows gives a NaN row.
///
/// # Panics
/// As [`embed`].
pub fn gather_rows(x: &[f32], cols: usize, rows: &[u32], out: &mut [f32]) {
    embed(x, cols, rows, 0, false, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_offsets_and_bad_ids() {
        let table = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0];
        let mut out = [0.0; 6];
        embed(&table, 2, &[2, 0, 3], 0, false, &mut out);
        assert_eq!(out[..4], [20.0, 21.0, 0.0, 1.0]);
        assert!(out[4].is_nan() && out[5].is_nan());
        // OPT's learned positions: offset 2, added on top.
        let mut out = [1.0; 4];
        embed(&table, 2, &[0, u32::MAX], 2, true, &mut out);
        assert_eq!(out[..2], [21.0, 22.0]);
        assert!(out[2].is_nan() && out[3].is_nan(), "u32::MAX + 2 must not wrap around");
        let mut out = [0.0; 2];
        gather_rows(&table, 2, &[1], &mut out);
        assert_eq!(out, [10.0, 11.0]);
    }
}
