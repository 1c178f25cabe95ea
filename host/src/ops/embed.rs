//! Row gathers: embedding lookups and picking rows (the last position of each sequence).
//!
//! The indices are read on the device; an index at or past the table's rows yields a row of
//! NaN in `out` (and reads nothing out of bounds), so a bad token id shows up in the logits
//! instead of silently reading another row.

use super::{chunk_blocks, dim, ld, one_per_row, Operand, CHUNK_THREADS};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::linear::args;
use crate::matrix::DeviceMatrix;
use crate::ops::DeviceIndices;

impl Gpu {
    /// `out[i] = table[ids[i] + offset]`, or with `accumulate`, `out[i] += table[ids[i] +
    /// offset]` (OPT's learned positions: `embed(pos_table, positions, 2, true, out)` after
    /// the token embedding). `table` is `vocab × d`, `out` is `ids.len() × d`. A row whose
    /// `ids[i] + offset` (computed without overflow) is at least `table.rows()` becomes NaN.
    ///
    /// Errors: [`Error::Shape`] naming the operand whose shape does not fit,
    /// [`Error::InvalidArgument`] for an operand of another handle.
    pub fn embed<T: Element>(
        &self,
        table: &DeviceMatrix<T>,
        ids: &DeviceIndices,
        offset: u32,
        accumulate: bool,
        out: &mut DeviceMatrix<T>,
    ) -> Result<()> {
        const OP: &str = "embed";
        self.check_owner("embed: table", &table.buf)?;
        self.check_owner("embed: ids", &ids.buf)?;
        self.check_owner("embed: out", &out.buf)?;
        let o = Operand::of("out", out);
        same_cols(OP, Operand::of("table", table), o)?;
        one_per_row(OP, o, "ids", ids.len())?;
        let (tp, table_rows, ldt) = (table.device_ptr(), dim(OP, "table rows", table.rows())?, ld(OP, table)?);
        let (idp, accumulate) = (ids.device_ptr(), u32::from(accumulate));
        let (outp, ldo) = (out.device_ptr(), ld(OP, out)?);
        let (rows, cols) = (dim(OP, "rows", out.rows())?, dim(OP, "cols", out.cols())?);
        let mut a = args![tp, table_rows, ldt, idp, offset, accumulate, outp, ldo, rows, cols];
        self.launch_op::<T>(OP, CHUNK_THREADS, 0, chunk_blocks(out), &mut a)
    }

    /// `out[i] = x[rows[i]]`: e.g. the hidden state of each sequence's last position, before
    /// the LM head. `out` is `rows.len() × x.cols()`; an index at or past `x.rows()` gives a
    /// NaN row.
    pub fn gather_rows<T: Element>(
        &self,
        x: &DeviceMatrix<T>,
        rows: &DeviceIndices,
        out: &mut DeviceMatrix<T>,
    ) -> Result<()> {
        const OP: &str = "gather_rows";
        self.check_owner("gather_rows: x", &x.buf)?;
        self.check_owner("gather_rows: rows", &rows.buf)?;
        self.check_owner("gather_rows: out", &out.buf)?;
        let o = Operand::of("out", out);
        same_cols(OP, Operand::of("x", x), o)?;
        one_per_row(OP, o, "rows", rows.len())?;
        let (xp, x_rows, ldx) = (x.device_ptr(), dim(OP, "x rows", x.rows())?, ld(OP, x)?);
        let (picks, outp, ldo) = (rows.device_ptr(), out.device_ptr(), ld(OP, out)?);
        let (n, cols) = (dim(OP, "rows", out.rows())?, dim(OP, "cols", out.cols())?);
        let mut a = args![xp, x_rows, ldx, picks, outp, ldo, n, cols];
        self.launch_op::<T>(OP, CHUNK_THREADS, 0, chunk_blocks(out), &mut a)
    }
}

/// `Ok` when `out` has the columns of the source `src`.
fn same_cols(op: &str, src: Operand<'_>, out: Operand<'_>) -> Result<()> {
    if src.cols == out.cols {
        return Ok(());
    }
    Err(Error::Shape(format!(
        "{op}: {} has {} columns, {} has {}; they must match",
        out.name, out.cols, src.name, src.cols
    )))
}
