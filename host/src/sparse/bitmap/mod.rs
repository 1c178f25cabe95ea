//! Sparse weights in the **bitmap** format: one bit per element plus the nonzero values,
//! laid out so that the kernel (`gpu/src/kernels/bitmap.rs`) builds each lane's `mma` A
//! fragment straight from its mask bytes, with no dense tile in shared memory.
//!
//! # The format
//!
//! A weight `W` has `rows = M` (out features) and `cols = K` (in features), row-major, and
//! `Y[N×M] = X[N×K] · Wᵀ` as in [`Gpu::linear`](crate::Gpu::linear).
//!
//! * **Tiles**: 64×64 entries, `tiles_m = ceil(M/64)` × `tiles_k = ceil(K/64)`, each 16
//!   `mma` A *fragments* of 16×16: fragment `f = 4·(row/16) + col/16` (its slab of 16 rows
//!   and its k16 step).
//! * **Masks** (lane-major): a fragment is 32 mask bytes, four `u64` masks; byte `l` holds
//!   lane `l`'s eight entries of the fragment, bit `i` its A half `i`
//!   ([`crate::layout::frag_a_coord`]), so mask `4f + q` covers lanes `8q .. 8q + 8`
//!   ([`crate::layout::bitmap_mask_bit`], [`crate::layout::bitmap_mask_coord`]).
//! * **Values**: fragment after fragment; inside a fragment two *segments*, A registers 0–1
//!   (bits 0–3 of every lane's byte) then A registers 2–3 (bits 4–7); inside a segment lane
//!   after lane, bit order inside a lane ([`crate::layout::BITMAP_SEGMENT_BITS`]).
//! * **Tile bytes** (little-endian, all 16-byte multiples, so `cp.async` streams them):
//!   the 64 masks (512 bytes); the 16 fragment offsets (`u16`: the index of the fragment's
//!   first value among the tile's values, 32 bytes); the *word prefixes* (16 bytes per
//!   fragment, 256 bytes: byte `2w + s` is where segment `s` of lane `4w` starts, counted
//!   from the fragment's first value: the values of the segments before `s` plus those of
//!   segment `s` in lanes `0 .. 4w`; byte 0 is 0, none exceeds 240); the values (`u16` bits
//!   of `T`); zero padding to a multiple of 16 bytes. A tile with `nnz` values is exactly
//!   `ceil((800 + 2·nnz) / 16)` quads (16-byte units) long, 50 to 562.
//! * **Tile order**: *panels* of 4 tiles stacked along M (256 rows, the rows one kernel step
//!   multiplies), panels row-major, the tiles of a panel top to bottom
//!   ([`crate::layout::bitmap_tile_index`]); the last panel row has fewer tiles when `tiles_m` is not
//!   a multiple of 4. Consecutive panels are consecutive bytes, so a stream-K range of panels
//!   is one contiguous copy.
//! * `tile_offsets`: `tiles + 1` `u32`, in quads: tile `t` is
//!   `data[4·tile_offsets[t] .. 4·tile_offsets[t + 1]]` (`data` is `u32` words, each two
//!   `u16`, a 32-bit mask word of four lanes or four prefix bytes, little-endian), so a
//!   weight may hold up to 64 GiB.
//!
//! Why lane-major: a lane's values of a segment are contiguous, so the kernel decodes them
//! with one running index instead of a `popc` per A register. Lane `l` finds the start of
//! segment `s` at the fragment offset plus prefix byte `s` of its 32-bit mask word `l / 4`
//! plus one `popc` of the lower lanes' bits of the segment in that word. Why segments: a
//! warp's load of one value then stays inside one segment (at most 128 bytes), one
//! shared-memory wavefront at any density.
//!
//! Entries outside the matrix (edge tiles) are padding: their mask bits must be clear.
//! [`BitmapWeight::from_parts`] checks every one of these rules.
//!
//! Bytes per element: `0.195 + 2·density` (masks, fragment offsets and word prefixes, then
//! values), against `4·density` for Tiled-CSL, so the bitmap moves fewer bytes below about
//! 90% sparsity.
//!
//! Files: [`file`](mod@file) (format tag 3). Files of the earlier layouts still load,
//! repacked (`legacy`): lane-major tiles with one segment per fragment (format tag 2) and
//! block-major tiles (format tag 1: 8×8 blocks with a mask each, no word prefixes).

mod cpu;
pub mod file;
pub(crate) mod launch;
mod legacy;
mod pack;

use std::marker::PhantomData;

use crate::checked::Sizes;
use crate::element::{Dtype, Element};
use crate::error::{Error, Result};
use crate::layout::{
    bitmap_mask_coord, bitmap_panel_height, bitmap_tile_index, BITMAP_MASK_BYTES, BITMAP_MAX_TILE_BYTES,
    BITMAP_PANEL_TILES, BITMAP_QUAD_BYTES, BITMAP_SEGMENTS, BITMAP_SEGMENT_BITS, BITMAP_TILE, BITMAP_TILE_FRAGS,
    BITMAP_TILE_HEADER_BYTES, BITMAP_TILE_MASKS, BITMAP_WORD_PREFIX_AT,
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
/// `u32` words before a tile's values (masks, fragment offsets, word prefixes).
pub const HEADER_WORDS: usize = BITMAP_TILE_HEADER_BYTES / 4;
/// `u32` words of the masks (where the fragment offsets start).
const MASK_WORDS: usize = BITMAP_MASK_BYTES / 4;
/// `u32` word where the word prefixes start.
const PREFIX_WORDS_AT: usize = BITMAP_WORD_PREFIX_AT / 4;
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
/// every fragment offset is the popcount of the tile's masks before it, every word prefix
/// the popcount of its fragment's mask words before it, padding is zero.
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

/// Mask `m` of a tile's words (`tile[2m]` low half, `tile[2m + 1]` high).
fn mask(tile: &[u32], m: usize) -> u64 {
    u64::from(tile[2 * m]) | u64::from(tile[2 * m + 1]) << 32
}

/// `u16` number `i` of `words` (little-endian inside the words).
fn half(words: &[u32], i: usize) -> u16 {
    let w = words[i / 2];
    (if i % 2 == 0 { w } else { w >> 16 }) as u16
}

/// Most word prefix bytes of a fragment (8 words × [`BITMAP_SEGMENTS`]).
const MAX_PREFIXES: usize = 8 * BITMAP_SEGMENTS;

/// The mask bits of each of `segments` value segments of a fragment in a `u64` mask (eight
/// lanes' bytes): one segment holds every bit.
fn segment_bits(segments: usize) -> &'static [u64] {
    const ALL: [u64; 1] = [u64::MAX];
    const SPLIT: [u64; BITMAP_SEGMENTS] =
        [BITMAP_SEGMENT_BITS[0] as u64 * 0x1_0000_0001, BITMAP_SEGMENT_BITS[1] as u64 * 0x1_0000_0001];
    if segments == BITMAP_SEGMENTS { &SPLIT } else { &ALL }
}

/// The word prefixes of a fragment whose four masks are `masks`, stored as `segments`
/// segments (1 or 2): byte `segments·w + s` counts the values of the segments before `s`
/// and those of segment `s` in the 32-bit mask words `0 .. w` (lanes `0 .. 4w`), at most
/// 128 + 7·4·4 = 240 (one segment: 7·32 = 224). The first `8·segments` bytes are used.
fn word_prefixes(masks: &[u64; 4], segments: usize) -> [u8; MAX_PREFIXES] {
    let mut prefixes = [0u8; MAX_PREFIXES];
    let mut n = 0u32;
    for (s, &bits) in segment_bits(segments).iter().enumerate() {
        for w in 0..8 {
            prefixes[segments * w + s] = n as u8; // n ≤ 240 here
            n += (((masks[w / 2] & bits) >> (32 * (w % 2))) as u32).count_ones();
        }
    }
    prefixes
}

/// Fragment `f`'s word prefixes as stored in a tile's words (`8·segments` bytes from word
/// `PREFIX_WORDS_AT + 2·segments·f`, little-endian); the rest zero.
fn stored_prefixes(tile: &[u32], f: usize, segments: usize) -> [u8; MAX_PREFIXES] {
    let mut b = [0u8; MAX_PREFIXES];
    let words = &tile[PREFIX_WORDS_AT + 2 * segments * f..][..2 * segments];
    for (chunk, word) in b.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    b
}

/// The masks of fragment `f` with the bits of each, in the order the fragment's values are
/// stored by a layout of `segments` segments: per segment, the fragment's four masks, each
/// restricted to the segment's bits.
fn value_order(segments: usize, f: usize) -> impl Iterator<Item = (usize, u64)> {
    segment_bits(segments).iter().flat_map(move |&bits| (0..4).map(move |q| (4 * f + q, bits)))
}

/// What the tile checks of [`check_tiles`], the walk over a tile's entries and the packer
/// depend on: today's lane-major tiles ([`LANE_MAJOR`]) or those of earlier files
/// (`legacy`: lane-major with one segment, format tag 2; block-major, format tag 1).
struct TileLayout {
    /// Bytes before a tile's values.
    header_bytes: usize,
    /// Tile-local (row, col) of bit `bit` of mask `m`.
    coord: fn(usize, usize) -> (usize, usize),
    /// Value segments per fragment, each with its word prefixes (`8·segments` bytes per
    /// fragment after the fragment offsets); 0: no word prefixes, values in mask order.
    segments: usize,
    /// What messages call a 64-entry mask (`"mask"`, `"block"`).
    mask_name: &'static str,
}

impl TileLayout {
    /// Quads of a tile holding `nnz` values.
    const fn tile_quads(&self, nnz: usize) -> usize {
        (self.header_bytes + 2 * nnz).div_ceil(BITMAP_QUAD_BYTES)
    }

    /// The bits of mask `m` that lie inside a tile with `rn` valid rows and `cn` valid
    /// columns.
    fn valid_bits(&self, m: usize, rn: usize, cn: usize) -> u64 {
        let mut v = 0u64;
        for bit in 0..64 {
            let (r, c) = (self.coord)(m, bit);
            if r < rn && c < cn {
                v |= 1 << bit;
            }
        }
        v
    }

    /// The stored entries of a tile's words (a tile that passed [`check_tiles`] with this
    /// layout) in storage order: tile-local row, column and value bits.
    fn entries<'w>(&self, words: &'w [u32]) -> impl Iterator<Item = (usize, usize, u16)> + 'w {
        let (coord, segments, values) = (self.coord, self.segments, &words[self.header_bytes / 4..]);
        (0..BITMAP_TILE_FRAGS)
            .flat_map(move |f| value_order(segments, f))
            .flat_map(move |(m, segment)| {
                let mut bits = mask(words, m) & segment;
                std::iter::from_fn(move || {
                    (bits != 0).then(|| {
                        let bit = bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        coord(m, bit)
                    })
                })
            })
            .enumerate()
            .map(move |(i, (r, c))| (r, c, half(values, i)))
    }
}

/// Today's tiles (see the [module docs](self)).
const LANE_MAJOR: TileLayout = TileLayout {
    header_bytes: BITMAP_TILE_HEADER_BYTES,
    coord: bitmap_mask_coord,
    segments: BITMAP_SEGMENTS,
    mask_name: "mask",
};
const _: () = assert!(LANE_MAJOR.tile_quads(0) == tile_quads(0));
const _: () = assert!(LANE_MAJOR.tile_quads(TILE * TILE) == MAX_TILE_QUADS);

/// Tiles (`tile_row`, `tile_col`) of a `tiles_m` × `tiles_k` grid in storage order: panel
/// rows, their columns, the panel's tiles top to bottom (so the `i`-th is tile `i`).
fn storage_order(tiles_m: usize, tiles_k: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..tiles_m.div_ceil(BITMAP_PANEL_TILES)).flat_map(move |p| {
        let h = bitmap_panel_height(p, tiles_m);
        (0..tiles_k).flat_map(move |tk| (BITMAP_PANEL_TILES * p..BITMAP_PANEL_TILES * p + h).map(move |tr| (tr, tk)))
    })
}

/// Checks the tiles of a `rows × cols` weight (`tile_grid` checked the shape) against
/// `layout`, with checked arithmetic: `tile_offsets` has `tiles + 1` entries from 0,
/// non-decreasing, the last equal to `data.len() / 4`; each tile is exactly its layout's
/// length for its popcount; no mask bit outside the matrix; each fragment offset is the
/// popcount of the masks before it, each word prefix (if the layout has them) that of its
/// fragment's mask words before it; the padding after the values is zero. Returns the
/// values in all; `bad` makes the error of a message naming the broken rule.
fn check_tiles(
    layout: &TileLayout,
    rows: usize,
    cols: usize,
    tile_offsets: &[u32],
    data: &[u32],
    bad: impl Fn(String) -> Error,
) -> Result<usize> {
    let (tiles_m, tiles_k, tiles) = tile_grid(rows, cols)?;
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
    let (min_quads, max_quads) = (layout.tile_quads(0), layout.tile_quads(TILE * TILE));
    let (values_at, name) = (layout.header_bytes / 4, layout.mask_name);
    let mut nnz = 0usize;
    let mut valid = [[0u64; BITMAP_TILE_MASKS]; 2]; // cache for the most common shapes
    let mut valid_for = [(usize::MAX, usize::MAX); 2];
    for (t, (tr, tk)) in storage_order(tiles_m, tiles_k).enumerate() {
        let (rn, cn) = (TILE.min(rows - tr * TILE), TILE.min(cols - tk * TILE));
        let (a, b) = (tile_offsets[t] as usize, tile_offsets[t + 1] as usize);
        if b < a {
            return Err(bad(format!("tile_offsets decrease at [{}]: {a} then {b}", t + 1)));
        }
        let quads = b - a;
        if !(min_quads..=max_quads).contains(&quads) {
            return Err(bad(format!(
                "tile {t} (tile_offsets[{t}..={}]) is {quads} quads, a tile is {min_quads}..={max_quads}",
                t + 1
            )));
        }
        // b ≤ last, so these fit (checked above).
        let words = &data[a * QUAD_WORDS..b * QUAD_WORDS];
        let slot = usize::from(cn != TILE);
        if valid_for[slot] != (rn, cn) {
            for (m, v) in valid[slot].iter_mut().enumerate() {
                *v = layout.valid_bits(m, rn, cn);
            }
            valid_for[slot] = (rn, cn);
        }
        let mut count = 0usize;
        for f in 0..BITMAP_TILE_FRAGS {
            let off = usize::from(half(&words[MASK_WORDS..], f));
            if off != count {
                return Err(bad(format!("tile {t}: fragment offset {f} is {off}, its {name}s before hold {count} values")));
            }
            let masks = [0, 1, 2, 3].map(|q| mask(words, 4 * f + q));
            for (q, &m) in masks.iter().enumerate() {
                if m & !valid[slot][4 * f + q] != 0 {
                    return Err(bad(format!(
                        "tile {t}: {name} {} ({m:#018x}) has bits outside the {rows}×{cols} matrix",
                        4 * f + q
                    )));
                }
                count += m.count_ones() as usize;
            }
            if layout.segments > 0 {
                let n = layout.segments;
                let (want, got) = (word_prefixes(&masks, n), stored_prefixes(words, f, n));
                if let Some(b) = (0..8 * n).find(|&b| want[b] != got[b]) {
                    let (w, segment) = (b / n, b % n);
                    let which = if n == 1 { String::new() } else { format!(" (segment {segment})") };
                    return Err(bad(format!(
                        "tile {t}: fragment {f}'s word prefix {b} is {}, expected {}: the values before lane {}{which}",
                        got[b],
                        want[b],
                        4 * w
                    )));
                }
            }
        }
        if quads != layout.tile_quads(count) {
            return Err(bad(format!(
                "tile {t} holds {count} values, so it is {} quads long, but tile_offsets give {quads}",
                layout.tile_quads(count)
            )));
        }
        // Padding: the half-word after an odd count and the words after the values.
        let odd_pad = count % 2 == 1 && words[values_at + count / 2] >> 16 != 0;
        if odd_pad || words[values_at + count.div_ceil(2)..].iter().any(|&w| w != 0) {
            return Err(bad(format!("tile {t}: the padding after its {count} values is not zero")));
        }
        nnz += count;
    }
    Ok(nnz)
}

impl<T: Element> BitmapWeight<T> {
    /// Builds a weight from raw arrays after checking every rule of the format, with checked
    /// arithmetic (nothing unchecked can reach a kernel): `tile_offsets` has `tiles + 1`
    /// entries from 0, non-decreasing, the last equal to `data.len() / 4`; each tile is
    /// exactly [`tile_quads`]`(its popcount)` quads; no mask bit outside the matrix; each
    /// fragment offset equals the popcount of the masks before it; each word prefix equals
    /// the popcount of its fragment's mask words before it; the padding after the values is
    /// zero. Stored values may be any bits (±0, NaN, ±Inf included).
    ///
    /// Errors: [`Error::Shape`] for an empty or too large shape; [`Error::InvalidArgument`]
    /// naming the field (`tile_offsets[i]`, a tile's mask, fragment offset, word prefix,
    /// length or padding) for anything else.
    pub fn from_parts(rows: usize, cols: usize, tile_offsets: Vec<u32>, data: Vec<u32>) -> Result<Self> {
        let bad = |msg: String| Error::InvalidArgument(format!("bitmap weight {rows}×{cols}: {msg}"));
        let nnz = check_tiles(&LANE_MAJOR, rows, cols, &tile_offsets, &data, bad)?;
        Ok(BitmapWeight { rows, cols, nnz, tile_offsets, data, _t: PhantomData })
    }

    /// Decodes back to a dense row-major `rows × cols` matrix.
    pub fn to_dense(&self) -> Vec<T> {
        let mut out = vec![T::from_bits(0); self.rows * self.cols];
        for tr in 0..self.tiles_m() {
            for tk in 0..self.tiles_k() {
                let words = self.tile_words(bitmap_tile_index(tr, tk, self.tiles_m(), self.tiles_k()));
                for (r, c, bits) in LANE_MAJOR.entries(words) {
                    out[(tr * TILE + r) * self.cols + tk * TILE + c] = T::from_bits(bits);
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
