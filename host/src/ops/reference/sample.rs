//! Greedy and sampled token choice: the GPU's rules, and the same token from the same logits.

use crate::error::Result;
use crate::ops::numerics::{covers, draw, sample_weight, weight_shift};
use crate::ops::SamplingParams;

pub use crate::ops::numerics::{sample_bits, NO_TOKEN};

/// The index of the largest value of each row of `vocab` logits: ties go to the lowest index,
/// NaN never wins (−Inf does), a row of NaN only gives [`NO_TOKEN`].
///
/// # Panics
/// If `vocab` is 0, `vocab` ≥ 2³²−1, or `out.len() · vocab != logits.len()`.
pub fn argmax(logits: &[f32], vocab: usize, out: &mut [u32]) {
    check(logits.len(), vocab, out.len());
    for (row, o) in logits.chunks_exact(vocab).zip(out) {
        *o = argmax_row(row);
    }
}

fn argmax_row(row: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in row.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(NO_TOKEN, |(i, _)| i as u32)
}

fn check(len: usize, vocab: usize, rows: usize) {
    assert!(vocab > 0 && vocab < u32::MAX as usize, "vocab = {vocab} must be in 1..2³²−1");
    assert_eq!(len, rows * vocab, "the logits must hold one row of {vocab} per output");
}

/// One token per row of `vocab` logits at `step`, by exactly the rules of
/// [`Gpu::sample`](crate::Gpu::sample) (which see): temperature (0: [`argmax`]), top-k (ties
/// at the k-th value kept), top-p on the top-k distribution (ties at the threshold kept),
/// integer weights `sample_weight`, and row r's target `draw(M, sample_bits(seed, step, r))`
/// in the cumulative weight in index order. Given logits the GPU's type can hold, the token is
/// the GPU's.
///
/// Allocates one scratch vector (up to `vocab` entries) per call when top-k or top-p is on.
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for parameters out of range
/// ([`SamplingParams::validate`]).
///
/// # Panics
/// As [`argmax`].
pub fn sample(logits: &[f32], vocab: usize, params: &SamplingParams, step: u64, out: &mut [u32]) -> Result<()> {
    params.validate()?;
    check(logits.len(), vocab, out.len());
    if params.temperature == 0.0 {
        argmax(logits, vocab, out);
        return Ok(());
    }
    let mut scratch: Vec<(f32, u64)> = Vec::new();
    for (r, (row, o)) in logits.chunks_exact(vocab).zip(out.iter_mut()).enumerate() {
        *o = sample_row(row, params, step, r as u64, &mut scratch);
    }
    Ok(())
}

fn sample_row(row: &[f32], p: &SamplingParams, step: u64, r: u64, scratch: &mut Vec<(f32, u64)>) -> u32 {
    let Some(vmax) = row.iter().copied().filter(|v| !v.is_nan()).reduce(f32::max) else {
        return NO_TOKEN;
    };
    let valid = row.iter().filter(|v| !v.is_nan()).count();
    let shift = weight_shift(row.len() as u32);
    let weight = |v: f32| sample_weight(v, vmax, p.temperature, shift);
    // Candidates are the logits ≥ `tau` (NaN never is).
    let mut tau = f32::NEG_INFINITY;
    if p.top_k != 0 && p.top_k < valid {
        // The k-th largest value (counting repeats).
        scratch.clear();
        scratch.extend(row.iter().filter(|v| !v.is_nan()).map(|&v| (v, 0)));
        let (_, kth, _) = scratch.select_nth_unstable_by(p.top_k - 1, |a, b| b.0.total_cmp(&a.0));
        tau = kth.0;
    }
    let total: u64 = row.iter().filter(|&&v| v >= tau).map(|&v| weight(v)).sum();
    let mut kept = total;
    if p.top_p < 1.0 {
        // The largest value whose candidates at or above it cover `top_p` of the total.
        scratch.clear();
        scratch.extend(row.iter().filter(|&&v| v >= tau).map(|&v| (v, weight(v))));
        scratch.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        let mut mass = 0u64;
        let mut i = 0;
        while i < scratch.len() {
            // All candidates equal to this value (−0 and +0 are one value).
            let v = scratch[i].0;
            while i < scratch.len() && scratch[i].0 == v {
                mass += scratch[i].1;
                i += 1;
            }
            if covers(mass, total, p.top_p) {
                tau = v;
                kept = mass;
                break;
            }
        }
    }
    let target = draw(kept, sample_bits(p.seed, step, r));
    let mut acc = 0u64;
    for (i, &v) in row.iter().enumerate() {
        if v >= tau {
            acc += weight(v);
            if acc > target {
                return i as u32;
            }
        }
    }
    unreachable!("the cumulative weight reaches {kept} > target {target}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(logits: &[f32], p: SamplingParams, step: u64) -> u32 {
        let mut out = [0];
        sample(logits, logits.len(), &p, step, &mut out).unwrap();
        out[0]
    }

    #[test]
    fn argmax_ties_nan_and_infinities() {
        let mut out = [0; 5];
        let rows = [
            [1.0, 3.0, 3.0, -1.0],
            [f32::NAN, f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY],
            [f32::NAN; 4],
            [-0.0, 0.0, -5.0, f32::NAN],
            [f32::NAN, 2.0, f32::INFINITY, f32::INFINITY],
        ];
        argmax(rows.as_flattened(), 4, &mut out);
        assert_eq!(out, [1, 1, NO_TOKEN, 0, 2]);
    }

    #[test]
    fn degenerate_settings_are_greedy() {
        let logits = [0.5, 2.0, -1.0, 1.9, 2.0, f32::NAN];
        for step in 0..50 {
            for p in [
                SamplingParams { temperature: 0.0, seed: step, ..Default::default() },
                SamplingParams { top_k: 1, seed: step, ..Default::default() },
                SamplingParams { top_p: 0.0, seed: step, ..Default::default() },
                SamplingParams { temperature: 1e-30, seed: step, ..Default::default() },
            ] {
                let t = one(&logits, p, step);
                // Both maxima (ties kept) are possible except under argmax (lowest index).
                assert!(t == 1 || (p.temperature != 0.0 && t == 4), "{p:?}: {t}");
            }
        }
        assert_eq!(one(&[f32::NAN; 3], SamplingParams::default(), 0), NO_TOKEN);
        assert_eq!(one(&[f32::NEG_INFINITY, 1.0, f32::INFINITY], SamplingParams::default(), 3), 2);
    }

    /// Frequencies over many steps follow the top-k / top-p-restricted softmax: each count is
    /// within 5 standard deviations of n·p (a binomial; a wrong distribution, a stuck or
    /// correlated random stream fails by far more).
    #[test]
    fn draws_follow_the_restricted_softmax() {
        let logits = [1.0f32, 0.0, 2.0, -1.0, 0.5, 2.0, f32::NAN, -3.0];
        let cases = [
            (SamplingParams { temperature: 1.0, ..Default::default() }, logits.len()),
            (SamplingParams { temperature: 0.7, top_k: 4, ..Default::default() }, 4),
            (SamplingParams { temperature: 1.3, top_p: 0.8, seed: 99, ..Default::default() }, 0),
        ];
        for (p, k) in cases {
            let t = f64::from(p.temperature);
            let mut w: Vec<f64> = logits.iter().map(|&v| if v.is_nan() { 0.0 } else { (f64::from(v) - 2.0) / t }).map(f64::exp).collect();
            for (i, v) in logits.iter().enumerate() {
                if v.is_nan() {
                    w[i] = 0.0;
                }
            }
            // Top-k 4 keeps 2.0, 2.0, 1.0, 0.5; top-p 0.8 at T = 1.3 keeps the smallest
            // value-closed top set of mass ≥ 0.8.
            let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            if k > 0 && k < order.len() {
                let kth = logits[order[k - 1]];
                for i in 0..w.len() {
                    if logits[i] < kth {
                        w[i] = 0.0;
                    }
                }
            }
            if p.top_p < 1.0 {
                let total: f64 = w.iter().sum();
                let mut mass = 0.0;
                let mut cut = f32::NEG_INFINITY;
                for &i in &order {
                    mass += w[i];
                    if mass >= f64::from(p.top_p) * total {
                        cut = logits[i];
                        break;
                    }
                }
                for i in 0..w.len() {
                    if !(logits[i] >= cut) {
                        w[i] = 0.0;
                    }
                }
            }
            let total: f64 = w.iter().sum();
            let n = 40_000u64;
            let mut counts = vec![0u64; logits.len()];
            for step in 0..n {
                counts[one(&logits, p, step) as usize] += 1;
            }
            for (i, &c) in counts.iter().enumerate() {
                let q = w[i] / total;
                let (mean, sd) = (n as f64 * q, (n as f64 * q * (1.0 - q)).sqrt());
                assert!((c as f64 - mean).abs() <= 5.0 * sd + 1e-9, "{p:?}: token {i} drawn {c} times, expected {mean:.0} ± {sd:.0}");
            }
        }
    }

    #[test]
    fn rows_and_steps_draw_independently() {
        // Two rows of one batch and two steps of one row get different numbers.
        assert_ne!(sample_bits(7, 0, 0), sample_bits(7, 0, 1));
        assert_ne!(sample_bits(7, 0, 0), sample_bits(7, 1, 0));
        assert_ne!(sample_bits(7, 0, 0), sample_bits(8, 0, 0));
        // A batch samples each row with its own row index.
        let row = [0.0f32; 16];
        let batch: Vec<f32> = row.iter().cycle().take(64).copied().collect();
        let mut out = [0; 4];
        let p = SamplingParams { seed: 5, ..Default::default() };
        sample(&batch, 16, &p, 9, &mut out).unwrap();
        for (r, &t) in out.iter().enumerate() {
            let want = draw(16 << weight_shift(16), sample_bits(5, 9, r as u64)) >> weight_shift(16);
            assert_eq!(u64::from(t), want, "uniform row {r}");
        }
    }
}
