//! Rotary position embedding (RoPE), in place on query or key rows.

use super::{dim, one_per_row, Operand};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::linear::args;
use crate::matrix::DeviceMatrix;
use crate::ops::DeviceIndices;

/// Which columns of a head form a rotated pair (checkpoints differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeStyle {
    /// Pairs `(i, i + head_dim/2)`: Hugging Face LLaMA checkpoints (`rotate_half`).
    HalfSplit,
    /// Pairs `(2i, 2i + 1)`: Meta's original checkpoints and GGUF files.
    Interleaved,
}

/// Widest head the kernel takes: one thread per pair, at most 1024 threads per block.
pub(crate) const MAX_HEAD_DIM: usize = 2048;

impl Gpu {
    /// Rotates each head of row i of `x` (`x.cols() = heads · head_dim`) by `positions[i]`:
    /// pair j of a head, (x₀, x₁), becomes (x₀·cos − x₁·sin, x₁·cos + x₀·sin) at the angle
    /// `pos · inv_freq_j`.
    ///
    /// The angle is computed as Hugging Face `transformers` does, in f32: `inv_freq_j =
    /// 1 / theta^(2j / head_dim)` (each step rounded to f32; the power correctly rounded, see
    /// `gpu/src/numerics.rs: rope_inv_freq`), `angle = (pos as f32) · inv_freq_j`; then sin and
    /// cos of that f32 angle to within 1 ulp, with an exact range reduction (angles reach
    /// 10⁵–10⁶ rad at long contexts, where `sin.approx` or an f32 reduction would be wrong),
    /// and the rotation in f32 with one rounding per output. (Hugging Face rounds cos and sin to
    /// the activation type first; the results differ by a few units in the last place.) The
    /// same arithmetic is [`reference::rope`](crate::ops::reference::rope::rope)'s, bit for bit.
    ///
    /// Errors: [`Error::Shape`] when `head_dim` is odd, zero, above 2048 or does not divide
    /// `x.cols()`, or `positions` does not hold one position per row;
    /// [`Error::InvalidArgument`] for a `theta` that is not finite and positive, or an operand
    /// of another handle.
    pub fn rope<T: Element>(
        &self,
        x: &mut DeviceMatrix<T>,
        positions: &DeviceIndices,
        head_dim: usize,
        theta: f32,
        style: RopeStyle,
    ) -> Result<()> {
        const OP: &str = "rope";
        self.check_owner("rope: x", &x.buf)?;
        self.check_owner("rope: positions", &positions.buf)?;
        let heads = check_heads(x.cols(), head_dim)?;
        one_per_row(OP, Operand::of("x", x), "positions", positions.len())?;
        if !(theta.is_finite() && theta > 0.0) {
            return Err(Error::InvalidArgument(format!("rope: theta = {theta} must be finite and positive")));
        }
        let pairs = head_dim / 2;
        let threads = rope_threads(pairs);
        // One work item per row and group of `threads / pairs` heads (the kernel's split; the
        // launch is at most one wave and the kernel walks the items grid-stride).
        let items = x.rows().saturating_mul(heads.div_ceil(threads as usize / pairs));
        let (xp, pp) = (x.device_ptr(), positions.device_ptr());
        let (rows, ld) = (dim(OP, "rows", x.rows())?, dim(OP, "ld", x.ld())?);
        let (heads, hd) = (dim(OP, "heads", heads)?, dim(OP, "head_dim", head_dim)?);
        let mut a = args![xp, pp, rows, ld, heads, hd, theta];
        let name = match style {
            RopeStyle::HalfSplit => "rope_half_split",
            RopeStyle::Interleaved => "rope_interleaved",
        };
        self.launch_op::<T>(name, threads, 0, items, &mut a)
    }
}

/// The number of heads of `cols` columns of `head_dim`, or why that is not a valid split.
fn check_heads(cols: usize, head_dim: usize) -> Result<usize> {
    if head_dim == 0 || head_dim % 2 != 0 || head_dim > MAX_HEAD_DIM {
        return Err(Error::Shape(format!("rope: head_dim = {head_dim} must be even, between 2 and {MAX_HEAD_DIM}")));
    }
    if !cols.is_multiple_of(head_dim) {
        return Err(Error::Shape(format!("rope: x has {cols} columns, not a whole number of heads of head_dim = {head_dim}")));
    }
    Ok(cols / head_dim)
}

/// Threads per block for `pairs` pairs per head: a multiple of `pairs` (the kernel gives
/// thread t pair `t % pairs`) of at least 128 when `pairs` < 128, else `pairs` (≤ 1024).
fn rope_threads(pairs: usize) -> u32 {
    (pairs * 128usize.div_ceil(pairs)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_split_evenly() {
        assert_eq!(check_heads(4096, 128).unwrap(), 32);
        assert_eq!(check_heads(64, 64).unwrap(), 1);
        for (cols, hd) in [(4096, 0), (4096, 127), (4100, 128), (4096, 4096), (12, 8)] {
            assert!(matches!(check_heads(cols, hd), Err(Error::Shape(_))), "{cols} {hd}");
        }
    }

    #[test]
    fn block_is_whole_multiples_of_the_pairs() {
        for pairs in 1..=1024 {
            let t = rope_threads(pairs) as usize;
            assert_eq!(t % pairs, 0, "{pairs}");
            assert!((128..=1024).contains(&t) || t == pairs, "{pairs}: {t}");
            assert!(t <= 1024, "{pairs}: {t}");
        }
        assert_eq!(rope_threads(64), 128);
        assert_eq!(rope_threads(3), 129);
    }
}
