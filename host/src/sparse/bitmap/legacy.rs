//! Bitmap files of the layouts before today's (see the [module docs](super)), read,
//! checked and repacked; never written.
//!
//! - Format tag 2 (container version 6): lane-major tiles with **one value segment** per
//!   fragment: a fragment's values lane after lane, A-half order inside a lane, and 8 word
//!   prefix bytes per fragment (byte `w`: its values in lanes `0 .. 4w`), so a tile of `nnz`
//!   values was `ceil((672 + 2·nnz) / 16)` quads, 42 to 554.
//! - Format tag 1 (container versions 5 and 6): **block-major** tiles, 64 blocks of 8×8
//!   entries, each with a `u64` mask (bit `8·r + c` for block entry `(r, c)`), the blocks of
//!   a fragment in `mma` A-register order ([`legacy_coord`]); its bytes were the 64 masks,
//!   the 16 fragment offsets (the popcount of the blocks before the fragment), the values in
//!   block and bit order and zero padding to 16 bytes: no word prefixes, so a tile of `nnz`
//!   values was `ceil((544 + 2·nnz) / 16)` quads, 34 to 546.
//!
//! Tile order and `tile_offsets` were today's. Such parts are checked as strictly as today's
//! (the same `check_tiles`, with the old map and header), then each tile is decoded and
//! repacked in today's layout by the packer's [`encode_tile`], one tile at a time (memory
//! follows the weight, no dense copy of it). The weight is the same matrix; a value stored
//! as ±0 is dropped, as the packer stores nonzeros only.

use std::marker::PhantomData;

use super::pack::encode_tile;
use super::{check_tiles, storage_order, tile_grid, BitmapWeight, TileLayout, LANE_MAJOR, QUAD_WORDS, TILE};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::layout::{bitmap_mask_coord, BITMAP_FRAG_OFFSET_BYTES, BITMAP_MASK_BYTES, BITMAP_TILE_FRAGS};

/// Bytes before a block-major tile's values: masks, fragment offsets (544).
const BLOCK_MAJOR_HEADER_BYTES: usize = BITMAP_MASK_BYTES + BITMAP_FRAG_OFFSET_BYTES;

/// Tile-local (row, col) of bit `bit` of block `block` of a block-major tile: fragment
/// `block / 4`, then its blocks (rows 0–7, k 0–7), (rows 8–15, k 0–7), (rows 0–7, k 8–15),
/// (rows 8–15, k 8–15), row-major inside a block.
pub(super) const fn legacy_coord(block: usize, bit: usize) -> (usize, usize) {
    let (frag, j) = (block / 4, block % 4);
    let row = 16 * (frag / 4) + 8 * (j % 2) + bit / 8;
    let col = 16 * (frag % 4) + 8 * (j / 2) + bit % 8;
    (row, col)
}

/// The block-major tiles of format-tag-1 files.
pub(super) const BLOCK_MAJOR: TileLayout =
    TileLayout { header_bytes: BLOCK_MAJOR_HEADER_BYTES, coord: legacy_coord, segments: 0, mask_name: "block" };

/// The lane-major tiles with one value segment of format-tag-2 files (today's masks).
pub(super) const LANE_MAJOR_ONE_SEGMENT: TileLayout = TileLayout {
    header_bytes: BLOCK_MAJOR_HEADER_BYTES + 8 * BITMAP_TILE_FRAGS,
    coord: bitmap_mask_coord,
    segments: 1,
    mask_name: "mask",
};

impl<T: Element> BitmapWeight<T> {
    /// The weight held by the parts of an earlier file (`layout`: [`BLOCK_MAJOR`] or
    /// [`LANE_MAJOR_ONE_SEGMENT`], `what` names it in messages), repacked in today's layout
    /// after checking every rule of the old one.
    ///
    /// Errors: [`Error::Format`] naming the broken rule (a tile's offsets, length, mask,
    /// fragment offset, word prefix or padding), or a weight that no longer fits the format's
    /// 32-bit tile offsets once its tiles carry today's header.
    pub(super) fn from_legacy(
        layout: &TileLayout,
        what: &str,
        rows: usize,
        cols: usize,
        tile_offsets: &[u32],
        data: &[u32],
    ) -> Result<Self> {
        let bad = |msg: String| Error::Format(format!("bitmap file, {what}, {rows}×{cols}: {msg}"));
        check_tiles(layout, rows, cols, tile_offsets, data, bad)?;
        let (tiles_m, tiles_k, tiles) = tile_grid(rows, cols)?;
        let mut offsets = Vec::with_capacity(tiles + 1);
        offsets.push(0u32);
        // Each tile grows by today's longer header (or less: a stored ±0 is dropped).
        let grown = tiles.saturating_mul((LANE_MAJOR.header_bytes - layout.header_bytes) / 4);
        let mut out = Vec::with_capacity(data.len().saturating_add(grown));
        let mut dense = Vec::with_capacity(TILE * TILE);
        let mut nnz = 0;
        for (t, (tr, tk)) in storage_order(tiles_m, tiles_k).enumerate() {
            let (rn, cn) = (TILE.min(rows - tr * TILE), TILE.min(cols - tk * TILE));
            // Checked above: the offsets are in range and every set bit is inside the matrix.
            let words = &data[QUAD_WORDS * tile_offsets[t] as usize..QUAD_WORDS * tile_offsets[t + 1] as usize];
            dense.clear();
            dense.resize(rn * cn, T::from_bits(0));
            for (r, c, bits) in layout.entries(words) {
                dense[r * cn + c] = T::from_bits(bits);
            }
            nnz += encode_tile(&LANE_MAJOR, &dense, rn, cn, 0, 0, &mut out);
            offsets.push(u32::try_from(out.len() / QUAD_WORDS).map_err(|_| {
                bad(format!("repacked in today's layout, the weight exceeds the format's 32-bit tile offsets at tile {t}"))
            })?);
        }
        Ok(BitmapWeight { rows, cols, nnz, tile_offsets: offsets, data: out, _t: PhantomData })
    }
}

/// The block-major parts (`tile_offsets`, data) of the row-major `rows × cols` `dense`,
/// storing its entries that are not ±0: what a format-tag-1 file held.
#[cfg(test)]
pub(super) fn block_major_parts<T: Element>(rows: usize, cols: usize, dense: &[T]) -> (Vec<u32>, Vec<u32>) {
    use crate::layout::BITMAP_TILE_MASKS;
    let (tiles_m, tiles_k, _) = tile_grid(rows, cols).unwrap();
    let (mut offsets, mut data) = (vec![0u32], Vec::new());
    for (tr, tk) in storage_order(tiles_m, tiles_k) {
        let start = data.len();
        data.resize(start + BLOCK_MAJOR_HEADER_BYTES / 4, 0);
        let mut values = Vec::new();
        for block in 0..BITMAP_TILE_MASKS {
            if block % 4 == 0 {
                data[start + BITMAP_MASK_BYTES / 4 + block / 8] |= (values.len() as u32) << (16 * (block / 4 % 2));
            }
            let mut m = 0u64;
            for bit in 0..64 {
                let (r, c) = legacy_coord(block, bit);
                let (r, c) = (tr * TILE + r, tk * TILE + c);
                if r < rows && c < cols && dense[r * cols + c].to_bits() & 0x7fff != 0 {
                    m |= 1 << bit;
                    values.push(u32::from(dense[r * cols + c].to_bits()));
                }
            }
            data[start + 2 * block] = m as u32;
            data[start + 2 * block + 1] = (m >> 32) as u32;
        }
        data.extend(values.chunks(2).map(|p| p[0] | p.get(1).map_or(0, |v| v << 16)));
        data.resize(start + BLOCK_MAJOR.tile_quads(values.len()) * QUAD_WORDS, 0);
        offsets.push((data.len() / QUAD_WORDS) as u32);
    }
    (offsets, data)
}
