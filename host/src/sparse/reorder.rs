//! Bank-aware reordering of a tile's words (Flash-LLM v2 style), done once on the host.
//!
//! # How the kernel stores words
//!
//! A tile's word list is consumed in chunks of at most the kernel's ring size (multiples of 128
//! words; [`CHUNK_WORDS`] is the fallback ring) by the `T` threads of an SpMM block (`T` is a
//! multiple of 32: 128 or 256). Thread `t`
//! loads the 16-byte groups `g = t + T*i` (`i = 0, 1, …`) of the chunk — words `4g .. 4g+4` —
//! and then issues four shared-memory stores, sub-step `s` storing word `4g + s`. One store instruction of warp `w` at step `(i, s)` therefore writes the words
//! `{ 4*(T*i + 32w + lane) + s : lane = 0..32 }`: inside the aligned [`BLOCK_WORDS`]-word
//! block starting at word `4*(T*i + 32w)` of the list (chunks are multiples of 128 words, so
//! blocks never straddle chunks), the 32 words whose index is `s` mod 4. Lanes whose group lies
//! past the end of the list store nothing, so a partial last block of `L` words gives four
//! stores of `L/4` words. The blocks, and so this model, do not depend on `T` or on the tile
//! height.
//!
//! A 16-bit element at tile position `pos` (`0..16384` in the 256×64 tile,
//! [`tile_pos`](super::tile_pos)) lives in 32-bit shared-memory word `pos / 2`, bank `(pos / 2) % 32`. Words sharing
//! a 32-bit word do not conflict; the conflict degree of a store is the largest number of
//! *distinct* `pos / 2` values mapped to one bank, and the store costs `degree - 1` extra
//! wavefronts.
//!
//! # Reordering
//!
//! Any order of a tile's list decodes to the same tile, so words may move anywhere inside
//! their tile (never across tiles: list lengths and offsets stay as they are). Two
//! arrangements are built per tile and the cheaper one kept:
//! - *block by block* (`arrange_block`): a block's words grouped by 32-bit shared-memory
//!   word and dealt into its four store sets greedily: groups of the most contended banks
//!   first, each into a set with room where it does not raise that set's conflict degree if
//!   possible, else into the set holding the fewest groups of its bank; a block keeps the
//!   result only where it lowers the block's cost;
//! - *tile-wide* (`arrange_tile`): the same groups dealt round-robin over all the tile's
//!   store sets, at most one group of a bank per set where possible, then improved block by
//!   block as above. A block holds whatever banks its 128 words happen to have; across the
//!   whole tile every bank can be spread evenly. On random 256×64 tiles this cuts the
//!   modelled wavefronts per store from 1.71 to 1.25 at 80% sparsity and from 1.91 to 1.35
//!   at 90% (row order: 3.3 and 3.45; see the tests).
//!
//! The tile-wide candidate depends only on the tile's multiset, the block-by-block one never
//! raises a block's cost, and ties keep the block-by-block one, so reordering is idempotent
//! and the total [`SparseWeight::bank_conflict_wavefronts`] never increases.

use super::format::{word_pos, worker_threads, SparseWeight, CHUNK_WORDS, WORDS_PER_LOAD};
use crate::element::Element;

/// Words moved by one warp-wide 16-byte load: 32 lanes × 4 words.
pub const BLOCK_WORDS: usize = 128;
/// Shared-memory banks (4 bytes wide).
pub const SMEM_BANKS: usize = 32;

// A block is a whole number of warp loads inside a chunk.
const _: () = assert!(CHUNK_WORDS.is_multiple_of(BLOCK_WORDS));

/// Shared-memory bank of a word.
const fn bank(word: u32) -> usize {
    (word_pos(word) as usize / 2) % SMEM_BANKS
}

/// The 32-bit shared-memory word (`pos / 2`) a word is stored into.
const fn smem_word(word: u32) -> u16 {
    word_pos(word) / 2
}

/// Bits of a [`Seen`] set: one per 32-bit shared-memory word a word can address
/// (`pos / 2 < 2^15` for any 16-bit position, valid or not).
const SEEN_WORDS: usize = (1 << 15) / 64;

/// Scratch set of 32-bit shared-memory words (one bit each), empty between uses.
type Seen = [u64; SEEN_WORDS];

/// Distinct 32-bit shared-memory words of `words` in each bank. `seen` must be empty, and
/// is left empty.
fn distinct_per_bank(seen: &mut Seen, words: impl Iterator<Item = u32> + Clone) -> [u32; SMEM_BANKS] {
    let mut per_bank = [0u32; SMEM_BANKS];
    for w in words.clone() {
        let k = smem_word(w) as usize;
        let (i, bit) = (k / 64, 1u64 << (k % 64));
        if seen[i] & bit == 0 {
            seen[i] |= bit;
            per_bank[k % SMEM_BANKS] += 1;
        }
    }
    for w in words {
        seen[smem_word(w) as usize / 64] = 0;
    }
    per_bank
}

/// Conflict degree of one store instruction writing `set` (at most 32 words): the largest
/// number of distinct 32-bit shared-memory words falling into one bank. 0 for an empty set.
/// `seen` must be empty, and is left empty.
/// The hot loop of [`block_cost`]: it keeps the maximum while counting instead of going
/// through [`distinct_per_bank`]'s array.
fn conflict_degree(seen: &mut Seen, set: impl Iterator<Item = u32> + Clone) -> u32 {
    let mut per_bank = [0u32; SMEM_BANKS];
    let mut degree = 0;
    for w in set.clone() {
        let k = smem_word(w) as usize;
        let (i, bit) = (k / 64, 1u64 << (k % 64));
        if seen[i] & bit == 0 {
            seen[i] |= bit;
            let b = k % SMEM_BANKS;
            per_bank[b] += 1;
            degree = degree.max(per_bank[b]);
        }
    }
    for w in set {
        seen[smem_word(w) as usize / 64] = 0;
    }
    degree
}

/// Extra wavefronts of the four stores of one aligned block (length a multiple of 4).
/// `seen` must be empty, and is left empty.
fn block_cost(seen: &mut Seen, block: &[u32]) -> u64 {
    (0..WORDS_PER_LOAD)
        .map(|s| {
            let set = block.iter().skip(s).step_by(WORDS_PER_LOAD).copied();
            u64::from(conflict_degree(seen, set).saturating_sub(1))
        })
        .sum()
}

/// Greedy low-conflict arrangement of a block's words (see the module docs), written to
/// `out` (same length as `block`, a multiple of 4, at most [`BLOCK_WORDS`]). Depends only on
/// the multiset of `block`; `out` gets the same multiset. Works on the stack (no allocation).
fn arrange_block(block: &[u32], out: &mut [u32]) {
    let len = block.len();
    assert!(len <= BLOCK_WORDS && out.len() == len);
    let cap = len / WORDS_PER_LOAD; // words per store set
    let mut sorted = [0u32; BLOCK_WORDS];
    let sorted = &mut sorted[..len];
    sorted.copy_from_slice(block);
    sorted.sort_unstable();

    // Groups of words sharing one 32-bit shared-memory word: (start, len) into `sorted`, in
    // increasing position order.
    let mut groups = [(0usize, 0usize); BLOCK_WORDS];
    let mut n_groups = 0;
    for (i, &w) in sorted.iter().enumerate() {
        if n_groups > 0 && smem_word(sorted[groups[n_groups - 1].0]) == smem_word(w) {
            groups[n_groups - 1].1 += 1;
        } else {
            groups[n_groups] = (i, 1);
            n_groups += 1;
        }
    }
    let groups = &groups[..n_groups];
    // Most contended banks first (ties: lower bank first); inside a bank, by position. That
    // is a stable sort of `groups` by `(Reverse(groups of the bank), bank)`, done here as a
    // counting sort: banks in that order, each bank's groups in their order.
    let mut groups_per_bank = [0usize; SMEM_BANKS];
    for &(s, _) in groups {
        groups_per_bank[bank(sorted[s])] += 1;
    }
    let mut bank_order: [usize; SMEM_BANKS] = std::array::from_fn(|b| b);
    bank_order.sort_unstable_by_key(|&b| (std::cmp::Reverse(groups_per_bank[b]), b));
    let mut next = [0usize; SMEM_BANKS]; // next slot of each bank's groups in `order`
    let mut at = 0;
    for &b in &bank_order {
        next[b] = at;
        at += groups_per_bank[b];
    }
    let mut order = [(0usize, 0usize); BLOCK_WORDS];
    for &g in groups {
        let b = bank(sorted[g.0]);
        order[next[b]] = g;
        next[b] += 1;
    }

    let mut sets = [[0u32; BLOCK_WORDS / WORDS_PER_LOAD]; WORDS_PER_LOAD];
    let mut size = [0usize; WORDS_PER_LOAD]; // words in each set
    let mut load = [[0u32; SMEM_BANKS]; WORDS_PER_LOAD];
    let mut degree = [0u32; WORDS_PER_LOAD];
    for &(start, n) in &order[..n_groups] {
        let b = bank(sorted[start]);
        let words = &sorted[start..start + n];
        // Whole group into a set with room: preferably one whose conflict degree it does not
        // raise, then the fewest groups of this bank, then the most room, then lowest index.
        let best = (0..WORDS_PER_LOAD)
            .filter(|&s| cap - size[s] >= n)
            .min_by_key(|&s| {
                let grows = load[s][b] + 1 > degree[s];
                (grows, load[s][b], std::cmp::Reverse(cap - size[s]), s)
            });
        if let Some(s) = best {
            sets[s][size[s]..size[s] + n].copy_from_slice(words);
            size[s] += n;
            load[s][b] += 1;
            degree[s] = degree[s].max(load[s][b]);
            continue;
        }
        // No set has room for the whole group: split it, word by word, preferring sets that
        // already hold part of it (free), then the least loaded with room.
        let mut used = [false; WORDS_PER_LOAD];
        for &w in words {
            let s = (0..WORDS_PER_LOAD)
                .filter(|&s| size[s] < cap)
                .min_by_key(|&s| (!used[s], load[s][b], std::cmp::Reverse(cap - size[s]), s))
                .expect("total capacity equals the block length");
            if !used[s] {
                used[s] = true;
                load[s][b] += 1;
                degree[s] = degree[s].max(load[s][b]);
            }
            sets[s][size[s]] = w;
            size[s] += 1;
        }
    }

    // Set s goes to the block indices that are s mod 4 (every set is full: 4 × cap = len).
    for (s, set) in sets.iter().enumerate() {
        debug_assert_eq!(size[s], cap);
        for (j, &w) in set[..cap].iter().enumerate() {
            out[WORDS_PER_LOAD * j + s] = w;
        }
    }
}

/// Greedy low-conflict arrangement of a whole tile's list, written to `out` (same length, a
/// multiple of 4): unlike [`arrange_block`], words may move between blocks, since any order
/// of a tile's list decodes to the same tile. The store sets are the four residue classes
/// of every aligned block (`4 · ceil(len / 128)` sets, a partial last block giving smaller
/// ones). The groups of words sharing a 32-bit shared-memory word, most contended banks
/// first, are dealt round-robin over the sets, each into the next set with room where it
/// costs nothing (no group of its bank yet, or fewer than the conflicts the set already
/// pays for); failing that, into the set whose conflict degree it raises least. Depends only
/// on the multiset of `tile`. `seen` must be empty, and is left empty.
fn arrange_tile(seen: &mut Seen, tile: &[u32], out: &mut [u32]) {
    let len = tile.len();
    assert!(len.is_multiple_of(WORDS_PER_LOAD) && out.len() == len);
    let n_sets = WORDS_PER_LOAD * len.div_ceil(BLOCK_WORDS);
    // Set k: block k / 4, residue k % 4; its i-th word goes to `slot(k, i)`.
    let caps: Vec<usize> =
        (0..n_sets).map(|k| (len - (k / WORDS_PER_LOAD) * BLOCK_WORDS).min(BLOCK_WORDS) / WORDS_PER_LOAD).collect();
    let slot = |k: usize, i: usize| (k / WORDS_PER_LOAD) * BLOCK_WORDS + WORDS_PER_LOAD * i + k % WORDS_PER_LOAD;
    // Groups of words sharing a 32-bit shared-memory word, of the most contended banks first:
    // sorted by (fewest groups last, bank, word), one u64 key each (a word's high half is its
    // position, so ordering by the word orders by shared-memory word too).
    let groups_per_bank = distinct_per_bank(seen, tile.iter().copied());
    let mut keys: Vec<u64> = tile
        .iter()
        .map(|&w| {
            let b = bank(w);
            (u64::from(u16::MAX - groups_per_bank[b] as u16) << 37) | ((b as u64) << 32) | u64::from(w)
        })
        .collect();
    keys.sort_unstable();
    let sorted: Vec<u32> = keys.iter().map(|&key| key as u32).collect();
    let mut size = vec![0usize; n_sets];
    let mut load = vec![[0u16; SMEM_BANKS]; n_sets];
    let mut degree = vec![0u16; n_sets];
    let mut next = 0usize; // round-robin position
    let mut start = 0;
    while start < len {
        let mut end = start + 1;
        while end < len && smem_word(sorted[end]) == smem_word(sorted[start]) {
            end += 1;
        }
        let group = &sorted[start..end];
        start = end;
        let (b, n) = (bank(group[0]), group.len());
        // Round-robin: the next set with room where the group costs nothing (no group of
        // its bank yet, or fewer than the set's degree already paid for) ...
        let free = (0..n_sets)
            .map(|d| (next + d) % n_sets)
            .find(|&k| caps[k] - size[k] >= n && load[k][b] < degree[k].max(1));
        // ... else where it raises the degree least (a doubled set then takes a second group
        // of a later bank for free).
        let k = free.or_else(|| {
            (0..n_sets)
                .filter(|&k| caps[k] - size[k] >= n)
                .min_by_key(|&k| (load[k][b] + 1 > degree[k], load[k][b], std::cmp::Reverse(caps[k] - size[k]), k))
        });
        // Places `words` (of bank `b`) in set `k`.
        let mut put = |k: usize, words: &[u32], size: &mut [usize]| {
            for &w in words {
                out[slot(k, size[k])] = w;
                size[k] += 1;
            }
            load[k][b] += 1;
            degree[k] = degree[k].max(load[k][b]);
            next = (k + 1) % n_sets;
        };
        match k {
            Some(k) => put(k, group, &mut size),
            // No set has room for the whole group: word by word, where there is room.
            None => {
                for w in group {
                    let k = (0..n_sets).find(|&k| size[k] < caps[k]).expect("total capacity equals the tile length");
                    put(k, std::slice::from_ref(w), &mut size);
                }
            }
        }
    }
    debug_assert_eq!(size, caps);
}

/// Below this many words per thread, [`SparseWeight::reorder_for_banks`] does not start
/// another thread (about 100–300 ns of work per word).
const MIN_WORDS_PER_THREAD: usize = 1 << 15;

/// Improves every block of `tile` in place where [`arrange_block`] lowers its cost.
fn improve_blocks(seen: &mut Seen, tile: &mut [u32]) {
    let mut candidate = [0u32; BLOCK_WORDS];
    for block in tile.chunks_mut(BLOCK_WORDS) {
        // A conflict-free block cannot improve: skip the arrangement.
        let cost = block_cost(seen, block);
        if cost == 0 {
            continue;
        }
        let candidate = &mut candidate[..block.len()];
        arrange_block(block, candidate);
        if block_cost(seen, candidate) < cost {
            block.copy_from_slice(candidate);
        }
    }
}

/// Extra wavefronts of all the stores of a tile's list.
fn tile_cost(seen: &mut Seen, tile: &[u32]) -> u64 {
    tile.chunks(BLOCK_WORDS).map(|block| block_cost(seen, block)).sum()
}

/// Reorders the tiles whose offsets are `offsets` (`tiles + 1` entries, absolute), stored in
/// `words`, which starts at word `offsets[0]` of the weight: each tile gets the cheaper of
/// its own blocks improved ([`improve_blocks`]) and [`arrange_tile`] followed by the same,
/// the first on a tie (so a second pass changes nothing).
fn reorder_tiles(words: &mut [u32], offsets: &[u32]) {
    let base = offsets[0] as usize;
    let mut seen: Seen = [0; SEEN_WORDS];
    let mut whole = Vec::new();
    for pair in offsets.windows(2) {
        let tile = &mut words[pair[0] as usize - base..pair[1] as usize - base];
        if tile_cost(&mut seen, tile) == 0 {
            continue;
        }
        improve_blocks(&mut seen, tile);
        let blocks = tile_cost(&mut seen, tile);
        if blocks == 0 {
            continue; // conflict-free already (dense tiles): nothing to gain tile-wide
        }
        whole.resize(tile.len(), 0);
        arrange_tile(&mut seen, tile, &mut whole);
        improve_blocks(&mut seen, &mut whole);
        if tile_cost(&mut seen, &whole) < blocks {
            tile.copy_from_slice(&whole);
        }
    }
}

/// Cuts the tiles of `offsets` (`tiles + 1` tile offsets) into at most `parts` contiguous
/// ranges `(t0, t1)` of about equal word counts, in order, covering all tiles; empty ranges
/// are dropped (a weight without tiles or words gives at most one range).
fn tile_ranges_by_words(offsets: &[u32], parts: usize) -> Vec<(usize, usize)> {
    let tiles = offsets.len() - 1;
    let total = offsets[tiles] as u64;
    let parts = parts.max(1) as u64;
    let mut out = Vec::new();
    let mut t0 = 0usize;
    for i in 1..parts {
        // First tile starting at or after the i-th target word.
        let target = total * i / parts;
        let t1 = offsets
            .partition_point(|&o| u64::from(o) < target)
            .min(tiles);
        if t1 > t0 && offsets[t1] > offsets[t0] {
            out.push((t0, t1));
            t0 = t1;
        }
    }
    // The rest; trailing tiles without words join the previous range.
    match out.last_mut() {
        Some(last) if offsets[t0] == offsets[tiles] => last.1 = tiles,
        _ => out.push((t0, tiles)),
    }
    out
}

impl<T: Element> SparseWeight<T> {
    /// Permutes the words inside every tile so that the kernel's shared-memory stores have
    /// fewer bank conflicts (see the [module docs](self)).
    ///
    /// The decoded matrix, each tile's word multiset and the list lengths are unchanged;
    /// [`bank_conflict_wavefronts`](Self::bank_conflict_wavefronts) never increases.
    /// Idempotent. Sets [`is_reordered`](Self::is_reordered).
    ///
    /// Weights of 64K words or more are reordered on several threads (up to
    /// [`std::thread::available_parallelism`], one per contiguous range of tiles); the result
    /// is the same for any thread count.
    pub fn reorder_for_banks(&mut self) {
        let threads = worker_threads(self.words.len(), MIN_WORDS_PER_THREAD);
        self.reorder_with_threads(threads);
    }

    /// [`reorder_for_banks`](Self::reorder_for_banks) on at most `threads` threads: the tiles
    /// are cut into contiguous ranges of about equal word counts, and each range's words (a
    /// disjoint piece of `words`, since words never leave their tile) are reordered by their own
    /// thread. Every tile is rearranged independently, so the result does not depend on
    /// `threads`.
    pub(super) fn reorder_with_threads(&mut self, threads: usize) {
        let offsets = &self.tile_offsets[..];
        let bounds = tile_ranges_by_words(offsets, threads);
        if bounds.len() <= 1 {
            reorder_tiles(&mut self.words, offsets);
        } else {
            std::thread::scope(|s| {
                let mut rest: &mut [u32] = &mut self.words;
                let mut done = 0usize; // words before `rest`
                for &(t0, t1) in &bounds {
                    let end = offsets[t1] as usize;
                    let (part, tail) = std::mem::take(&mut rest).split_at_mut(end - done);
                    rest = tail;
                    done = end;
                    let part_offsets = &offsets[t0..=t1];
                    s.spawn(move || reorder_tiles(part, part_offsets));
                }
            });
        }
        self.reordered = true;
    }

    /// Total extra shared-memory wavefronts of the kernel's word stores over the whole
    /// weight: the sum over all store instructions of `conflict degree - 1`.
    pub fn bank_conflict_wavefronts(&self) -> u64 {
        let mut seen: Seen = [0; SEEN_WORDS];
        (0..self.num_tiles())
            .flat_map(|t| self.tile_words(t).chunks(BLOCK_WORDS))
            .map(|block| block_cost(&mut seen, block))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::format::{pack_word, TILE_ELEMS};
    use crate::sparse::test_util::{pad_to_4, random_sparse, Rng};
    use half::{bf16, f16};
    use proptest::prelude::*;

    #[test]
    fn degree_counts_distinct_smem_words() {
        // Same 32-bit word (pos 0 and 1) and an exact duplicate: no conflict.
        let set = [pack_word(0, 1), pack_word(1, 1), pack_word(0, 1)];
        let seen = &mut [0; SEEN_WORDS];
        assert_eq!(conflict_degree(seen, set.into_iter()), 1);
        // pos 0 and pos 64 are both bank 0, different 32-bit words: degree 2.
        let set = [pack_word(0, 1), pack_word(64, 1), pack_word(2, 1)];
        assert_eq!(conflict_degree(seen, set.into_iter()), 2);
        assert_eq!(conflict_degree(seen, std::iter::empty()), 0);
        // Positions past the tile (from unvalidated words) are counted too.
        let set = [
            pack_word(0xffff, 1),
            pack_word(0xffbf, 1),
            pack_word(0xfffe, 1),
        ];
        assert_eq!(conflict_degree(seen, set.into_iter()), 2);
        assert!(seen.iter().all(|&x| x == 0), "left empty");
    }

    #[test]
    fn hand_made_block_reaches_optimum() {
        // Columns 0 and 1 of the rows r with r % 16 in {0, 4} (8 per 64 rows): both halves
        // of one 32-bit word (tile_pos(r, 0) is even), and every such word is in bank 0
        // (pos/2 = 512·(r/16) + 64·((r%16)/8) + 8·(r%8) ≡ 0 mod 32). In 64 rows: 16 words → four
        // stores of 4. Row-major order puts (r,0) and (r,1) in different stores: each store
        // sees 4 distinct words in bank 0 → 4 × 3 = 12 extra wavefronts. Keeping pairs
        // together gives 2 distinct per store → 4 × 1 = 4, the optimum (8 distinct words, 4
        // stores). Over a whole 256-row tile (32 such rows): 64 words in one block, 16
        // distinct per store in row-major order → 4 × 15 = 60; pairs together: 8 per store →
        // 4 × 7 = 28, the optimum (32 distinct words in bank 0, 4 stores).
        for (rows, before, after) in [(64, 12, 4), (256, 60, 28)] {
            let cols = 64;
            let mut dense = vec![f16::ZERO; rows * cols];
            for r in (0..rows).filter(|r| r % 16 == 0 || r % 16 == 4) {
                dense[r * cols] = f16::ONE;
                dense[r * cols + 1] = f16::from_f32(2.0);
            }
            let mut w = pad_to_4(&SparseWeight::from_dense(rows, cols, &dense).unwrap());
            assert_eq!(w.words().len(), rows / 4);
            assert!(w.words().iter().all(|&x| bank(x) == 0));
            assert_eq!(w.bank_conflict_wavefronts(), before);
            w.reorder_for_banks();
            assert_eq!(w.bank_conflict_wavefronts(), after);
            assert_eq!(w.bank_conflict_wavefronts(), lower_bound(&w));
            assert_eq!(w.to_dense(), dense);
        }
    }

    /// Extra wavefronts after improving every block in place (the block-by-block candidate
    /// alone).
    fn block_by_block<T: Element>(w: &SparseWeight<T>) -> u64 {
        let mut words = w.words().to_vec();
        let seen = &mut [0; SEEN_WORDS];
        for pair in w.tile_offsets().windows(2) {
            improve_blocks(seen, &mut words[pair[0] as usize..pair[1] as usize]);
        }
        w.tile_offsets().windows(2).map(|p| tile_cost(seen, &words[p[0] as usize..p[1] as usize])).sum()
    }

    #[test]
    fn reorder_reduces_wavefronts_on_random_sparse_tiles() {
        // Per sparsity: (modelled wavefronts per store in row order, block by block, as
        // reordered), over 1024×1024 (16×16 full tiles).
        for sparsity in [0.7, 0.8, 0.9] {
            let mut rng = Rng::new(42);
            let dense = random_sparse::<f16>(&mut rng, 1024, 1024, sparsity);
            let mut w = SparseWeight::from_dense(1024, 1024, &dense).unwrap();
            let stores = w.words().len() as f64 / (BLOCK_WORDS / WORDS_PER_LOAD) as f64; // 4 per block
            let per_store = |extra: u64| 1.0 + extra as f64 / stores;
            let before = w.bank_conflict_wavefronts();
            let blocks = block_by_block(&w);
            w.reorder_for_banks();
            let after = w.bank_conflict_wavefronts();
            assert!(w.is_reordered());
            assert_eq!(w.to_dense(), dense);
            assert!(after >= tile_lower_bound(&w));
            // Idempotent.
            let once = w.clone();
            w.reorder_for_banks();
            assert_eq!(w, once);
            // Printed for the record (visible with --nocapture).
            println!(
                "{sparsity}: wavefronts per store: row order {:.2}, block by block {:.2}, reordered {:.2}",
                per_store(before),
                per_store(blocks),
                per_store(after)
            );
            // The tile-wide arrangement at least halves what block by block leaves.
            assert!(after * 2 <= blocks, "{sparsity}: {before} → {blocks} → {after}");
        }
    }

    #[test]
    fn thread_count_does_not_change_the_reorder() {
        // 1100×700 at 70% sparsity: 5×11 tiles, partial edge tiles in both directions.
        let mut rng = Rng::new(0x7eed);
        let dense = random_sparse::<f16>(&mut rng, 1100, 700, 0.7);
        let w = SparseWeight::from_dense(1100, 700, &dense).unwrap();
        let mut one = w.clone();
        one.reorder_with_threads(1);
        assert_ne!(one.words(), w.words());
        assert!(one.is_reordered());
        for threads in [2, 3, 4, 7, 16, 55, 1000] {
            let mut many = w.clone();
            many.reorder_with_threads(threads);
            assert_eq!(many, one, "{threads} threads");
        }
        let mut public = w.clone();
        public.reorder_for_banks();
        assert_eq!(public, one);
        // Every tile is either arranged block by block (the former implementation) or
        // tile-wide: for this weight, some of each.
        let mut blocks_only = w.clone();
        for t in 0..w.num_tiles() {
            let (a, b) = (w.tile_offsets()[t] as usize, w.tile_offsets()[t + 1] as usize);
            for block in blocks_only.words[a..b].chunks_mut(BLOCK_WORDS) {
                let candidate = arrange_block_reference(block);
                if block_cost_reference(&candidate) < block_cost_reference(block) {
                    block.copy_from_slice(&candidate);
                }
            }
        }
        let same = (0..w.num_tiles()).filter(|&t| one.tile_words(t) == blocks_only.tile_words(t)).count();
        assert!(same < w.num_tiles(), "no tile arranged tile-wide");
        assert_eq!(one.to_dense(), dense);
    }

    #[test]
    fn tile_ranges_cover_all_tiles_in_order() {
        let cases: [&[u32]; 6] = [
            &[0, 0],
            &[0, 0, 0, 0],
            &[0, 128],
            &[0, 0, 8, 8, 16, 400, 400, 1000, 1000, 1000],
            &[0, 4, 8, 12, 16, 20, 24, 28],
            &[0, 0, 0, 4000, 4000],
        ];
        for offsets in cases {
            let tiles = offsets.len() - 1;
            for parts in [0, 1, 2, 3, 5, 16, 100] {
                let r = tile_ranges_by_words(offsets, parts);
                assert!(
                    !r.is_empty() && r.len() <= parts.max(1),
                    "{offsets:?} {parts}: {r:?}"
                );
                assert_eq!(r[0].0, 0);
                assert_eq!(r.last().unwrap().1, tiles);
                assert!(r.windows(2).all(|p| p[0].1 == p[1].0));
                assert!(r.iter().all(|&(a, b)| a < b || tiles == 0));
                if r.len() > 1 {
                    // Every range has words.
                    assert!(r.iter().all(|&(a, b)| offsets[b] > offsets[a]), "{r:?}");
                }
            }
        }
        // Even word counts give even ranges.
        let offsets: Vec<u32> = (0..=64).map(|t| 128 * t).collect();
        assert_eq!(
            tile_ranges_by_words(&offsets, 4),
            [(0, 16), (16, 32), (32, 48), (48, 64)]
        );
    }

    /// The sort-based `block_cost` this module had before it used a bit set.
    fn block_cost_reference(block: &[u32]) -> u64 {
        (0..WORDS_PER_LOAD)
            .map(|s| {
                let mut keys: Vec<u16> = block
                    .iter()
                    .skip(s)
                    .step_by(WORDS_PER_LOAD)
                    .map(|&w| smem_word(w))
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                let mut per_bank = [0u32; SMEM_BANKS];
                for k in keys {
                    per_bank[k as usize % SMEM_BANKS] += 1;
                }
                u64::from(per_bank.iter().max().unwrap().saturating_sub(1))
            })
            .sum()
    }

    /// The allocating, sort-based `arrange_block` this module had before it was rewritten to
    /// work on the stack: the rewrite must give exactly its output.
    fn arrange_block_reference(block: &[u32]) -> Vec<u32> {
        let len = block.len();
        let cap = len / WORDS_PER_LOAD; // words per store set
        let mut sorted = block.to_vec();
        sorted.sort_unstable();

        // Groups of words sharing one 32-bit shared-memory word: (start, len) into `sorted`.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        for (i, &w) in sorted.iter().enumerate() {
            match groups.last_mut() {
                Some((s, n)) if smem_word(sorted[*s]) == smem_word(w) => *n += 1,
                _ => groups.push((i, 1)),
            }
        }
        // Most contended banks first; inside a bank, by position (stable sort keeps that order).
        let mut groups_per_bank = [0usize; SMEM_BANKS];
        for &(s, _) in &groups {
            groups_per_bank[bank(sorted[s])] += 1;
        }
        groups.sort_by_key(|&(s, _)| {
            let b = bank(sorted[s]);
            (std::cmp::Reverse(groups_per_bank[b]), b)
        });

        let mut sets: [Vec<u32>; WORDS_PER_LOAD] = Default::default();
        let mut load = [[0u32; SMEM_BANKS]; WORDS_PER_LOAD];
        let mut degree = [0u32; WORDS_PER_LOAD];
        for &(start, n) in &groups {
            let b = bank(sorted[start]);
            let words = &sorted[start..start + n];
            // Whole group into a set with room: preferably one whose conflict degree it does not
            // raise, then the fewest groups of this bank, then the most room, then lowest index.
            let best = (0..WORDS_PER_LOAD)
                .filter(|&s| cap - sets[s].len() >= n)
                .min_by_key(|&s| {
                    let grows = load[s][b] + 1 > degree[s];
                    (grows, load[s][b], std::cmp::Reverse(cap - sets[s].len()), s)
                });
            if let Some(s) = best {
                sets[s].extend_from_slice(words);
                load[s][b] += 1;
                degree[s] = degree[s].max(load[s][b]);
                continue;
            }
            // No set has room for the whole group: split it, word by word, preferring sets that
            // already hold part of it (free), then the least loaded with room.
            let mut used = [false; WORDS_PER_LOAD];
            for &w in words {
                let s = (0..WORDS_PER_LOAD)
                    .filter(|&s| sets[s].len() < cap)
                    .min_by_key(|&s| {
                        (
                            !used[s],
                            load[s][b],
                            std::cmp::Reverse(cap - sets[s].len()),
                            s,
                        )
                    })
                    .expect("total capacity equals the block length");
                if !used[s] {
                    used[s] = true;
                    load[s][b] += 1;
                    degree[s] = degree[s].max(load[s][b]);
                }
                sets[s].push(w);
            }
        }

        // Set s goes to the block indices that are s mod 4.
        let mut out = vec![0u32; len];
        for (s, set) in sets.iter().enumerate() {
            for (j, &w) in set.iter().enumerate() {
                out[WORDS_PER_LOAD * j + s] = w;
            }
        }
        out
    }

    /// A lower bound on the extra wavefronts of any arrangement of `words` into `sets` store
    /// sets: together they must write every distinct 32-bit word of bank `b` at least once, so
    /// `Σ_s degree_s ≥ D_b` for every bank, i.e. extra `≥ max_b D_b - sets`.
    fn bound(words: &[u32], sets: usize) -> u64 {
        let most = distinct_per_bank(&mut [0; SEEN_WORDS], words.iter().copied()).into_iter().max().unwrap_or(0);
        u64::from(most).saturating_sub(sets as u64)
    }

    /// [`bound`] summed over the blocks (any within-block permutation).
    fn lower_bound<T: Element>(w: &SparseWeight<T>) -> u64 {
        (0..w.num_tiles())
            .flat_map(|t| w.tile_words(t).chunks(BLOCK_WORDS))
            .map(|block| bound(block, WORDS_PER_LOAD))
            .sum()
    }

    /// [`bound`] summed over the tiles (any permutation inside each tile).
    fn tile_lower_bound<T: Element>(w: &SparseWeight<T>) -> u64 {
        (0..w.num_tiles())
            .map(|t| {
                let words = w.tile_words(t);
                bound(words, WORDS_PER_LOAD * words.len().div_ceil(BLOCK_WORDS))
            })
            .sum()
    }

    /// Multiset of each tile.
    fn tile_multisets<T: Element>(w: &SparseWeight<T>) -> Vec<Vec<u32>> {
        (0..w.num_tiles())
            .map(|t| {
                let mut words = w.tile_words(t).to_vec();
                words.sort_unstable();
                words
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn reorder_preserves_content_and_never_increases(
            rows in 1usize..600, cols in 1usize..200, sparsity in 0.0f64..=1.0, seed: u64,
        ) {
            let mut rng = Rng::new(seed);
            let dense = random_sparse::<bf16>(&mut rng, rows, cols, sparsity);
            let mut w = SparseWeight::from_dense(rows, cols, &dense).unwrap();
            let before = w.bank_conflict_wavefronts();
            let tiles = tile_multisets(&w);
            let blocks = block_by_block(&w);
            let offsets = w.tile_offsets().to_vec();
            w.reorder_for_banks();
            prop_assert!(w.bank_conflict_wavefronts() <= before);
            prop_assert_eq!(tile_multisets(&w), tiles);
            prop_assert!(w.bank_conflict_wavefronts() <= blocks);
            prop_assert!(w.bank_conflict_wavefronts() >= tile_lower_bound(&w));
            prop_assert_eq!(w.tile_offsets(), &offsets[..]);
            prop_assert_eq!(w.to_dense(), dense);
            // Still a valid weight.
            let again = SparseWeight::<bf16>::from_parts(
                rows, cols, w.tile_offsets().to_vec(), w.words().to_vec(), true).unwrap();
            prop_assert_eq!(again.nnz(), w.nnz());
        }

        #[test]
        fn arrange_block_is_a_permutation(words in proptest::collection::vec(any::<u32>(), 1..33)) {
            // Any multiset of length 4k (positions arbitrary in the 256×64 tile) is permuted,
            // not changed.
            let mut block: Vec<u32> = words.iter().map(|w| w & 0x3fff_ffff).collect();
            while !block.len().is_multiple_of(4) { block.push(block[0]); }
            let mut got = vec![0; block.len()];
            arrange_block(&block, &mut got);
            prop_assert_eq!(&got, &arrange_block_reference(&block));
            let mut want = block.clone();
            got.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn arrange_block_matches_the_reference(
            groups in 1usize..=32, seed: u64, mode in 0u8..4,
        ) {
            // Blocks of 4..=128 words built to stress the greedy: random positions, few
            // positions (large groups, exact duplicates, splits), or one hot bank.
            let mut rng = Rng::new(seed);
            let block: Vec<u32> = (0..4 * groups)
                .map(|_| {
                    let pos = match mode {
                        0 => rng.below(TILE_ELEMS),
                        1 => rng.below(24),
                        2 => 64 * rng.below(256) + rng.below(2),
                        _ => 64 * rng.below(16) + rng.below(8) * 16 + rng.below(2),
                    };
                    let bits = if mode == 1 { rng.below(3) } else { rng.below(1 << 16) };
                    pack_word(pos as u16, bits as u16)
                })
                .collect();
            let mut got = vec![0; block.len()];
            arrange_block(&block, &mut got);
            prop_assert_eq!(&got, &arrange_block_reference(&block));
            let seen = &mut [0; SEEN_WORDS];
            prop_assert_eq!(block_cost(seen, &block), block_cost_reference(&block));
            prop_assert_eq!(block_cost(seen, &got), block_cost_reference(&got));
            prop_assert!(seen.iter().all(|&x| x == 0));
        }
    }
}
