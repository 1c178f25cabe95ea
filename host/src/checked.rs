//! Checked size arithmetic and launch-grid limits: the one place where the library turns
//! numbers it was given (shapes, [`LinearOptions`](crate::LinearOptions), sparse-file header
//! fields) into sizes, counts, 32-bit kernel arguments and launch grids.
//!
//! Every helper returns an error instead of wrapping, truncating or saturating, and the
//! error names the parameter (or the quantity derived from it) and the range it must be
//! in. Which [`Error`] variant a failure becomes depends on where the number came from
//! ([`Sizes::ARG`] for options, [`Sizes::SHAPE`] for shapes, [`Sizes::FILE`] for file
//! contents), so callers keep the error kinds their documentation promises.
//!
//! Why this matters: in release builds `usize` arithmetic wraps silently. Before this module,
//! `ring_words = 2⁶²` made `spmm_smem_bytes` wrap to a small size that passed the
//! shared-memory check, and `ring as u32` then handed the kernel a ring of 0 words (an
//! endless loop on the GPU); `2⁶² − 8192` handed it a ring of 2³² − 8192 words in 8 KiB of
//! shared memory (`IllegalAddress`); `2⁶² + 1024` silently became 1024.

use crate::error::{Error, Result};
use std::ops::RangeInclusive;

/// Which [`Error`] variant a failed check becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// [`Error::InvalidArgument`]: an option or other scalar argument.
    Argument,
    /// [`Error::Shape`]: a matrix shape.
    Shape,
    /// [`Error::Format`]: a field of a sparse weight file.
    Format,
}

/// Checked size arithmetic whose failures become errors of one [`Kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sizes(Kind);

/// Bytes above which no allocation (host or device) can exist: `isize::MAX`, the limit of
/// Rust's allocator and of pointer offsets.
pub(crate) const MAX_BYTES: usize = isize::MAX as usize;

impl Sizes {
    /// For options and scalar arguments: [`Error::InvalidArgument`].
    pub const ARG: Sizes = Sizes(Kind::Argument);
    /// For shapes: [`Error::Shape`].
    pub const SHAPE: Sizes = Sizes(Kind::Shape);
    /// For sparse weight file contents: [`Error::Format`].
    pub const FILE: Sizes = Sizes(Kind::Format);

    /// The error of this kind with `msg`.
    pub fn error(self, msg: String) -> Error {
        match self.0 {
            Kind::Argument => Error::InvalidArgument(msg),
            Kind::Shape => Error::Shape(msg),
            Kind::Format => Error::Format(msg),
        }
    }

    /// `a · b`; `what` names the product, e.g. `"rows × cols"`.
    pub fn mul(self, what: &str, a: usize, b: usize) -> Result<usize> {
        a.checked_mul(b).ok_or_else(|| {
            self.error(format!("{what} = {a} × {b} exceeds the largest size, {} (usize::MAX)", usize::MAX))
        })
    }

    /// `a + b`; `what` names the sum.
    pub fn add(self, what: &str, a: usize, b: usize) -> Result<usize> {
        a.checked_add(b).ok_or_else(|| {
            self.error(format!("{what} = {a} + {b} exceeds the largest size, {} (usize::MAX)", usize::MAX))
        })
    }

    /// The product of all `factors`; `what` names it (e.g. `"2 · blocks · token tiles ·
    /// slot"`).
    pub fn product(self, what: &str, factors: &[usize]) -> Result<usize> {
        factors.iter().try_fold(1usize, |acc, &f| {
            acc.checked_mul(f).ok_or_else(|| {
                self.error(format!(
                    "{what} = {} exceeds the largest size, {} (usize::MAX)",
                    factors.iter().map(usize::to_string).collect::<Vec<_>>().join(" × "),
                    usize::MAX
                ))
            })
        })
    }

    /// Bytes of `count` elements of `elem_bytes` each, at most [`MAX_BYTES`] (no larger
    /// allocation can exist); `what` names the buffer.
    pub fn bytes(self, what: &str, count: usize, elem_bytes: usize) -> Result<usize> {
        match count.checked_mul(elem_bytes) {
            Some(b) if b <= MAX_BYTES => Ok(b),
            _ => Err(self.error(format!(
                "{what}: {count} elements of {elem_bytes} bytes exceed the largest allocation, {MAX_BYTES} bytes \
                 (at most {} elements)",
                MAX_BYTES / elem_bytes.max(1)
            ))),
        }
    }

    /// `v` if it lies in `range`; `what` names the parameter, `why` (may be empty) says
    /// where the bounds come from.
    pub fn in_range(self, what: &str, v: usize, range: RangeInclusive<usize>, why: &str) -> Result<usize> {
        if range.contains(&v) {
            return Ok(v);
        }
        let sep = if why.is_empty() { "" } else { ": " };
        Err(self.error(format!("{what} = {v} is outside its allowed range {}..={}{sep}{why}", range.start(), range.end())))
    }

    /// `v` as a 32-bit kernel argument (`0..=u32::MAX`); `what` names it.
    pub fn to_u32(self, what: &str, v: usize) -> Result<u32> {
        u32::try_from(v).map_err(|_| {
            self.error(format!("{what} = {v} does not fit a 32-bit kernel argument (allowed range 0..={})", u32::MAX))
        })
    }

    /// A 64-bit field as `usize` (on 32-bit platforms a large one does not fit); `what`
    /// names it.
    pub fn to_usize(self, what: &str, v: u64) -> Result<usize> {
        usize::try_from(v).map_err(|_| {
            self.error(format!("{what} = {v} is outside the range of this platform's sizes, 0..={}", usize::MAX))
        })
    }
}

/// Largest launch grid the driver accepts on every device this crate supports (compute
/// capability ≥ 8.0): `x ≤ 2³¹ − 1`, `y ≤ 65535`, `z ≤ 65535`; none may be 0.
pub(crate) const MAX_GRID: [usize; 3] = [i32::MAX as usize, 65535, 65535];

/// A launch grid whose dimensions were checked against [`MAX_GRID`] by [`grid`], the only
/// constructor: every launch of the crate takes one, so none reaches the driver unchecked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grid(u32, u32, u32);

impl Grid {
    /// The dimensions, for the driver.
    pub fn dims(self) -> (u32, u32, u32) {
        (self.0, self.1, self.2)
    }
}

/// Checks a launch grid of `dims` blocks (x, y, z) against [`MAX_GRID`] (each in
/// `1..=limit`). On failure `cause(axis)` (0 = x, 1 = y, 2 = z) says which input made that
/// dimension, so the error names it rather than the driver's `InvalidValue`; `sizes` picks
/// the error kind.
pub(crate) fn grid(sizes: Sizes, dims: [usize; 3], cause: impl FnOnce(usize) -> String) -> Result<Grid> {
    for (axis, (&n, &limit)) in dims.iter().zip(&MAX_GRID).enumerate() {
        if n == 0 || n > limit {
            return Err(sizes.error(format!(
                "launch grid.{} = {n} blocks is outside the device's range 1..={limit}: {}",
                ["x", "y", "z"][axis],
                cause(axis)
            )));
        }
    }
    // Each dimension is at most 2³¹ − 1 (checked above), so the casts are exact.
    Ok(Grid(dims[0] as u32, dims[1] as u32, dims[2] as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn checked_mul_add_product_refuse_wrapping() {
        let s = Sizes::ARG;
        assert_eq!(s.mul("a × b", 1 << 31, 1 << 31).unwrap(), 1 << 62);
        let e = s.mul("ring_words × 4", (1 << 62) + 1024, 4).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        let m = msg(e);
        assert!(m.contains("ring_words × 4") && m.contains("4611686018427388928 × 4"), "{m}");
        assert!(m.contains(&usize::MAX.to_string()), "{m}");
        assert_eq!(s.add("x", usize::MAX - 1, 1).unwrap(), usize::MAX);
        assert!(msg(s.add("offsets + 1", usize::MAX, 1).unwrap_err()).contains("offsets + 1"));
        assert_eq!(s.product("p", &[2, 3, 7]).unwrap(), 42);
        assert_eq!(s.product("empty", &[]).unwrap(), 1);
        let m = msg(s.product("2 · blocks · token tiles · slot", &[8, 1 << 31, 65536, 16384]).unwrap_err());
        assert!(m.contains("2 · blocks · token tiles · slot") && m.contains("8 × 2147483648 × 65536 × 16384"), "{m}");
        // A zero factor anywhere is fine (no overflow), even after a large prefix.
        assert_eq!(s.product("z", &[usize::MAX, 0]).unwrap(), 0);
    }

    #[test]
    fn error_kinds_follow_the_source() {
        assert!(matches!(Sizes::ARG.mul("a", usize::MAX, 2), Err(Error::InvalidArgument(_))));
        assert!(matches!(Sizes::SHAPE.mul("rows × cols", usize::MAX, 2), Err(Error::Shape(_))));
        assert!(matches!(Sizes::FILE.mul("n_words × 4", usize::MAX, 4), Err(Error::Format(_))));
    }

    #[test]
    fn bytes_are_bounded_by_isize_max() {
        let s = Sizes::SHAPE;
        assert_eq!(s.bytes("buf", 10, 4).unwrap(), 40);
        assert_eq!(s.bytes("buf", MAX_BYTES, 1).unwrap(), MAX_BYTES);
        // Fits usize but not an allocation.
        let m = msg(s.bytes("zeros", MAX_BYTES / 2 + 1, 2).unwrap_err());
        assert!(m.contains("zeros") && m.contains(&format!("at most {} elements", MAX_BYTES / 2)), "{m}");
        // Wraps usize.
        assert!(s.bytes("w", usize::MAX, 4).is_err());
        assert!(s.bytes("empty", 0, 2).is_ok());
    }

    #[test]
    fn in_range_names_parameter_and_range() {
        let s = Sizes::ARG;
        assert_eq!(s.in_range("splits", 3, 1..=5, "").unwrap(), 3);
        assert_eq!(s.in_range("splits", 5, 1..=5, "").unwrap(), 5);
        for v in [0, 6, usize::MAX] {
            let m = msg(s.in_range("splits", v, 1..=5, "the 5 K tiles of 64").unwrap_err());
            assert!(m.contains(&format!("splits = {v}")) && m.contains("1..=5") && m.contains("K tiles"), "{m}");
        }
    }

    #[test]
    fn to_u32_and_to_usize_refuse_truncation() {
        let s = Sizes::ARG;
        assert_eq!(s.to_u32("blocks", u32::MAX as usize).unwrap(), u32::MAX);
        for v in [u32::MAX as usize + 1, (1 << 32) + 1024, usize::MAX] {
            let m = msg(s.to_u32("ring_words", v).unwrap_err());
            assert!(m.contains(&format!("ring_words = {v}")) && m.contains("0..=4294967295"), "{m}");
        }
        assert_eq!(Sizes::FILE.to_usize("rows", 7).unwrap(), 7);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(Sizes::FILE.to_usize("rows", u64::MAX).unwrap(), usize::MAX);
    }

    #[test]
    fn upload_shapes_are_checked_before_any_allocation() {
        use crate::matrix::check_dims;
        let max = i32::MAX as usize;
        assert_eq!(check_dims("upload", 3, 5).unwrap(), (15, 24));
        assert_eq!(check_dims("upload", max, max).unwrap(), (max * max, max * (max + 1)));
        for (rows, cols, what) in [
            (0, 5, "upload: rows = 0"),
            (5, 0, "upload: cols = 0"),
            (max + 1, 1, "upload: rows = 2147483648"),
            (1, usize::MAX, "upload: cols = 18446744073709551615"),
            (usize::MAX, usize::MAX, "upload: rows = 18446744073709551615"),
        ] {
            match check_dims("upload", rows, cols) {
                Err(Error::Shape(m)) => assert!(m.contains(what) && m.contains("1..=2147483647"), "{m}"),
                other => panic!("{rows}×{cols}: {other:?}"),
            }
        }
    }

    #[test]
    fn grid_checks_every_dimension() {
        let ok = grid(Sizes::ARG, [MAX_GRID[0], 65535, 65535], |_| unreachable!()).unwrap();
        assert_eq!(ok.dims(), (i32::MAX as u32, 65535, 65535));
        assert_eq!(grid(Sizes::ARG, [1, 1, 1], |_| unreachable!()).unwrap().dims(), (1, 1, 1));
        let cases = [
            ([1usize << 31, 1, 1], "grid.x = 2147483648", "1..=2147483647"),
            ([(1 << 32) + 5, 1, 1], "grid.x = 4294967301", "1..=2147483647"),
            ([1, 65536, 1], "grid.y = 65536", "1..=65535"),
            ([1, 1, 70000], "grid.z = 70000", "1..=65535"),
            ([0, 1, 1], "grid.x = 0", "1..=2147483647"),
            ([5, 0, 1], "grid.y = 0", "1..=65535"),
        ];
        for (dims, what, range) in cases {
            let e = grid(Sizes::ARG, dims, |axis| format!("axis {axis} from the `blocks` option")).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)));
            let m = msg(e);
            assert!(m.contains(what) && m.contains(range) && m.contains("`blocks` option"), "{m}");
        }
        assert!(matches!(grid(Sizes::SHAPE, [1, 1 << 20, 1], |_| "tokens".into()), Err(Error::Shape(_))));
    }
}
