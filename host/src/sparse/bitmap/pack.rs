//! Packing dense (optionally magnitude-pruned) and Tiled-CSL weights into the bitmap format.

use super::{
    tile_grid, value_order, word_prefixes, BitmapWeight, TileLayout, LANE_MAJOR, MASK_WORDS, PREFIX_WORDS_AT, QUAD_WORDS,
    TILE,
};
use crate::checked::Sizes;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::layout::{bitmap_tile_index, BITMAP_TILE_FRAGS};
use crate::sparse::format::{is_zero_bits, worker_threads};
use crate::sparse::SparseWeight;
use std::marker::PhantomData;

/// Below this many elements per thread the packer does not start another thread.
const MIN_ELEMS_PER_THREAD: usize = 1 << 19;

/// Appends the words of tile (`tr`, `tk`) of the row-major `dense` (`rows × cols`) to `out`
/// in `layout` (today's, or an earlier one for tests of the file loader), storing every
/// entry that is not ±0; returns its value count. (The loader of earlier files passes one
/// tile's entries as a whole matrix.)
pub(super) fn encode_tile<T: Element>(
    layout: &TileLayout,
    dense: &[T],
    rows: usize,
    cols: usize,
    tr: usize,
    tk: usize,
    out: &mut Vec<u32>,
) -> usize {
    let (r0, c0) = (tr * TILE, tk * TILE);
    let (rn, cn) = (TILE.min(rows - r0), TILE.min(cols - c0));
    let start = out.len();
    out.resize(start + layout.header_bytes / 4, 0);
    let entry = |m: usize, bit: usize| {
        let (r, c) = (layout.coord)(m, bit);
        (r < rn && c < cn).then(|| dense[(r0 + r) * cols + c0 + c].to_bits()).filter(|&b| !is_zero_bits(b))
    };
    let mut values: Vec<u16> = Vec::with_capacity(TILE * TILE);
    for f in 0..BITMAP_TILE_FRAGS {
        // Fragment offset: the values so far (< 4096, fits u16).
        out[start + MASK_WORDS + f / 2] |= (values.len() as u32) << (16 * (f % 2));
        let masks: [u64; 4] = std::array::from_fn(|q| {
            (0..64).filter(|&bit| entry(4 * f + q, bit).is_some()).fold(0, |m, bit| m | 1 << bit)
        });
        for (q, mask) in masks.iter().enumerate() {
            out[start + 2 * (4 * f + q)] = *mask as u32;
            out[start + 2 * (4 * f + q) + 1] = (*mask >> 32) as u32;
        }
        for (m, segment) in value_order(layout.segments, f) {
            let mut bits = masks[m % 4] & segment;
            while bits != 0 {
                values.extend(entry(m, bits.trailing_zeros() as usize));
                bits &= bits - 1;
            }
        }
        if layout.segments > 0 {
            let p = word_prefixes(&masks, layout.segments);
            let at = start + PREFIX_WORDS_AT + 2 * layout.segments * f;
            for (w, bytes) in p[..8 * layout.segments].chunks_exact(4).enumerate() {
                out[at + w] = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }
    }
    for pair in values.chunks(2) {
        out.push(u32::from(pair[0]) | pair.get(1).map_or(0, |&v| u32::from(v) << 16));
    }
    let nnz = values.len();
    out.resize(start + layout.tile_quads(nnz) * QUAD_WORDS, 0);
    nnz
}

impl<T: Element> BitmapWeight<T> {
    /// Packs a dense row-major `rows × cols` matrix, storing every entry that is not ±0.
    /// Large matrices are packed on several threads (one per range of panel rows); the result
    /// does not depend on the thread count.
    ///
    /// Errors: [`Error::Shape`] if a dimension is zero or `dense.len() != rows · cols`;
    /// [`Error::InvalidArgument`] if the packed weight would exceed the format's 2³² quads.
    pub fn from_dense(rows: usize, cols: usize, dense: &[T]) -> Result<Self> {
        let (tiles_m, tiles_k, _) = tile_grid(rows, cols)?;
        let elems = Sizes::SHAPE.mul("dense weight elements (rows × cols)", rows, cols)?;
        if dense.len() != elems {
            return Err(Error::Shape(format!("dense weight of {rows}×{cols} needs {elems} elements, got {}", dense.len())));
        }
        // Tile rows of one panel row are packed together (the panel order interleaves them).
        let panel_rows = tiles_m.div_ceil(4);
        let threads = worker_threads(elems, MIN_ELEMS_PER_THREAD).min(panel_rows);
        let encode = |p0: usize, p1: usize| {
            let mut words = Vec::new();
            let mut lens = Vec::new();
            let mut nnz = 0;
            for p in p0..p1 {
                let h = crate::layout::bitmap_panel_height(p, tiles_m);
                for tk in 0..tiles_k {
                    for tr in 4 * p..4 * p + h {
                        debug_assert_eq!(bitmap_tile_index(tr, tk, tiles_m, tiles_k), 4 * p * tiles_k + tk * h + tr % 4);
                        let before = words.len();
                        nnz += encode_tile(&LANE_MAJOR, dense, rows, cols, tr, tk, &mut words);
                        lens.push((words.len() - before) / QUAD_WORDS);
                    }
                }
            }
            (words, lens, nnz)
        };
        let parts: Vec<(Vec<u32>, Vec<usize>, usize)> = if threads <= 1 {
            vec![encode(0, panel_rows)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|i| {
                        let (a, b) = (panel_rows * i / threads, panel_rows * (i + 1) / threads);
                        s.spawn(move || encode(a, b))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
            })
        };
        let mut offsets = Vec::with_capacity(tiles_m * tiles_k + 1);
        offsets.push(0u32);
        let mut at = 0usize;
        let (mut data, mut nnz) = (Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum()), 0);
        for (words, lens, n) in parts {
            for len in lens {
                at += len;
                offsets.push(u32::try_from(at).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "bitmap weight {rows}×{cols}: {at} quads exceed the format's 32-bit tile offsets"
                    ))
                })?);
            }
            data.extend_from_slice(&words);
            nnz += n;
        }
        Ok(BitmapWeight { rows, cols, nnz, tile_offsets: offsets, data, _t: PhantomData })
    }

    /// Magnitude pruning, then packing: keeps exactly the entries
    /// [`SparseWeight::prune_magnitude`] keeps (the `round((1 − sparsity)·rows·cols)` largest
    /// `|w|`, ties in row-major order, NaN first).
    ///
    /// Errors: those of [`SparseWeight::prune_magnitude`] and [`from_dense`](Self::from_dense).
    pub fn prune_magnitude(rows: usize, cols: usize, dense: &[T], sparsity: f64) -> Result<Self> {
        Self::from_tiled_csl(&SparseWeight::prune_magnitude(rows, cols, dense, sparsity)?)
    }

    /// The same matrix as a Tiled-CSL weight (stored ±0 entries of the Tiled-CSL weight are
    /// not stored: the bitmap stores nonzeros only).
    pub fn from_tiled_csl(w: &SparseWeight<T>) -> Result<Self> {
        Self::from_dense(w.rows(), w.cols(), &w.to_dense())
    }
}
