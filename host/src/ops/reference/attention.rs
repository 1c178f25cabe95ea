//! The KV cache and causal attention on the CPU, on one layer's K and V arrays of the
//! [`KvLayout`] `[slots][kv_heads][max_seq][head_dim]` (the GPU cache's layout, in f32).
//!
//! The GPU oracle and the CPU model path's attention: the same definition as
//! [`Gpu::kv_write`](crate::Gpu::kv_write) and [`Gpu::attention`](crate::Gpu::attention),
//! including out-of-range rows (skipped by the write, NaN from attention). Scores, softmax
//! and the weighted sums are computed in f64 and the output rounded to f32 once.

use crate::error::{Error, Result};
use crate::ops::KvLayout;

/// `a · b` in f64 (products of two f32 are exact), in four interleaved partial sums so the
/// additions pipeline instead of waiting on each other.
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| x as f64 * y as f64).sum();
    for (pa, pb) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += pa[l] as f64 * pb[l] as f64;
        }
    }
    (acc[0] + acc[2]) + (acc[1] + acc[3]) + tail
}

/// Checks that `k_cache` and `v_cache` hold one layer of `layout`.
fn check_cache(what: &str, layout: KvLayout, k_cache: usize, v_cache: usize) -> Result<()> {
    match layout.elems() {
        Some(e) if e == k_cache && e == v_cache => Ok(()),
        Some(e) => Err(Error::Shape(format!("{what}: the caches must hold {e} values each, got {k_cache} and {v_cache}"))),
        None => Err(Error::Shape(format!("{what}: {layout:?} overflows"))),
    }
}

/// Checks that `slots` and `positions` have one entry per row of `rows` values of `width`.
fn check_rows(what: &str, rows: &[f32], width: usize, slots: &[u32], positions: &[u32]) -> Result<usize> {
    let n = slots.len();
    if positions.len() != n || Some(rows.len()) != n.checked_mul(width) {
        return Err(Error::Shape(format!(
            "{what}: {} slots and {} positions, with rows of {width} values, need {} values, got {}",
            n,
            positions.len(),
            n.saturating_mul(width),
            rows.len()
        )));
    }
    Ok(n)
}

/// Writes the K and V rows of `n` tokens into one layer's cache: row i of `k` and `v` (`n ×
/// kv_heads·head_dim`, row-major, kv head h in columns `h·head_dim ..`) goes to slot
/// `slots[i]`, position `positions[i]`. Rows whose slot or position is out of range are
/// skipped; for two rows with the same place the later one stays.
pub fn kv_write_reference(
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    layout: KvLayout,
    k: &[f32],
    v: &[f32],
    slots: &[u32],
    positions: &[u32],
) -> Result<()> {
    check_cache("kv_write_reference", layout, k_cache.len(), v_cache.len())?;
    let width = layout.row_width();
    let n = check_rows("kv_write_reference: K", k, width, slots, positions)?;
    check_rows("kv_write_reference: V", v, width, slots, positions)?;
    let hd = layout.head_dim;
    for i in 0..n {
        let (slot, pos) = (slots[i] as usize, positions[i] as usize);
        if !layout.contains(slot, pos) {
            continue;
        }
        for h in 0..layout.kv_heads {
            let (src, dst) = (i * width + h * hd, layout.offset(slot, h, pos));
            k_cache[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
            v_cache[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
        }
    }
    Ok(())
}

/// Causal attention of `n` query rows over one layer's cache: row i of `q` (`n ×
/// n_heads·head_dim`, row-major) attends to slot `slots[i]`'s keys and values at positions
/// `0 ..= positions[i]`; query head h uses kv head `h / (n_heads / kv_heads)`. Returns `n ×
/// n_heads·head_dim` values, per head `Σ_j softmax_j(scale · q·k_j) · v_j`; a row whose slot or
/// position is out of range is all NaN.
#[allow(clippy::too_many_arguments)]
pub fn attention_reference(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    layout: KvLayout,
    slots: &[u32],
    positions: &[u32],
    n_heads: usize,
    scale: f32,
) -> Result<Vec<f32>> {
    check_cache("attention_reference", layout, k_cache.len(), v_cache.len())?;
    let (kv_heads, hd) = (layout.kv_heads, layout.head_dim);
    if n_heads == 0 || kv_heads == 0 || !n_heads.is_multiple_of(kv_heads) {
        return Err(Error::InvalidArgument(format!(
            "attention_reference: n_heads = {n_heads} must be a positive multiple of kv_heads = {kv_heads}"
        )));
    }
    let width = n_heads * hd;
    let n = check_rows("attention_reference: Q", q, width, slots, positions)?;
    let ratio = n_heads / kv_heads;
    // One query row: every head's softmax-weighted sum of its kv head's values.
    let row = |i: usize, out: &mut [f32], scores: &mut Vec<f64>, acc: &mut [f64]| {
        let (slot, pos) = (slots[i] as usize, positions[i] as usize);
        if !layout.contains(slot, pos) {
            return; // stays NaN
        }
        for h in 0..n_heads {
            let qh = &q[i * width + h * hd..][..hd];
            let base = layout.offset(slot, h / ratio, 0);
            scores.clear();
            scores.extend((0..=pos).map(|j| {
                let kj = &k_cache[base + j * hd..][..hd];
                scale as f64 * dot_f64(qh, kj)
            }));
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            acc.fill(0.0);
            let mut sum = 0f64;
            for (j, &s) in scores.iter().enumerate() {
                let p = (s - max).exp();
                sum += p;
                let vj = &v_cache[base + j * hd..][..hd];
                for (a, &x) in acc.iter_mut().zip(vj) {
                    *a += p * x as f64;
                }
            }
            for (o, a) in out[h * hd..][..hd].iter_mut().zip(acc.iter()) {
                *o = (a / sum) as f32;
            }
        }
    };
    let mut out = vec![f32::NAN; n * width];
    if width == 0 {
        return Ok(out);
    }
    // Rows are independent: a long prompt's rows are spread over the cores (each row's
    // arithmetic is the same whichever thread runs it, so the result does not depend on
    // the thread count). Causal rows grow longer down the prompt: they are dealt
    // round-robin.
    let work: usize = positions.iter().map(|&p| p as usize + 1).sum::<usize>().saturating_mul(width);
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get()).min(n).min(work / (1 << 16)).max(1);
    let mut dealt: Vec<Vec<(usize, &mut [f32])>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, o) in out.chunks_exact_mut(width).enumerate() {
        dealt[i % threads].push((i, o));
    }
    let run = |rows: Vec<(usize, &mut [f32])>| {
        let (mut scores, mut acc) = (Vec::new(), vec![0f64; hd]);
        for (i, o) in rows {
            row(i, o, &mut scores, &mut acc);
        }
    };
    if threads == 1 {
        dealt.into_iter().for_each(run);
    } else {
        std::thread::scope(|s| {
            for rows in dealt {
                s.spawn(|| run(rows));
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: KvLayout = KvLayout { slots: 2, kv_heads: 1, max_seq: 4, head_dim: 2 };

    #[test]
    fn writes_rows_in_place_and_skips_out_of_range() {
        let n = L.elems().unwrap();
        let (mut kc, mut vc) = (vec![0f32; n], vec![0f32; n]);
        let k = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let v = [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0];
        // Row 1's slot and row 2's position are out of range.
        kv_write_reference(&mut kc, &mut vc, L, &k, &v, &[1, 2, 0], &[3, 0, 4]).unwrap();
        let mut want = vec![0f32; n];
        want[L.offset(1, 0, 3)..][..2].copy_from_slice(&[1.0, 2.0]);
        assert_eq!(kc, want);
        assert_eq!(vc, want.iter().map(|x| -x).collect::<Vec<_>>());
        assert!(kv_write_reference(&mut kc, &mut vc, L, &k[..4], &v, &[1, 2, 0], &[3, 0, 4]).is_err());
    }

    #[test]
    fn attends_causally_with_softmax_weights() {
        let n = L.elems().unwrap();
        let (mut kc, mut vc) = (vec![0f32; n], vec![0f32; n]);
        // Slot 0: keys (1, 0), (0, 1), (1, 1) with values 10, 20, 40 (both columns).
        let k = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let v = [10.0, 10.0, 20.0, 20.0, 40.0, 40.0];
        kv_write_reference(&mut kc, &mut vc, L, &k, &v, &[0, 0, 0], &[0, 1, 2]).unwrap();
        // Query (ln 2, 0), scale 1: scores ln 2, 0, ln 2 over positions 0..=2 → weights
        // 2/5, 1/5, 2/5; at position 1 only the first two: 2/3, 1/3.
        let q = [std::f32::consts::LN_2, 0.0];
        let out = attention_reference(&[q, q].concat(), &kc, &vc, L, &[0, 0], &[2, 1], 1, 1.0).unwrap();
        let (at2, at1) = ((2.0 * 10.0 + 20.0 + 2.0 * 40.0) / 5.0, (2.0 * 10.0 + 20.0) / 3.0);
        for (got, want) in out.iter().zip([at2, at2, at1, at1]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        // Out of range rows are NaN; GQA needs n_heads a multiple of kv_heads.
        let out = attention_reference(&[q, q].concat(), &kc, &vc, L, &[2, 0], &[0, 4], 1, 1.0).unwrap();
        assert!(out.iter().all(|x| x.is_nan()));
        let l2 = KvLayout { kv_heads: 2, ..L };
        let (kc2, vc2) = (vec![0f32; l2.elems().unwrap()], vec![0f32; l2.elems().unwrap()]);
        assert!(attention_reference(&[0.0; 6], &kc2, &vc2, l2, &[0], &[0], 3, 1.0).is_err());
    }

    #[test]
    fn grouped_query_heads_share_kv_heads() {
        let l = KvLayout { slots: 1, kv_heads: 2, max_seq: 1, head_dim: 2 };
        let n = l.elems().unwrap();
        let (mut kc, mut vc) = (vec![0f32; n], vec![0f32; n]);
        kv_write_reference(&mut kc, &mut vc, l, &[1.0; 4], &[1.0, 2.0, 3.0, 4.0], &[0], &[0]).unwrap();
        // 4 query heads over 2 kv heads: heads 0, 1 read kv head 0, heads 2, 3 kv head 1. One
        // key: the output is its value.
        let out = attention_reference(&[0.5; 8], &kc, &vc, l, &[0], &[0], 4, 0.1).unwrap();
        assert_eq!(out, [1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0]);
    }

    #[test]
    fn rows_dealt_over_threads_match_rows_alone() {
        // 64 rows attending to up to 512 positions of 2 heads × 64: enough work (> 2 · 2^16
        // multiply-adds) for several threads where the machine has them. Each row computed
        // alone (one row, one thread) must give the same bits.
        let l = KvLayout { slots: 2, kv_heads: 2, max_seq: 512, head_dim: 64 };
        let n = l.elems().unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let (kc, vc): (Vec<f32>, Vec<f32>) = (0..n).map(|_| (next(), next())).unzip();
        let rows = 64;
        let q: Vec<f32> = (0..rows * 128).map(|_| next()).collect();
        let slots: Vec<u32> = (0..rows as u32).map(|i| i % 3).collect(); // slot 2 is out of range
        let positions: Vec<u32> = (0..rows as u32).map(|i| i * 8 + 7).collect();
        let all = attention_reference(&q, &kc, &vc, l, &slots, &positions, 2, 0.125).unwrap();
        for i in 0..rows {
            let one = attention_reference(&q[i * 128..][..128], &kc, &vc, l, &slots[i..=i], &positions[i..=i], 2, 0.125).unwrap();
            let got = &all[i * 128..][..128];
            assert!(got.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()), "row {i}");
            assert_eq!(got[0].is_nan(), slots[i] == 2, "row {i}");
        }
    }
}
