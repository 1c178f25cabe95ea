//! The Tiled-CSL data structure: construction from dense matrices, magnitude pruning,
//! validation of raw arrays, and decoding back to dense.

use std::marker::PhantomData;

use crate::checked::Sizes;
use crate::element::{Dtype, Element};
use crate::error::{Error, Result};
use crate::layout;

/// Rows of one tile: [`layout::SPARSE_TILE_M`] = 256, the rows of `W` one SpMM thread block
/// rebuilds per pipeline step (4 row tiles of 64).
pub const TILE_M: usize = layout::SPARSE_TILE_M;
/// Columns of one tile (reduction elements per pipeline step of the kernel):
/// [`layout::TILE_K`] = 64.
pub const TILE_K: usize = layout::TILE_K;
/// Elements of one tile, [`layout::SPARSE_TILE_ELEMS`] = 256 × 64 = 16384; every word
/// position is below this.
pub const TILE_ELEMS: usize = layout::SPARSE_TILE_ELEMS;
/// Words of the kernel's fallback shared-memory word ring ([`layout::CHUNK_WORDS`]); the
/// kernel consumes a tile's word list in chunks of at most its ring's size, which is always a
/// multiple of 128 words.
pub const CHUNK_WORDS: usize = layout::CHUNK_WORDS;
/// Words per 16-byte global load; every tile's list length is a multiple of this.
pub const WORDS_PER_LOAD: usize = 4;
/// The packer pads every tile's list to a multiple of this many words (128 bytes, one cache
/// line): tile lists then start on line boundaries, so each warp's 16-byte loads cover whole
/// lines (measured on the H100: a list misaligned by 16 bytes costs 2.9× the L1 wavefronts
/// and 1.5× the L2 sectors per load). Lists that are only multiples of [`WORDS_PER_LOAD`]
/// (older files) are still valid, just slower.
pub const LIST_ALIGN_WORDS: usize = 32;

// The tile is `TILE_M × TILE_K`, and every position fits the 16-bit field of a word.
const _: () = assert!(TILE_ELEMS == TILE_M * TILE_K);
const _: () = assert!(TILE_ELEMS <= 1 << 16);
// `Source::encode_tiles_with` masks tile word indices with `TILE_ELEMS - 1`.
const _: () = assert!(TILE_ELEMS.is_power_of_two());
// A full tile needs no padding, so a tile's list never exceeds `TILE_ELEMS` words.
const _: () = assert!(TILE_ELEMS.is_multiple_of(LIST_ALIGN_WORDS) && LIST_ALIGN_WORDS.is_multiple_of(WORDS_PER_LOAD));

/// Element index of tile-local entry `(r, c)` in the kernel's *fragment-native* shared-memory
/// tile ([`layout::frag_pos`]).
///
/// The tile is a row-major sequence of 16×16 blocks (4 per 16 rows), 256 elements (512 bytes)
/// each, and a block is two halves of 8 rows; inside a half, lane `l`'s 4 elements (row
/// `l/4`, columns `2(l%4)`, `+1`, `+8`, `+9`) are its `mma.m16n8k16` B fragment of those rows
/// ([`layout::frag_b_coord`]) and half of its A fragment of the block
/// ([`layout::frag_a_coord`]), so a warp reads a B fragment with one conflict-free 8-byte
/// access per lane and an A fragment with two:
///
/// `pos = 256·((r/16)·4 + c/16) + 128·((r%16)/8) + 4·(4·(r%8) + (c%8)/2) + 2·((c%16)/8) + c%2`,
/// in `0..16384` for `r < 256`, `c < 64`.
///
/// `r` must be below 256 and `c` below 64 (checked in debug builds; release builds use
/// `r % 256`, `c % 64`).
pub const fn tile_pos(r: usize, c: usize) -> u16 {
    debug_assert!(r < TILE_M && c < TILE_K);
    layout::frag_pos(r % TILE_M, c % TILE_K) as u16
}

/// Inverse of [`tile_pos`] ([`layout::frag_pos_inverse`]): the tile-local `(r, c)` stored
/// at shared-memory element `pos`.
///
/// `pos` must be below 16384 (checked in debug builds; release builds use `pos % 16384`).
pub const fn tile_coord(pos: u16) -> (usize, usize) {
    debug_assert!((pos as usize) < TILE_ELEMS);
    layout::frag_pos_inverse(pos as usize % TILE_ELEMS)
}

/// One Tiled-CSL word: tile position in the high half, raw element bits in the low half.
pub const fn pack_word(pos: u16, bits: u16) -> u32 {
    ((pos as u32) << 16) | bits as u32
}

/// The tile position of a word (see [`tile_pos`]).
pub const fn word_pos(word: u32) -> u16 {
    (word >> 16) as u16
}

/// The raw element bits of a word.
pub const fn word_bits(word: u32) -> u16 {
    (word & 0xffff) as u16
}

/// True for the bits of +0.0 or -0.0 (same sign bit layout in f16 and bf16).
pub(crate) const fn is_zero_bits(bits: u16) -> bool {
    bits & 0x7fff == 0
}

/// A pruned weight matrix (`rows` × `cols`, row-major semantics) in Tiled-CSL format.
///
/// Invariants (established by every constructor, see [`SparseWeight::from_parts`]):
/// `tile_offsets` has `tiles_m * tiles_k + 1` non-decreasing multiples of 4 from 0 to
/// `words.len()`; every word addresses an entry inside the matrix; inside a tile a position
/// appears once, except for fewer than [`LIST_ALIGN_WORDS`] exact duplicates (padding).
#[derive(Clone, Debug, PartialEq)]
pub struct SparseWeight<T: Element> {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) nnz: usize,
    pub(super) tile_offsets: Vec<u32>,
    pub(super) words: Vec<u32>,
    pub(super) reordered: bool,
    pub(super) _t: PhantomData<T>,
}

impl<T: Element> Eq for SparseWeight<T> {}

/// Tile grid of a `rows` × `cols` matrix: `(tiles_m, tiles_k, tiles)`, after checking that the
/// matrix is non-empty and that `rows * cols` and `tiles + 1` fit in `usize` (checked
/// arithmetic, [`Sizes::SHAPE`]).
pub(crate) fn tile_grid(rows: usize, cols: usize) -> Result<(usize, usize, usize)> {
    if rows == 0 || cols == 0 {
        return Err(Error::Shape(format!(
            "sparse weight must be at least 1×1, got {rows}×{cols}"
        )));
    }
    Sizes::SHAPE.mul("sparse weight elements (rows × cols)", rows, cols)?;
    let tiles_m = rows.div_ceil(TILE_M);
    let tiles_k = cols.div_ceil(TILE_K);
    // tiles <= rows * cols, which fits; the `+ 1` of the offsets array is checked.
    let tiles = Sizes::SHAPE.mul("sparse weight tiles", tiles_m, tiles_k)?;
    Sizes::SHAPE.add("sparse weight tile offsets (tiles + 1)", tiles, 1)?;
    Ok((tiles_m, tiles_k, tiles))
}

/// Checks `dense.len() == rows * cols`.
fn check_dense_len(rows: usize, cols: usize, len: usize) -> Result<()> {
    let elems = Sizes::SHAPE.mul("dense weight elements (rows × cols)", rows, cols)?;
    if len != elems {
        return Err(Error::Shape(format!(
            "dense weight of {rows}×{cols} needs {elems} elements, got {len}"
        )));
    }
    Ok(())
}

/// Which entries `prune_magnitude` keeps, as a function of key (`bits & 0x7fff`) and index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    /// Keep nothing.
    Nothing,
    /// Keep every nonzero entry.
    AllNonzero,
    /// Keep keys above `key`, and keys equal to `key` at indices `<= last_index`.
    Above { key: u16, last_index: usize },
}

/// Magnitude ordering key of a 16-bit float: `bits & 0x7fff`.
///
/// For both f16 and bf16 the unsigned order of the sign-less bits is the order of `|w|` on
/// zeros, subnormals, normals and infinity, and every NaN is above infinity, so NaNs count as
/// the largest weights.
const fn magnitude_key(bits: u16) -> u16 {
    bits & 0x7fff
}

/// Below this many elements per thread, [`SparseWeight::from_dense`] and
/// [`SparseWeight::prune_magnitude`] do not start another thread (so matrices under 1M
/// elements are encoded on the calling thread).
const MIN_ELEMS_PER_THREAD: usize = 1 << 19;

/// Threads for `work` units of work: `available_parallelism()`, but no more than one per
/// `min_per_thread` units, and at least 1.
pub(super) fn worker_threads(work: usize, min_per_thread: usize) -> usize {
    let avail = std::thread::available_parallelism().map_or(1, |n| n.get());
    avail.min(work / min_per_thread.max(1)).max(1)
}

/// Cuts `0..n` into at most `parts` (at least 1) contiguous non-empty ranges `(start, end)`
/// of nearly equal length, in order. For `n == 0`, the single range `(0, 0)`.
fn split_evenly(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, n.max(1));
    let (q, r) = (n / parts, n % parts);
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 0..parts {
        let len = q + usize::from(i < r);
        out.push((start, start + len));
        start += len;
    }
    debug_assert_eq!(start, n);
    out
}

/// Joins a scoped thread, re-raising its panic on the caller.
fn join<R>(h: std::thread::ScopedJoinHandle<'_, R>) -> R {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Concatenates `parts` in order; with several parts the copies run in parallel (one
/// thread per part) into one zero-initialized allocation.
fn concat_parallel(mut parts: Vec<Vec<u32>>) -> Vec<u32> {
    if parts.len() <= 1 {
        return parts.pop().unwrap_or_default();
    }
    let total = parts.iter().map(Vec::len).sum();
    let mut out = vec![0u32; total];
    std::thread::scope(|s| {
        let mut rest: &mut [u32] = &mut out;
        for part in parts {
            let (dst, tail) = std::mem::take(&mut rest).split_at_mut(part.len());
            rest = tail;
            s.spawn(move || dst.copy_from_slice(&part));
        }
    });
    out
}

/// The input of [`SparseWeight::build`], shared by its threads.
struct Source<'a, T> {
    rows: usize,
    cols: usize,
    tiles_k: usize,
    dense: &'a [T],
    rule: Keep,
}

// Manual impls: `derive` would require `T: Copy` through the reference.
impl<T> Clone for Source<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Source<'_, T> {}

/// The encoding of a contiguous range of tiles.
struct Encoded {
    /// The tiles' words, padded, tile after tile.
    words: Vec<u32>,
    /// Word count of each tile of the range (at most `TILE_ELEMS`).
    lens: Vec<u32>,
    /// Stored entries (padding not counted).
    nnz: usize,
}

impl<T: Element> Source<'_, T> {
    /// Encodes tiles `t0..t1` (`t = tm * tiles_k + tk`), each in row-major `(r, c)` order,
    /// padded to a multiple of [`LIST_ALIGN_WORDS`] words with its last word.
    fn encode_tiles(self, t0: usize, t1: usize) -> Encoded {
        // One copy of the loop per rule, with a branch-free test (`&`, `|`: no short
        // circuit).
        match self.rule {
            Keep::Nothing => self.encode_tiles_with(t0, t1, |_, _| false),
            Keep::AllNonzero => self.encode_tiles_with(t0, t1, |_, _| true),
            Keep::Above { key, last_index } => self.encode_tiles_with(t0, t1, move |k, i| {
                (k > key) | ((k == key) & (i <= last_index))
            }),
        }
    }

    /// [`encode_tiles`](Self::encode_tiles) keeping the nonzero entries for which
    /// `keeps(magnitude key, row-major index)` holds.
    fn encode_tiles_with(
        self,
        t0: usize,
        t1: usize,
        keeps: impl Fn(u16, usize) -> bool,
    ) -> Encoded {
        let Source {
            rows,
            cols,
            tiles_k,
            dense,
            ..
        } = self;
        // One tile's words. Every candidate word is written at `n`, which only advances
        // when the entry is kept (no branch on the data); `n` stays below the number of
        // entries visited, so below TILE_ELEMS, and the mask only lets the compiler see it.
        let mut tile: Box<[u32; TILE_ELEMS]> = vec![0u32; TILE_ELEMS]
            .into_boxed_slice()
            .try_into()
            .expect("TILE_ELEMS words");
        let mut words: Vec<u32> = Vec::new();
        let mut lens = Vec::with_capacity(t1 - t0);
        let mut nnz = 0usize;
        for t in t0..t1 {
            let (r0, c0) = ((t / tiles_k) * TILE_M, (t % tiles_k) * TILE_K);
            let (rn, cn) = (TILE_M.min(rows - r0), TILE_K.min(cols - c0));
            let mut n = 0usize;
            for r in 0..rn {
                let base = (r0 + r) * cols + c0;
                for (c, v) in dense[base..base + cn].iter().enumerate() {
                    let bits = v.to_bits();
                    let keep = !is_zero_bits(bits) & keeps(magnitude_key(bits), base + c);
                    tile[n & (TILE_ELEMS - 1)] = pack_word(tile_pos(r, c), bits);
                    n += usize::from(keep);
                }
            }
            nnz += n;
            words.extend_from_slice(&tile[..n]);
            if n > 0 {
                let padded = n.next_multiple_of(LIST_ALIGN_WORDS);
                words.resize(words.len() + padded - n, tile[n - 1]);
                n = padded;
            }
            // At most TILE_ELEMS (a full tile needs no padding), which fits in u32.
            lens.push(n as u32);
        }
        Encoded { words, lens, nnz }
    }
}

/// The [`Keep`] rule of [`SparseWeight::prune_magnitude`]: keep the
/// `round((1 - sparsity) * len)` largest magnitudes, ties in increasing index order.
///
/// The histogram and the scan for the last tied index run on up to `threads` threads over
/// contiguous chunks of `dense`; the rule does not depend on `threads`.
fn prune_rule<T: Element>(dense: &[T], sparsity: f64, threads: usize) -> Keep {
    let total = dense.len();
    let keep = (((1.0 - sparsity) * total as f64).round() as usize).min(total);
    if keep == 0 {
        return Keep::Nothing;
    }
    let chunks: Vec<&[T]> = split_evenly(total, threads)
        .into_iter()
        .map(|(a, b)| &dense[a..b])
        .collect();

    // Histogram of magnitude keys (per chunk, then summed), then walk down from the
    // largest key.
    let histogram = |chunk: &[T]| {
        let mut hist = vec![0usize; 1 << 15];
        for v in chunk {
            hist[magnitude_key(v.to_bits()) as usize] += 1;
        }
        hist
    };
    let hist = if chunks.len() == 1 {
        histogram(chunks[0])
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|&c| s.spawn(move || histogram(c)))
                .collect();
            let mut hist = vec![0usize; 1 << 15];
            for h in handles {
                for (a, b) in hist.iter_mut().zip(join(h)) {
                    *a += b;
                }
            }
            hist
        })
    };

    let mut above = 0usize;
    // Key 0 (±0) is never stored, so stop at 1: if the nonzeros do not reach `keep`, every
    // nonzero is kept.
    for key in (1..=0x7fffu16).rev() {
        let here = hist[key as usize];
        if above + here >= keep {
            let need = keep - above; // 1..=here
            let last_index = nth_with_key(dense, &chunks, key, need);
            return Keep::Above { key, last_index };
        }
        above += here;
    }
    Keep::AllNonzero
}

/// Index in `dense` of the `need`-th (1-based) entry whose magnitude key is `key`; `chunks`
/// are contiguous pieces of `dense`, in order. With several chunks, each chunk's count of
/// `key` is taken in parallel, and only the chunk holding the answer is scanned for it.
fn nth_with_key<T: Element>(dense: &[T], chunks: &[&[T]], key: u16, need: usize) -> usize {
    debug_assert!(need >= 1);
    let find = |chunk: &[T], need: usize| -> Option<usize> {
        let mut seen = 0usize;
        for (i, v) in chunk.iter().enumerate() {
            if magnitude_key(v.to_bits()) == key {
                seen += 1;
                if seen == need {
                    return Some(i);
                }
            }
        }
        None
    };
    if chunks.len() <= 1 {
        return find(dense, need).expect("the histogram counted `need` entries with this key");
    }
    let counts: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|&c| {
                s.spawn(move || {
                    c.iter()
                        .filter(|v| magnitude_key(v.to_bits()) == key)
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(join).collect()
    });
    let (mut before, mut offset) = (0usize, 0usize);
    for (chunk, count) in chunks.iter().zip(counts) {
        if before + count >= need {
            let i = find(chunk, need - before).expect("the chunk holds the entry");
            return offset + i;
        }
        before += count;
        offset += chunk.len();
    }
    unreachable!("the histogram counted `need` entries with this key")
}

impl<T: Element> SparseWeight<T> {
    /// Encodes a dense row-major `rows` × `cols` matrix, storing every entry that is not ±0.
    ///
    /// Matrices of 1M elements or more are encoded on several threads (up to
    /// [`std::thread::available_parallelism`], one per contiguous range of tiles); the result
    /// is the same for any thread count.
    ///
    /// Errors: [`Error::Shape`] if a dimension is zero, `dense.len() != rows * cols`, or the
    /// encoding would exceed `u32::MAX` words.
    pub fn from_dense(rows: usize, cols: usize, dense: &[T]) -> Result<Self> {
        tile_grid(rows, cols)?;
        check_dense_len(rows, cols, dense.len())?;
        let threads = worker_threads(dense.len(), MIN_ELEMS_PER_THREAD);
        Self::build(rows, cols, dense, Keep::AllNonzero, threads)
    }

    /// Magnitude pruning: keeps the `round((1 - sparsity) * rows * cols)` entries of largest
    /// `|w|` (one global threshold over the whole matrix) and encodes them.
    ///
    /// The count is exact: entries tied at the threshold magnitude are kept in increasing
    /// row-major index order until the count is reached. NaN weights rank above every other
    /// value (then infinities, then finite values by magnitude). Kept entries that are ±0
    /// (only possible when the matrix has fewer nonzeros than the count) are not stored,
    /// so [`nnz`](Self::nnz) is `min(count, nonzeros of dense)`.
    ///
    /// Multi-threaded like [`from_dense`](Self::from_dense) (the threshold search too); the
    /// result is the same for any thread count.
    ///
    /// Errors: [`Error::InvalidArgument`] if `sparsity` is not in `[0, 1]` (or is NaN);
    /// the shape errors of [`from_dense`](Self::from_dense).
    pub fn prune_magnitude(rows: usize, cols: usize, dense: &[T], sparsity: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&sparsity) {
            return Err(Error::InvalidArgument(format!(
                "sparsity must be in [0, 1], got {sparsity}"
            )));
        }
        tile_grid(rows, cols)?;
        check_dense_len(rows, cols, dense.len())?;
        let threads = worker_threads(dense.len(), MIN_ELEMS_PER_THREAD);
        let rule = prune_rule(dense, sparsity, threads);
        Self::build(rows, cols, dense, rule, threads)
    }

    /// Shared encoder: stores the nonzero entries selected by `rule`, tile by tile, each tile
    /// in row-major `(r, c)` order, padded to a multiple of [`LIST_ALIGN_WORDS`] words with its
    /// last word.
    ///
    /// The tiles are cut into at most `threads` contiguous ranges encoded in parallel (see
    /// [`Source::encode_tiles`]) and concatenated in tile order, so the result does not depend on
    /// `threads`.
    fn build(rows: usize, cols: usize, dense: &[T], rule: Keep, threads: usize) -> Result<Self> {
        let (_, tiles_k, tiles) = tile_grid(rows, cols)?;
        let src = Source {
            rows,
            cols,
            tiles_k,
            dense,
            rule,
        };
        let parts = split_evenly(tiles, threads);
        let encoded: Vec<Encoded> = if parts.len() == 1 {
            vec![src.encode_tiles(0, tiles)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = parts
                    .iter()
                    .map(|&(t0, t1)| s.spawn(move || src.encode_tiles(t0, t1)))
                    .collect();
                handles.into_iter().map(join).collect()
            })
        };

        let total: usize = encoded.iter().map(|e| e.words.len()).sum();
        if u32::try_from(total).is_err() {
            return Err(Error::Shape(format!(
                "sparse weight {rows}×{cols} needs more than u32::MAX words"
            )));
        }
        let nnz = encoded.iter().map(|e| e.nnz).sum();
        let mut tile_offsets = Vec::with_capacity(tiles + 1);
        tile_offsets.push(0u32);
        let mut end = 0u32;
        for e in &encoded {
            for &len in &e.lens {
                end += len; // the total fits in u32 (checked above)
                tile_offsets.push(end);
            }
        }
        debug_assert_eq!(tile_offsets.len(), tiles + 1);
        let words = concat_parallel(encoded.into_iter().map(|e| e.words).collect());
        Ok(Self {
            rows,
            cols,
            nnz,
            tile_offsets,
            words,
            reordered: false,
            _t: PhantomData,
        })
    }

    /// Builds a weight from raw Tiled-CSL arrays after validating all of them.
    ///
    /// Checks: `rows, cols >= 1` ([`Error::Shape`]); then, as [`Error::Format`]:
    /// `tile_offsets.len() == tiles_m * tiles_k + 1`, `tile_offsets[0] == 0`, non-decreasing,
    /// every offset a multiple of 4, last offset `== words.len()`; no tile has more than
    /// [`TILE_ELEMS`] = 16384 words; every word's position is below 16384 (inside a 256×64
    /// tile) and decodes to an entry inside the matrix (edge tiles are partial); inside a
    /// tile every position appears once, except exact duplicates of a word (padding), of
    /// which there are fewer than [`LIST_ALIGN_WORDS`] = 32 per tile (lists padded only to a
    /// multiple of 4 are valid too). Word order inside a tile is not checked (the
    /// kernel does not depend on it); `reordered` is recorded as given. Stored ±0 values are
    /// accepted and counted in [`nnz`](Self::nnz), which counts distinct positions.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        tile_offsets: Vec<u32>,
        words: Vec<u32>,
        reordered: bool,
    ) -> Result<Self> {
        let (tiles_m, tiles_k, tiles) = tile_grid(rows, cols)?;
        debug_assert_eq!(tiles, tiles_m * tiles_k);
        validate_offsets(tiles, &tile_offsets, words.len())?;
        let nnz = validate_tiles(rows, cols, tiles_k, &tile_offsets, &words)?;
        Ok(Self {
            rows,
            cols,
            nnz,
            tile_offsets,
            words,
            reordered,
            _t: PhantomData,
        })
    }

    /// Decodes to a dense row-major `rows` × `cols` matrix (pruned entries are +0).
    pub fn to_dense(&self) -> Vec<T> {
        let mut dense = vec![T::from_bits(0); self.rows * self.cols];
        for t in 0..self.num_tiles() {
            let (r0, c0) = self.tile_origin(t);
            for &w in self.tile_words(t) {
                let (r, c) = tile_coord(word_pos(w));
                dense[(r0 + r) * self.cols + c0 + c] = T::from_bits(word_bits(w));
            }
        }
        dense
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of distinct stored entries (padding words not counted).
    pub fn nnz(&self) -> usize {
        self.nnz
    }

    /// Tile rows: `ceil(rows / 256)`.
    pub fn tiles_m(&self) -> usize {
        self.rows.div_ceil(TILE_M)
    }

    /// Tile columns: `ceil(cols / 64)`.
    pub fn tiles_k(&self) -> usize {
        self.cols.div_ceil(TILE_K)
    }

    /// Number of tiles, `tiles_m * tiles_k`.
    pub fn num_tiles(&self) -> usize {
        self.tile_offsets.len() - 1
    }

    /// Word offsets of the tiles (`num_tiles() + 1` entries).
    pub fn tile_offsets(&self) -> &[u32] {
        &self.tile_offsets
    }

    /// All words, tile after tile.
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    /// The words of tile `t = tm * tiles_k + tk` (panics if `t >= num_tiles()`).
    pub fn tile_words(&self, t: usize) -> &[u32] {
        &self.words[self.tile_offsets[t] as usize..self.tile_offsets[t + 1] as usize]
    }

    /// Matrix coordinates `(row, col)` of the top-left element of tile `t`.
    pub fn tile_origin(&self, t: usize) -> (usize, usize) {
        let tiles_k = self.tiles_k();
        ((t / tiles_k) * TILE_M, (t % tiles_k) * TILE_K)
    }

    /// Whether [`reorder_for_banks`](Self::reorder_for_banks) was applied (or the flag was
    /// given to [`from_parts`](Self::from_parts) / read from a file).
    pub fn is_reordered(&self) -> bool {
        self.reordered
    }

    /// Element type of the weight.
    pub fn dtype(&self) -> Dtype {
        T::DTYPE
    }

    /// Bytes of the two device arrays: `4 * words.len() + 4 * tile_offsets.len()`.
    pub fn stored_bytes(&self) -> usize {
        4 * self.words.len() + 4 * self.tile_offsets.len()
    }

    /// Fraction of stored entries, `nnz / (rows * cols)`.
    pub fn density(&self) -> f64 {
        self.nnz as f64 / (self.rows as f64 * self.cols as f64)
    }
}

/// Validates the offsets array of a grid of `tiles` tiles holding `n_words` words.
pub(crate) fn validate_offsets(tiles: usize, offsets: &[u32], n_words: usize) -> Result<()> {
    if offsets.len() != tiles + 1 {
        return Err(Error::Format(format!(
            "tile_offsets has {} entries, expected {} (tiles + 1)",
            offsets.len(),
            tiles + 1
        )));
    }
    if offsets[0] != 0 {
        return Err(Error::Format(format!(
            "tile_offsets[0] is {}, expected 0",
            offsets[0]
        )));
    }
    for (t, pair) in offsets.windows(2).enumerate() {
        if pair[1] < pair[0] {
            return Err(Error::Format(format!(
                "tile_offsets decrease at tile {t}: {} then {}",
                pair[0], pair[1]
            )));
        }
    }
    if let Some((i, o)) = offsets
        .iter()
        .enumerate()
        .find(|(_, &o)| !(o as usize).is_multiple_of(WORDS_PER_LOAD))
    {
        return Err(Error::Format(format!(
            "tile_offsets[{i}] = {o} is not a multiple of 4"
        )));
    }
    let last = offsets[tiles] as usize;
    if last != n_words {
        return Err(Error::Format(format!(
            "last tile offset is {last} but there are {n_words} words"
        )));
    }
    Ok(())
}

/// Validates every tile's words (offsets already valid); returns the number of distinct
/// stored positions.
fn validate_tiles(
    rows: usize,
    cols: usize,
    tiles_k: usize,
    offsets: &[u32],
    words: &[u32],
) -> Result<usize> {
    // stamp[pos] == t + 1 marks a position already seen in tile t (no clearing per tile).
    let mut stamp = vec![0usize; TILE_ELEMS];
    let mut first_word = vec![0u32; TILE_ELEMS];
    let mut nnz = 0usize;
    for (t, range) in offsets.windows(2).enumerate() {
        let tile = &words[range[0] as usize..range[1] as usize];
        let (r0, c0) = ((t / tiles_k) * TILE_M, (t % tiles_k) * TILE_K);
        let (rn, cn) = (TILE_M.min(rows - r0), TILE_K.min(cols - c0));
        // A valid list is at most TILE_ELEMS words: a full tile needs no padding, and a
        // shorter one is padded to at most the next multiple of 32 ≤ TILE_ELEMS.
        if tile.len() > TILE_ELEMS {
            return Err(Error::Format(format!(
                "tile {t} has {} words; a {TILE_M}×{TILE_K} tile holds at most {TILE_ELEMS}",
                tile.len()
            )));
        }
        let mut distinct = 0usize;
        for (j, &w) in tile.iter().enumerate() {
            let pos = word_pos(w) as usize;
            if pos >= TILE_ELEMS {
                return Err(Error::Format(format!(
                    "tile {t}, word {j}: position {pos} is outside a {TILE_M}×{TILE_K} tile"
                )));
            }
            let (r, c) = tile_coord(pos as u16);
            if r >= rn || c >= cn {
                return Err(Error::Format(format!(
                    "tile {t}, word {j}: entry ({}, {}) is outside the {rows}×{cols} matrix",
                    r0 + r,
                    c0 + c
                )));
            }
            if stamp[pos] == t + 1 {
                if first_word[pos] != w {
                    return Err(Error::Format(format!(
                        "tile {t}: entry ({}, {}) is stored twice with different values",
                        r0 + r,
                        c0 + c
                    )));
                }
            } else {
                stamp[pos] = t + 1;
                first_word[pos] = w;
                distinct += 1;
            }
        }
        if tile.len() - distinct >= LIST_ALIGN_WORDS {
            return Err(Error::Format(format!(
                "tile {t}: {} duplicate (padding) words for {distinct} entries; padding must be \
                 fewer than {LIST_ALIGN_WORDS} words",
                tile.len() - distinct
            )));
        }
        nnz += distinct;
    }
    Ok(nnz)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::test_util::{pad_to_4, random_sparse, Rng};
    use half::{bf16, f16};
    use proptest::prelude::*;

    #[test]
    fn tile_pos_is_a_bijection_on_the_tile() {
        let mut seen = vec![false; TILE_ELEMS];
        for r in 0..TILE_M {
            for c in 0..TILE_K {
                let p = tile_pos(r, c);
                assert!((p as usize) < TILE_ELEMS);
                assert!(!seen[p as usize], "({r}, {c}) collides");
                seen[p as usize] = true;
                assert_eq!(tile_coord(p), (r, c));
                // In the 512-byte block of its 16×16 block, in the 8-row half of its row,
                // as the lane and register half that hold it in the mma B fragment of Wᵀ.
                let p = p as usize;
                let (block, rows8, lane, half) = (p / 256, (p / 128) % 2, (p / 4) % 32, p % 4);
                assert_eq!(block, (r / 16) * 4 + c / 16);
                assert_eq!(rows8, (r % 16) / 8);
                assert_eq!(layout::frag_b_coord(lane, half), (c % 16, r % 8));
            }
        }
        assert!(seen.iter().all(|&s| s));
        for p in 0..TILE_ELEMS as u16 {
            let (r, c) = tile_coord(p);
            assert_eq!(tile_pos(r, c), p);
        }
        // Spot values from the formula.
        assert_eq!(tile_pos(0, 0), 0);
        assert_eq!(tile_pos(0, 1), 1);
        assert_eq!(tile_pos(0, 2), 4);
        assert_eq!(tile_pos(1, 0), 16);
        assert_eq!(tile_pos(8, 0), 128);
        assert_eq!(tile_pos(0, 8), 2);
        assert_eq!(tile_pos(0, 16), 256);
        assert_eq!(tile_pos(16, 0), 1024);
        assert_eq!(tile_pos(255, 63), 16383);
        assert_eq!(tile_coord(16383), (255, 63));
        // 256 × 64 tile: positions 0..16384 use 14 of the 16 position bits.
        assert_eq!((TILE_M, TILE_K, TILE_ELEMS), (256, 64, 16384));
        const { assert!(TILE_ELEMS <= 1 << 14) };
    }

    #[test]
    fn agrees_with_the_device_layout() {
        // The kernels take their constants and tile layout from `crate::layout` (shared with
        // the device crate); the packer must produce exactly what they decode.
        use crate::layout;
        assert_eq!(TILE_M, layout::SPARSE_TILE_M);
        assert_eq!(TILE_K, layout::TILE_K);
        assert_eq!(TILE_ELEMS, layout::SPARSE_TILE_ELEMS);
        assert_eq!(CHUNK_WORDS, layout::CHUNK_WORDS);
        // A sparse tile is a whole number of the kernel's 64-row tiles.
        assert!(TILE_M.is_multiple_of(layout::TILE_M));
        assert_eq!(
            layout::THREADS % 32,
            0,
            "the reorder model assumes whole warps"
        );
        for r in 0..TILE_M {
            for c in 0..TILE_K {
                let p = tile_pos(r, c);
                assert_eq!(layout::frag_pos(r, c), p as usize);
                assert_eq!(layout::frag_pos_inverse(p as usize), (r, c));
            }
        }
    }

    #[test]
    fn words_pack_and_unpack() {
        let w = pack_word(16383, 0xbeef);
        assert_eq!(w, 0x3fff_beef);
        assert_eq!(word_pos(w), 16383);
        assert_eq!(word_bits(w), 0xbeef);
        let w = pack_word(tile_pos(255, 0), 0x3c00);
        assert_eq!(tile_coord(word_pos(w)), (255, 0));
    }

    /// Checks the layout invariants against the dense source, including padding.
    fn check_layout<T: Element>(w: &SparseWeight<T>, dense: &[T]) {
        let (rows, cols) = (w.rows(), w.cols());
        assert_eq!(w.tile_offsets().len(), w.tiles_m() * w.tiles_k() + 1);
        assert_eq!(w.tile_offsets()[0], 0);
        assert_eq!(*w.tile_offsets().last().unwrap() as usize, w.words().len());
        let mut nnz = 0;
        for t in 0..w.num_tiles() {
            let (r0, c0) = w.tile_origin(t);
            let words = w.tile_words(t);
            // Expected real words: nonzeros of the tile in row-major (r, c) order.
            let mut expect = Vec::new();
            for r in 0..TILE_M.min(rows - r0) {
                for c in 0..TILE_K.min(cols - c0) {
                    let bits = dense[(r0 + r) * cols + c0 + c].to_bits();
                    if !is_zero_bits(bits) {
                        expect.push(pack_word(tile_pos(r, c), bits));
                    }
                }
            }
            nnz += expect.len();
            assert_eq!(words.len(), expect.len().next_multiple_of(LIST_ALIGN_WORDS), "tile {t}");
            assert_eq!(&words[..expect.len()], &expect[..]);
            for &pad in &words[expect.len()..] {
                assert_eq!(
                    pad,
                    *expect.last().unwrap(),
                    "padding repeats the last word"
                );
            }
        }
        assert_eq!(w.nnz(), nnz);
        assert_eq!(
            w.stored_bytes(),
            4 * w.words().len() + 4 * w.tile_offsets().len()
        );
        assert!((w.density() - nnz as f64 / (rows * cols) as f64).abs() < 1e-15);
    }

    #[test]
    fn extreme_sparsities_and_edge_shapes() {
        let mut rng = Rng::new(1);
        // Full 256×64 tiles, partial edge tiles in either direction, and several tile rows.
        for &(rows, cols) in &[
            (1, 1),
            (1, 200),
            (300, 1),
            (64, 64),
            (256, 64),
            (257, 63),
            (300, 70),
            (512, 129),
        ] {
            for &s in &[0.0, 0.5, 1.0] {
                let dense = random_sparse::<f16>(&mut rng, rows, cols, s);
                let w = SparseWeight::from_dense(rows, cols, &dense).unwrap();
                check_layout(&w, &dense);
                assert_eq!(w.to_dense(), dense);
                if s == 0.0 {
                    assert_eq!(w.nnz(), rows * cols);
                }
                if s == 1.0 {
                    assert_eq!(w.nnz(), 0);
                    assert!(w.words().is_empty());
                    assert!(w.tile_offsets().iter().all(|&o| o == 0));
                }
            }
        }
    }

    #[test]
    fn padding_of_a_single_entry() {
        // 300×70: 2×2 tiles. 5 nonzeros in row 200 (inside tile 0, past the old 64-row tile)
        // → 32 words, the last 27 repeating entry 5; tiles 1..3 empty.
        let mut dense = vec![f16::ZERO; 300 * 70];
        for c in 0..5 {
            dense[200 * 70 + 10 + c] = f16::from_f32(c as f32 + 1.0);
        }
        let w = SparseWeight::from_dense(300, 70, &dense).unwrap();
        assert_eq!((w.tiles_m(), w.tiles_k()), (2, 2));
        assert_eq!(w.tile_offsets(), &[0, 32, 32, 32, 32]);
        let last = pack_word(tile_pos(200, 14), f16::from_f32(5.0).to_bits());
        assert_eq!(&w.words()[4..], &[last; 28]);
        assert_eq!(w.nnz(), 5);
        assert_eq!(w.to_dense(), dense);
    }

    #[test]
    fn fully_dense_tiles() {
        // One full 256×64 tile: 16384 words, no padding, every position exactly once.
        let mut rng = Rng::new(17);
        let dense = random_sparse::<bf16>(&mut rng, 256, 64, 0.0);
        let w = SparseWeight::from_dense(256, 64, &dense).unwrap();
        assert_eq!(w.tile_offsets(), &[0, 16384]);
        assert_eq!(w.nnz(), TILE_ELEMS);
        let mut pos: Vec<u16> = w.words().iter().map(|&x| word_pos(x)).collect();
        pos.sort_unstable();
        assert!(pos.iter().enumerate().all(|(i, &p)| p as usize == i));
        check_layout(&w, &dense);
        assert_eq!(w.to_dense(), dense);
        let back = SparseWeight::<bf16>::from_parts(
            256,
            64,
            w.tile_offsets().to_vec(),
            w.words().to_vec(),
            false,
        )
        .unwrap();
        assert_eq!(back, w);
        // A full tile plus one more 16-byte group is too long for any tile.
        let mut words = w.words().to_vec();
        words.extend_from_slice(&[words[0]; 4]);
        match SparseWeight::<bf16>::from_parts(256, 64, vec![0, 16388], words, false) {
            Err(Error::Format(m)) => assert!(m.contains("at most 16384"), "{m}"),
            other => panic!("expected a format error, got {other:?}"),
        }

        // Fully dense 300×70: full tile, 256×6, 44×64 and 44×6 edge tiles.
        let dense = random_sparse::<f16>(&mut rng, 300, 70, 0.0);
        let w = SparseWeight::from_dense(300, 70, &dense).unwrap();
        let sizes: [usize; 4] = [256 * 64, 256 * 6, 44 * 64, 44 * 6];
        let mut offsets = vec![0u32];
        for s in sizes {
            offsets.push(offsets.last().unwrap() + s.next_multiple_of(LIST_ALIGN_WORDS) as u32);
        }
        assert_eq!(w.tile_offsets(), &offsets[..]);
        assert_eq!(w.nnz(), 300 * 70);
        assert_eq!(w.to_dense(), dense);
    }

    #[test]
    fn split_evenly_covers_in_order() {
        assert_eq!(split_evenly(0, 4), [(0, 0)]);
        assert_eq!(split_evenly(5, 0), [(0, 5)]);
        assert_eq!(split_evenly(5, 1), [(0, 5)]);
        assert_eq!(split_evenly(3, 8), [(0, 1), (1, 2), (2, 3)]);
        assert_eq!(split_evenly(10, 4), [(0, 3), (3, 6), (6, 8), (8, 10)]);
        assert!(worker_threads(0, 1 << 19) == 1 && worker_threads((1 << 20) - 1, 1 << 19) == 1);
    }

    #[test]
    fn thread_count_does_not_change_the_encoding() {
        // 1100×700 at 70% sparsity: 5×11 tiles with partial edge tiles in both directions;
        // under 1M elements, so the public functions use one thread.
        let (rows, cols) = (1100, 700);
        let mut rng = Rng::new(0x7ead);
        let dense = random_sparse::<f16>(&mut rng, rows, cols, 0.7);
        let one = SparseWeight::build(rows, cols, &dense, Keep::AllNonzero, 1).unwrap();
        assert_eq!(one, SparseWeight::from_dense(rows, cols, &dense).unwrap());
        check_layout(&one, &dense);
        for threads in [2, 3, 4, 7, 16, 55, 1000] {
            let many = SparseWeight::build(rows, cols, &dense, Keep::AllNonzero, threads).unwrap();
            assert_eq!(many, one, "{threads} threads");
        }

        // Pruning, also with few distinct magnitudes (many ties at the threshold).
        let levels: Vec<bf16> = (0..rows * cols)
            .map(|_| bf16::from_f32(rng.below(20) as f32 - 10.0))
            .collect();
        for sparsity in [0.0, 0.3, 0.7, 0.95, 1.0] {
            let rule = prune_rule(&dense, sparsity, 1);
            let one = SparseWeight::build(rows, cols, &dense, rule, 1).unwrap();
            let public = SparseWeight::prune_magnitude(rows, cols, &dense, sparsity).unwrap();
            assert_eq!(one, public);
            let rule_l = prune_rule(&levels, sparsity, 1);
            let one_l = SparseWeight::build(rows, cols, &levels, rule_l, 1).unwrap();
            assert_eq!(
                one_l,
                SparseWeight::prune_magnitude(rows, cols, &levels, sparsity).unwrap()
            );
            for threads in [2, 3, 16] {
                assert_eq!(prune_rule(&dense, sparsity, threads), rule, "{threads}");
                let many = SparseWeight::build(rows, cols, &dense, rule, threads).unwrap();
                assert_eq!(many, one, "{sparsity} sparsity, {threads} threads");
                assert_eq!(prune_rule(&levels, sparsity, threads), rule_l, "{threads}");
                let many = SparseWeight::build(rows, cols, &levels, rule_l, threads).unwrap();
                assert_eq!(many, one_l, "{sparsity} sparsity, {threads} threads");
            }
        }
    }

    #[test]
    fn negative_zero_is_pruned() {
        let dense = [f16::NEG_ZERO, f16::ONE, f16::ZERO, f16::NEG_ONE];
        let w = SparseWeight::from_dense(2, 2, &dense).unwrap();
        assert_eq!(w.nnz(), 2);
        let back = w.to_dense();
        assert_eq!(back[0].to_bits(), 0, "pruned entries decode to +0");
        assert_eq!(back[3], f16::NEG_ONE);
    }

    #[test]
    fn from_dense_rejects_bad_shapes() {
        let d = vec![bf16::ONE; 6];
        assert!(matches!(
            SparseWeight::from_dense(0, 6, &d[..0]),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            SparseWeight::from_dense(6, 0, &d[..0]),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            SparseWeight::from_dense(2, 4, &d),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            SparseWeight::from_dense(usize::MAX, 2, &d),
            Err(Error::Shape(_))
        ));
        assert!(SparseWeight::from_dense(2, 3, &d).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn pack_unpack_round_trip(
            rows in 1usize..600, cols in 1usize..200,
            sparsity in prop_oneof![Just(0.0), Just(1.0), 0.0f64..=1.0], seed: u64,
        ) {
            let mut rng = Rng::new(seed);
            let d16 = random_sparse::<f16>(&mut rng, rows, cols, sparsity);
            let w = SparseWeight::from_dense(rows, cols, &d16).unwrap();
            check_layout(&w, &d16);
            prop_assert_eq!(w.to_dense(), d16);
            let back = SparseWeight::<f16>::from_parts(
                rows, cols, w.tile_offsets().to_vec(), w.words().to_vec(), false).unwrap();
            prop_assert_eq!(&back, &w);

            let db = random_sparse::<bf16>(&mut rng, rows, cols, sparsity);
            let w = SparseWeight::from_dense(rows, cols, &db).unwrap();
            check_layout(&w, &db);
            prop_assert_eq!(w.to_dense(), db);
        }

        #[test]
        fn prune_keeps_exact_count_of_largest(
            rows in 1usize..120, cols in 1usize..120, sparsity in 0.0f64..=1.0, seed: u64,
            levels in 1u32..50,
        ) {
            // Few distinct magnitudes → many ties at the threshold.
            let mut rng = Rng::new(seed);
            let dense: Vec<bf16> = (0..rows * cols)
                .map(|_| {
                    let l = rng.below(levels as usize) as f32;
                    let v = if rng.unit() < 0.5 { -l } else { l };
                    bf16::from_f32(v)
                })
                .collect();
            let nonzeros = dense.iter().filter(|v| !is_zero_bits(v.to_bits())).count();
            let keep = ((1.0 - sparsity) * (rows * cols) as f64).round() as usize;
            let w = SparseWeight::prune_magnitude(rows, cols, &dense, sparsity).unwrap();
            prop_assert_eq!(w.nnz(), keep.min(nonzeros));
            let pruned = w.to_dense();
            // Kept entries are unchanged; every kept magnitude >= every dropped nonzero one,
            // and among equal magnitudes the kept ones come first in index order.
            let mut min_kept: Option<(u16, usize)> = None;
            let mut max_dropped: Option<(u16, usize)> = None;
            for (i, (&p, &d)) in pruned.iter().zip(&dense).enumerate() {
                let key = magnitude_key(d.to_bits());
                if is_zero_bits(p.to_bits()) {
                    if key != 0 && max_dropped.is_none_or(|(k, _)| key >= k) {
                        max_dropped = Some((key, i)); // later index wins among equal keys
                    }
                } else {
                    prop_assert_eq!(p.to_bits(), d.to_bits());
                    if min_kept.is_none_or(|(k, _)| key < k) {
                        min_kept = Some((key, i));
                    }
                }
            }
            if let (Some((kk, _)), Some((dk, _))) = (min_kept, max_dropped) {
                prop_assert!(kk >= dk);
            }
            // Tie order: no dropped entry at the threshold key precedes a kept one with it.
            if let Some((t, _)) = min_kept {
                let last_kept = (0..dense.len()).rev().find(|&i| {
                    magnitude_key(dense[i].to_bits()) == t && !is_zero_bits(pruned[i].to_bits())
                }).unwrap();
                let first_dropped = (0..dense.len()).find(|&i| {
                    magnitude_key(dense[i].to_bits()) == t && is_zero_bits(pruned[i].to_bits())
                });
                if let Some(fd) = first_dropped {
                    prop_assert!(fd > last_kept);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn from_parts_never_panics_on_mutated_parts(
            rows in 1usize..400, cols in 1usize..140, sparsity in 0.5f64..=1.0, seed: u64,
            mutations in proptest::collection::vec((any::<usize>(), any::<u32>(), 0u8..4), 1..4),
        ) {
            // Start from valid parts and damage a few words or offsets: the result is either
            // an error or a weight whose decode and re-encode work; never a panic.
            let mut rng = Rng::new(seed);
            let dense = random_sparse::<f16>(&mut rng, rows, cols, sparsity);
            let w = SparseWeight::from_dense(rows, cols, &dense).unwrap();
            let (mut offsets, mut words) = (w.tile_offsets().to_vec(), w.words().to_vec());
            for (at, value, kind) in mutations {
                match kind {
                    0 if !words.is_empty() => { let i = at % words.len(); words[i] = value; }
                    1 if !words.is_empty() => {
                        let i = at % words.len();
                        // A position inside a 256×64 tile (maybe outside the matrix).
                        words[i] = (words[i] & 0xffff) | (value & 0x3fff_0000);
                    }
                    2 => { let i = at % offsets.len(); offsets[i] = value % 64; }
                    _ => { words.push(value & 0x3fff_ffff); }
                }
            }
            if let Ok(v) = SparseWeight::<f16>::from_parts(rows, cols, offsets, words, false) {
                let d = v.to_dense();
                prop_assert_eq!(d.len(), rows * cols);
                let again = SparseWeight::<f16>::from_dense(rows, cols, &d).unwrap();
                prop_assert!(again.nnz() <= v.nnz());
            }
        }
    }

    #[test]
    fn prune_ranks_nan_and_inf_first() {
        let dense = [
            f16::from_f32(0.5),
            f16::NAN,
            f16::from_f32(-3.0),
            f16::NEG_INFINITY,
            f16::from_f32(2.0),
            f16::ZERO,
        ];
        let keep = |s: f64| {
            let w = SparseWeight::prune_magnitude(2, 3, &dense, s).unwrap();
            w.to_dense()
                .iter()
                .map(|v| !is_zero_bits(v.to_bits()))
                .collect::<Vec<_>>()
        };
        // 6 entries: sparsity 5/6 keeps 1 → the NaN.
        assert_eq!(keep(5.0 / 6.0), [false, true, false, false, false, false]);
        assert_eq!(keep(4.0 / 6.0), [false, true, false, true, false, false]);
        assert_eq!(keep(3.0 / 6.0), [false, true, true, true, false, false]);
        assert_eq!(keep(0.0), [true, true, true, true, true, false]);
        assert_eq!(keep(1.0), [false; 6]);
        // Ties by index: 4 equal magnitudes, keep 2 → the first two.
        let ties = [bf16::ONE, bf16::NEG_ONE, bf16::ONE, bf16::NEG_ONE];
        let w = SparseWeight::prune_magnitude(1, 4, &ties, 0.5).unwrap();
        assert_eq!(
            w.to_dense(),
            [bf16::ONE, bf16::NEG_ONE, bf16::ZERO, bf16::ZERO]
        );
    }

    #[test]
    fn prune_rejects_bad_sparsity() {
        let d = vec![f16::ONE; 4];
        for s in [-0.01, 1.01, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                SparseWeight::prune_magnitude(2, 2, &d, s),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            SparseWeight::prune_magnitude(2, 3, &d, 0.5),
            Err(Error::Shape(_))
        ));
    }

    /// 300×70 weight (2×2 tiles of 256×64: tile 0 full, tile 1 256×6, tile 2 44×64,
    /// tile 3 44×6) with a few entries per tile.
    fn sample() -> (Vec<u32>, Vec<u32>) {
        let mut dense = vec![f16::ZERO; 300 * 70];
        for &(r, c) in &[
            (0, 0),
            (0, 1),
            (200, 63),
            (0, 64),
            (299, 0),
            (299, 69),
            (266, 68),
        ] {
            dense[r * 70 + c] = f16::from_f32((r + c) as f32 + 1.0);
        }
        let w = pad_to_4(&SparseWeight::from_dense(300, 70, &dense).unwrap());
        (w.tile_offsets().to_vec(), w.words().to_vec())
    }

    fn parts_err(offsets: Vec<u32>, words: Vec<u32>) -> String {
        match SparseWeight::<f16>::from_parts(300, 70, offsets, words, false) {
            Err(Error::Format(m)) => m,
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn from_parts_accepts_valid_and_counts_distinct() {
        // The packer aligns lists to 32 words; 4 is the minimum any file may use.
        let (o, w) = sample();
        assert_eq!(o, [0, 4, 8, 12, 16]);
        let packed = SparseWeight::<f16>::from_parts(300, 70, o.clone(), w.clone(), false).unwrap();
        assert_eq!(SparseWeight::from_dense(300, 70, &packed.to_dense()).unwrap().tile_offsets(), [0, 32, 64, 96, 128]);
        let sw = SparseWeight::<f16>::from_parts(300, 70, o.clone(), w.clone(), false).unwrap();
        assert_eq!(sw.nnz(), 7);
        // Any order inside a tile is accepted, and stored ±0 values count as entries.
        let mut w2 = w.clone();
        w2.swap(0, 2);
        for x in &mut w2[4..8] {
            *x = pack_word(word_pos(*x), 0x8000);
        }
        let sw = SparseWeight::<f16>::from_parts(300, 70, o.clone(), w2, true).unwrap();
        assert_eq!(sw.nnz(), 7);
        assert!(sw.is_reordered());
        // Positions at the far edges of each (partial) tile are inside the matrix: rows 64..256
        // of full-height tiles, the last valid row / column of edge tiles.
        for (at, r, c) in [
            (0usize, 64usize, 0usize),
            (0, 255, 63),
            (4, 255, 5),
            (8, 43, 63),
            (12, 43, 0),
            (12, 0, 5),
        ] {
            let mut ok = w.clone();
            ok[at] = pack_word(tile_pos(r, c), 0x3c00);
            let sw = SparseWeight::<f16>::from_parts(300, 70, o.clone(), ok, false)
                .unwrap_or_else(|e| panic!("({r}, {c}) in word {at}: {e}"));
            let (r0, c0) = sw.tile_origin(at / 4);
            assert_eq!(sw.to_dense()[(r0 + r) * 70 + c0 + c], f16::ONE);
        }
    }

    #[test]
    fn from_parts_rejects_each_corruption() {
        let (o, w) = sample();
        // Shape.
        assert!(matches!(
            SparseWeight::<f16>::from_parts(0, 300, o.clone(), w.clone(), false),
            Err(Error::Shape(_))
        ));
        // Offsets: length, first, decreasing, not multiple of 4, last != len.
        assert!(parts_err(o[..4].to_vec(), w.clone()).contains("entries"));
        assert!(parts_err(vec![4, 4, 8, 12, 16], w.clone()).contains("[0]"));
        assert!(parts_err(vec![0, 8, 4, 12, 16], w.clone()).contains("decrease"));
        assert!(parts_err(vec![0, 2, 8, 12, 16], w.clone()).contains("multiple of 4"));
        assert!(parts_err(vec![0, 4, 8, 12, 12], w.clone()).contains("last tile offset"));
        // Position >= 16384 (past the 256×64 tile; the old 64×64 limit 4096 is valid now).
        for pos in [16384u16, 16385, 0xffff] {
            let mut bad = w.clone();
            bad[0] = pack_word(pos, 0x3c00);
            let m = parts_err(o.clone(), bad);
            assert!(m.contains("outside a 256×64 tile"), "{m}");
        }
        // Entry outside the matrix in partial edge tiles: tile 1 (words 4..8) has 6 valid
        // columns, tile 2 (words 8..12) 44 valid rows, tile 3 (words 12..16) both.
        for (at, r, c) in [
            (4usize, 0usize, 6usize),
            (4, 255, 63),
            (8, 44, 0),
            (8, 255, 0),
            (12, 43, 6),
            (12, 44, 5),
            (12, 255, 63),
        ] {
            let mut bad = w.clone();
            bad[at] = pack_word(tile_pos(r, c), 0x3c00);
            let m = parts_err(o.clone(), bad);
            assert!(m.contains("outside the 300×70"), "({r}, {c}): {m}");
        }
        // Same position twice with different values.
        let mut bad = w.clone();
        bad[1] = pack_word(word_pos(bad[0]), word_bits(bad[0]) ^ 1);
        assert!(parts_err(o.clone(), bad).contains("twice"));
        // 32 more padding copies (a whole extra cache line).
        let mut bad = w.clone();
        let last = bad[3];
        bad.splice(4..4, [last; 32]);
        assert!(parts_err(vec![0, 36, 40, 44, 48], bad).contains("padding"));
    }
}
