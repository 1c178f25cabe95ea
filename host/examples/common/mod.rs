//! Pieces the demos share: reproducible input data and kernel timing.

pub mod timing;

use half::f16;

/// `count` values uniform in [−0.1, 0.1) from a xorshift64 stream seeded with `seed`: the
/// same demo data on every machine.
pub fn random_f16s(seed: &mut u64, count: usize) -> Vec<f16> {
    (0..count)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            f16::from_f32(((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2)
        })
        .collect()
}
