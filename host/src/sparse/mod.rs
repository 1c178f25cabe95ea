//! Sparse weights in the **Tiled-CSL** format consumed by the Tensor Core SpMM kernels.
//!
//! Flash-LLM's "Load-as-Sparse, Compute-as-Dense" idea: a pruned weight matrix travels through
//! global memory in a compact sparse encoding, is expanded into a dense tile in shared memory,
//! and then multiplied on the Tensor Cores as if it were dense. This module owns the host side
//! of that encoding: building it from dense (optionally magnitude-pruned) matrices, validating
//! it, reordering it for conflict-free shared-memory stores, and saving/loading it to files.
//!
//! # The format
//!
//! A weight `W` has `rows = M` (out features) and `cols = K` (in features), row-major. It is cut
//! into tiles of [`TILE_M`] × [`TILE_K`] = 256 × 64 elements (the slice of `W` one SpMM thread
//! block rebuilds per pipeline step; the constants come from the shared
//! [`layout`](crate::layout) module: `SPARSE_TILE_M`, `TILE_K`). With
//! `tiles_m = ceil(M / 256)` and `tiles_k = ceil(K / 64)`, tile `t = tm * tiles_k + tk` covers
//! rows `256*tm ..` and columns `64*tk ..`. Edge tiles are partial: positions outside the
//! matrix never appear.
//!
//! * `words`: every tile's nonzero entries, tile after tile. One entry is one `u32` word,
//!   `(pos << 16) | value_bits`, where `pos` = [`tile_pos`]`(r, c)` is the element index of
//!   tile-local entry `(r, c)` in the kernel's fragment-native 256 × 64 shared-memory tile
//!   (16×16 blocks of 512 bytes, two halves of 8 rows in which each lane's 8 bytes are
//!   its `mma` B fragment of those rows; see [`tile_pos`]), so
//!   `pos < 16384` ([`TILE_ELEMS`]).
//! * Each tile's list has a multiple of 4 words (the kernel loads 16 bytes at a time); the
//!   packer pads it to a multiple of [`LIST_ALIGN_WORDS`] = 32 words (128 bytes, so lists
//!   start on cache lines) by repeating the tile's last real word. Empty tiles have no words;
//!   a fully dense tile has exactly 16384 (no padding). The kernel consumes a list in chunks
//!   of at most its shared-memory ring's size (a multiple of 128 words; [`CHUNK_WORDS`] is
//!   the fallback ring).
//! * `tile_offsets`: `tiles_m * tiles_k + 1` entries; tile `t` owns
//!   `words[tile_offsets[t] .. tile_offsets[t + 1]]`.
//!
//! Inside a tile the words are in row-major `(r, c)` order, unless the weight was passed
//! through [`SparseWeight::reorder_for_banks`], which permutes the tile's words so that the
//! kernel's shared-memory stores hit distinct banks (see [`reorder`]).
//!
//! Files: see [`file`](mod@file) for the byte layout written by [`SparseWeight::save`].
//!
//! A second format, [`bitmap`] ([`BitmapWeight`]: a bit per element, in the `mma` A
//! fragments' lane order, plus the nonzero values), moves fewer bytes than Tiled-CSL below
//! about 92% sparsity; its kernel decodes `mma` operands straight from the masks.

pub mod bitmap;
pub mod file;
pub mod format;
pub mod formats;
pub mod reorder;
pub(crate) mod tiled_csl_launch;

#[cfg(test)]
pub(crate) mod test_util;

pub use format::{
    pack_word, tile_pos, tile_coord, word_bits, word_pos, SparseWeight, CHUNK_WORDS, LIST_ALIGN_WORDS,
    TILE_ELEMS, TILE_K, TILE_M, WORDS_PER_LOAD,
};
pub use bitmap::BitmapWeight;
pub use formats::{fastest_for_density, FormatChoice, SparseFormat, SparseFormatWeight, BITMAP_MIN_DENSITY, SPARSE_MAX_DENSITY};
pub use reorder::{BLOCK_WORDS, SMEM_BANKS};
