//! Sparse weights in the **bitmap** format: one bit per element plus the nonzero values,
//! laid out so that the kernel (`gpu/src/kernels/bitmap.rs`) builds each lane's `mma` A
//! fragment straight from a mask, with no dense tile in shared memory.
//!
//! # The format
//!
//! A weight `W` has `rows = M` (out features) and `cols = K` (in features), row-major, and
//! `Y[N×M] = X[N×K] · Wᵀ` as in [`Gpu::linear`](crate::Gpu::linear).
//!
//! * **Blocks**: 8×8 entries with a `u64` mask, bit `8·r + c` set for a stored entry
//!   `(r, c)`; the block's values are its stored entries in bit order.
//! * **Tiles**: 64×64 entries = 64 blocks, `tiles_m = ceil(M/64)` × `tiles_k = ceil(K/64)`.
//!   Blocks are ordered fragment by fragment (16×16 slabs, `mma` A-register order inside,
//!   [`crate::layout::bitmap_block_bit`]), so lane `l` of a warp finds its two elements of each A
//!   register at bits `2l`, `2l + 1` of one mask, and their values at index
//!   `popcount(mask & (2^(2l) − 1))` of the block's values.
//! * **Tile bytes** (little-endian, all 16-byte multiples, so `cp.async` streams them):
//!   the 64 masks (512 bytes), the 16 fragment offsets (`u16`: the index of the fragment's
//!   first value among the tile's values, 32 bytes), the values (`u16` bits of `T`), zero
//!   padding to a multiple of 16 bytes. A tile with `nnz` values is exactly
//!   `ceil((544 + 2·nnz) / 16)` quads (16-byte units) long, at most 546.
//! * **Tile order**: *panels* of 4 tiles stacked along M (256 rows, the rows one kernel step
//!   multiplies), panels row-major, the tiles of a panel top to bottom
//!   ([`crate::layout::bitmap_tile_index`]); the last panel row has fewer tiles when `tiles_m` is not
//!   a multiple of 4. Consecutive panels are consecutive bytes, so a stream-K range of panels
//!   is one contiguous copy.
//! * `tile_offsets`: `tiles + 1` `u32`, in quads: tile `t` is
//!   `data[4·tile_offsets[t] .. 4·tile_offsets[t + 1]]` (`data` is `u32` words, each two
//!   `u16` / half a mask, little-endian), so a weight may hold up to 64 GiB.
//!
//! Entries outside the matrix (edge tiles) are padding: their mask bits must be clear.
//! [`BitmapWeight::from_parts`] checks every one of these rules.
//!
//! Bytes per element: `0.133 + 2·density` (masks and offsets, then values), against
//! `4·density` for Tiled-CSL, so the bitmap moves fewer bytes below about 93% sparsity.

mod cpu;
pub mod file;
pub(crate) mod launch;
mod pack;

use std::marker::PhantomData;

use crate::checked::Sizes;
use crate::element::{Dtype, Element};
use crate::error::{Error, Result};
use crate::layout::{
    bitmap_block_coord, bitmap_panel_height, bitmap_tile_index, BITMAP_MASK_BYTES, BITMAP_MAX_TILE_BYTES,
    BITMAP_PANEL_TILES, BITMAP_QUAD_BYTES, BITMAP_TILE, BITMAP_TILE_BLOCKS, BITMAP_TILE_HEADER_BYTES,
};

pub use cpu::linear_bitmap;

/// Bytes a Tiled-CSL weight would take in the bitmap format (within 8 bytes per tile: each
/// tile's padding is taken as its average), without packing it: the predictor of
/// `FormatChoice::Auto`.
pub fn predicted_bytes<T: Element>(w: &crate::sparse::SparseWeight<T>) -> usize {
    let tiles = w.rows().div_ceil(TILE) * w.cols().div_ceil(TILE);
    tiles * (BITMAP_TILE_HEADER_BYTES + 8) + 2 * w.nnz() + 4 * (tiles + 1)
}

/// Rows and columns of a tile.
pub const TILE: usize = BITMAP_TILE;
/// `u32` words of one quad (16 bytes, the unit of [`BitmapWeight::tile_offsets`]).
pub const QUAD_WORDS: usize = BITMAP_QUAD_BYTES / 4;
/// `u32` words before a tile's values (masks and fragment offsets).
pub const HEADER_WORDS: usize = BITMAP_TILE_HEADER_BYTES / 4;
/// `u32` words of the masks.
const MASK_WORDS: usize = BITMAP_MASK_BYTES / 4;
/// Quads of the largest tile.
pub const MAX_TILE_QUADS: usize = BITMAP_MAX_TILE_BYTES / BITMAP_QUAD_BYTES;

/// Quads of a tile holding `nnz` values.
pub const fn tile_quads(nnz: usize) -> usize {
    (BITMAP_TILE_HEADER_BYTES + 2 * nnz).div_ceil(BITMAP_QUAD_BYTES)
}

/// A pruned weight in the bitmap format (see the [module docs](self)).
///
/// Invariants (established by every constructor, see [`BitmapWeight::from_parts`]): the
/// offsets and tile lengths follow the format exactly, no mask bit lies outside the matrix,
/// every fragment offset is the popcount of the tile's blocks before it, padding is zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapWeight<T: Element> {
    rows: usize,
    cols: usize,
    nnz: usize,
    tile_offsets: Vec<u32>,
    data: Vec<u32>,
    _t: PhantomData<T>,
}

/// Tile grid of a `rows` × `cols` bitmap weight: `(tiles_m, tiles_k, tiles)`, checked
/// (non-empty shape, `rows·cols` and `tiles + 1` fit).
pub(crate) fn tile_grid(rows: usize, cols: usize) -> Result<(usize, usize, usize)> {
    if rows == 0 || cols == 0 {
        return Err(Error::Shape(format!("bitmap weight must be at least 1×1, got {rows}×{cols}")));
    }
    Sizes::SHAPE.mul("bitmap weight elements (rows × cols)", rows, cols)?;
    let (tiles_m, tiles_k) = (rows.div_ceil(TILE), cols.div_ceil(TILE));
    let tiles = Sizes::SHAPE.mul("bitmap weight tiles", tiles_m, tiles_k)?;
    Sizes::SHAPE.add("bitmap tile offsets (tiles + 1)", tiles, 1)?;
    Ok((tiles_m, tiles_k, tiles))
}

/// The mask of block `b` of a tile's words (`tile[2b]` low half, `tile[2b + 1]` high).
fn mask(tile: &[u32], b: usize) -> u64 {
    u64::from(tile[2 * b]) | u64::from(tile[2 * b + 1]) << 32
}

/// Value `i` of a tile's words (`u16` bits, little-endian inside the words).
fn value(tile: &[u32], i: usize) -> u16 {
    let w = tile[HEADER_WORDS + i / 2];
    (if i % 2 == 0 { w } else { w >> 16 }) as u16
}

/// Fragment offset `f` of a tile's words.
fn frag_offset(tile: &[u32], f: usize) -> u16 {
    let w = tile[MASK_WORDS + f / 2];
    (if f % 2 == 0 { w } else { w >> 16 }) as u16
}

/// The mask bits of a block that lie inside a tile with `rn` valid rows and `cn` valid
/// columns.
fn valid_bits(block: usize, rn: usize, cn: usize) -> u64 {
    let mut m = 0u64;
    for bit in 0..64 {
        let (r, c) = bitmap_block_coord(block, bit);
        if r < rn && c < cn {
            m |= 1 << bit;
        }
    }
    m
}

impl<T: Element> BitmapWeight<T> {
    /// Builds a weight from raw arrays after checking every rule of the format, with checked
    /// arithmetic (nothing unchecked can reach a kernel): `tile_offsets` has `tiles + 1`
    /// entries from 0, non-decreasing, the last equal to `data.len() / 4`; each tile is
    /// exactly [`tile_quads`]`(its popcount)` quads; no mask bit outside the matrix; each
    /// fragment offset equals the popcount of the blocks before it; the padding after the
    /// values is zero. Stored values may be any bits (±0, NaN, ±Inf included).
    ///
    /// Errors: [`Error::Shape`] for an empty or too large shape; [`Error::InvalidArgument`]
    /// naming the field (`tile_offsets[i]`, a tile's mask, fragment offset, length or padding)
    /// for anything else.
    pub fn from_parts(rows: usize, cols: usize, tile_offsets: Vec<u32>, data: Vec<u32>) -> Result<Self> {
        let (tiles_m, tiles_k, tiles) = tile_grid(rows, cols)?;
        let bad = |msg: String| Error::InvalidArgument(format!("bitmap weight {rows}×{cols}: {msg}"));
        if tile_offsets.len() != tiles + 1 {
            return Err(bad(format!("tile_offsets has {} entries, expected tiles + 1 = {}", tile_offsets.len(), tiles + 1)));
        }
        if tile_offsets[0] != 0 {
            return Err(bad(format!("tile_offsets[0] = {}, expected 0", tile_offsets[0])));
        }
        let last = tile_offsets[tiles] as usize;
        let expected_words = Sizes::ARG.mul("bitmap data words (4 · last tile offset)", last, QUAD_WORDS)?;
        if expected_words != data.len() {
            return Err(bad(format!(
                "tile_offsets[{tiles}] = {last} quads = {expected_words} words, but data has {} words",
                data.len()
            )));
        }
        let mut nnz = 0usize;
        let mut valid = [[0u64; BITMAP_TILE_BLOCKS]; 2]; // cache for the most common shape
        let mut valid_for = [(usize::MAX, usize::MAX); 2];
        // Tiles in storage order: panel rows, their columns, the panel's tiles.
        let order = (0..tiles_m.div_ceil(BITMAP_PANEL_TILES)).flat_map(|p| {
            let h = bitmap_panel_height(p, tiles_m);
            (0..tiles_k).flat_map(move |tk| (BITMAP_PANEL_TILES * p..BITMAP_PANEL_TILES * p + h).map(move |tr| (tr, tk)))
        });
        for (tr, tk) in order {
            {
                let (rn, cn) = (TILE.min(rows - tr * TILE), TILE.min(cols - tk * TILE));
                let t = bitmap_tile_index(tr, tk, tiles_m, tiles_k);
                let (a, b) = (tile_offsets[t] as usize, tile_offsets[t + 1] as usize);
                if b < a {
                    return Err(bad(format!("tile_offsets decrease at [{}]: {a} then {b}", t + 1)));
                }
                let quads = b - a;
                if !(tile_quads(0)..=MAX_TILE_QUADS).contains(&quads) {
                    return Err(bad(format!(
                        "tile {t} (tile_offsets[{t}..={}]) is {quads} quads, a tile is {}..={MAX_TILE_QUADS}",
                        t + 1,
                        tile_quads(0)
                    )));
                }
                // b ≤ last, so these fit (checked above).
                let words = &data[a * QUAD_WORDS..b * QUAD_WORDS];
                let slot = usize::from(cn != TILE);
                if valid_for[slot] != (rn, cn) {
                    for (blk, v) in valid[slot].iter_mut().enumerate() {
                        *v = valid_bits(blk, rn, cn);
                    }
                    valid_for[slot] = (rn, cn);
                }
                let mut count = 0usize;
                for blk in 0..BITMAP_TILE_BLOCKS {
                    if blk % 4 == 0 {
                        let f = blk / 4;
                        let off = usize::from(frag_offset(words, f));
                        if off != count {
                            return Err(bad(format!("tile {t}: fragment offset {f} is {off}, its blocks before hold {count} values")));
                        }
                    }
                    let m = mask(words, blk);
                    if m & !valid[slot][blk] != 0 {
                        return Err(bad(format!(
                            "tile {t}: block {blk}'s mask {m:#018x} has bits outside the {rows}×{cols} matrix"
                        )));
                    }
                    count += m.count_ones() as usize;
                }
                if quads != tile_quads(count) {
                    return Err(bad(format!(
                        "tile {t} holds {count} values, so it is {} quads long, but tile_offsets give {quads}",
                        tile_quads(count)
                    )));
                }
                // Padding: the half-word after an odd count and the words after the values.
                if count % 2 == 1 && words[HEADER_WORDS + count / 2] >> 16 != 0 {
                    return Err(bad(format!("tile {t}: the padding after its {count} values is not zero")));
                }
                if words[HEADER_WORDS + count.div_ceil(2)..].iter().any(|&w| w != 0) {
                    return Err(bad(format!("tile {t}: the padding after its {count} values is not zero")));
                }
                nnz += count;
            }
        }
        Ok(BitmapWeight { rows, cols, nnz, tile_offsets, data, _t: PhantomData })
    }

    /// Decodes back to a dense row-major `rows × cols` matrix.
    pub fn to_dense(&self) -> Vec<T> {
        let mut out = vec![T::from_bits(0); self.rows * self.cols];
        for tr in 0..self.tiles_m() {
            for tk in 0..self.tiles_k() {
                let words = self.tile_words(bitmap_tile_index(tr, tk, self.tiles_m(), self.tiles_k()));
                let mut i = 0;
                for blk in 0..BITMAP_TILE_BLOCKS {
                    let mut m = mask(words, blk);
                    while m != 0 {
                        let bit = m.trailing_zeros() as usize;
                        m &= m - 1;
                        let (r, c) = bitmap_block_coord(blk, bit);
                        out[(tr * TILE + r) * self.cols + tk * TILE + c] = T::from_bits(value(words, i));
                        i += 1;
                    }
                }
            }
        }
        out
    }

    /// Rows (out features).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns (in features).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Stored entries (set mask bits).
    pub fn nnz(&self) -> usize {
        self.nnz
    }
    /// Tile rows, `ceil(rows / 64)`.
    pub fn tiles_m(&self) -> usize {
        self.rows.div_ceil(TILE)
    }
    /// Tile columns, `ceil(cols / 64)`.
    pub fn tiles_k(&self) -> usize {
        self.cols.div_ceil(TILE)
    }
    /// Tile offsets in quads (`tiles + 1`).
    pub fn tile_offsets(&self) -> &[u32] {
        &self.tile_offsets
    }
    /// All tiles' words.
    pub fn data(&self) -> &[u32] {
        &self.data
    }
    /// Words of tile `t` (in the tile order of the [module docs](self)).
    pub fn tile_words(&self, t: usize) -> &[u32] {
        let (a, b) = (self.tile_offsets[t] as usize, self.tile_offsets[t + 1] as usize);
        &self.data[a * QUAD_WORDS..b * QUAD_WORDS]
    }
    /// The element type.
    pub fn dtype(&self) -> Dtype {
        T::DTYPE
    }
    /// Bytes a kernel reads: the tiles and their offsets.
    pub fn stored_bytes(&self) -> usize {
        4 * (self.data.len() + self.tile_offsets.len())
    }
    /// Stored entries per element of the matrix.
    pub fn density(&self) -> f64 {
        self.nnz as f64 / (self.rows as f64 * self.cols as f64)
    }
    /// Bytes of the largest panel (4 tiles stacked along M; the kernel's stage slot).
    pub fn max_panel_bytes(&self) -> usize {
        let (tiles_m, tiles_k) = (self.tiles_m(), self.tiles_k());
        let mut max = 0;
        let mut t = 0;
        for p in 0..tiles_m.div_ceil(BITMAP_PANEL_TILES) {
            let h = bitmap_panel_height(p, tiles_m);
            for _ in 0..tiles_k {
                let quads = (self.tile_offsets[t + h] - self.tile_offsets[t]) as usize;
                max = max.max(quads * BITMAP_QUAD_BYTES);
                t += h;
            }
        }
        max
    }
}

#[cfg(test)]
mod tests;
