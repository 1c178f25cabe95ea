//! Deterministic random data for the unit tests (no extra dependency).

use crate::element::Element;

/// SplitMix64: tiny, fast, good enough for test data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A nonzero value of magnitude in [1/64, 2) with random sign, rounded to `T`.
    pub(crate) fn nonzero<T: Element>(&mut self) -> T {
        let mag = 1.0 / 64.0 + self.unit() * (2.0 - 1.0 / 64.0);
        let v = if self.next_u64() & 1 == 0 { mag } else { -mag };
        T::from_f32(v as f32)
    }
}

/// A `rows` × `cols` matrix whose entries are independently 0 with probability `sparsity`
/// and a random nonzero value otherwise.
pub(crate) fn random_sparse<T: Element>(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    sparsity: f64,
) -> Vec<T> {
    (0..rows * cols)
        .map(|_| {
            if rng.unit() < sparsity {
                T::from_bits(0)
            } else {
                rng.nonzero()
            }
        })
        .collect()
}

/// The same weight with every tile's list padded only to a multiple of 4 words (the minimum
/// the kernel needs; how files written before 128-byte list alignment look), so tests can
/// state exact word counts and offsets.
pub(crate) fn pad_to_4<T: Element>(w: &super::SparseWeight<T>) -> super::SparseWeight<T> {
    let mut offsets = vec![0u32];
    let mut words = Vec::new();
    for t in 0..w.tile_offsets().len() - 1 {
        let list = w.tile_words(t);
        // Padding repeats the last real word (positions are unique otherwise).
        let mut real = list.len();
        while real > 1 && list[real - 2] == list[real - 1] {
            real -= 1;
        }
        words.extend_from_slice(&list[..real]);
        words.resize(words.len() + real.next_multiple_of(4) - real, list.last().copied().unwrap_or(0));
        offsets.push(words.len() as u32);
    }
    super::SparseWeight::from_parts(w.rows(), w.cols(), offsets, words, w.is_reordered()).unwrap()
}
