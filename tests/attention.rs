//! The KV cache (`kv_write`) and causal attention on the GPU against the CPU reference
//! (`ops::reference::attention`), for prefill rows of several sequences and decode steps,
//! GQA, several head widths, split and unsplit sequences, out-of-range rows, ownership and
//! shape errors (GPU; skipped visibly without).

mod common;

use common::{gpu, poison, random, Rng};
use half::{bf16, f16};
use sparse_tc::ops::reference::attention::{attention_reference, kv_write_reference};
use sparse_tc::ops::{AttentionOptions, KvCache, KvLayout};
use sparse_tc::{DeviceIndices, Element, Error, Gpu};

/// Checks `got` (`n × n_heads·head_dim`, from the GPU) against `want` (the reference, f32)
/// for the queries `q` over the cache `kc`, `vc` (f32 copies of the GPU cache's values).
///
/// Error bound per output element o_d of a head with keys j = 0..=pos, derived from the
/// kernel's arithmetic (all inputs are values of T, so exact in f32):
/// - scores: q·k_j is hd products exact in f32, summed in f32 by the Tensor Cores:
///   |δs_j| ≤ γ_hd·Σ_d|q_d·k_jd|, γ_hd = hd·2⁻²² (4× the classical bound, for the Tensor
///   Cores' truncating adds, as in `common::assert_close`); scaled by scale·log2 e in f32
///   and subtracted from the running max, then `ex2.approx` (relative error ≲ 2⁻²²). Each
///   weight p_j = exp(t_j − max) is therefore off by a relative ρ ≤ 2·scale·γ_hd·max_j
///   Σ|q·k_j| + 3·2⁻²¹·max_j|t_j| + 2⁻¹⁸ (score errors of j and of the max; f32 roundings
///   of t; the exponentials, including those rescaling warps and chunks to a common max,
///   which enter numerator and denominator);
/// - perturbing every weight by a relative ρ moves Σp·v/Σp by at most 2ρ·A_d, where A_d =
///   Σ_j p_j·|v_jd| / Σ_j p_j (≤ max|v|);
/// - the weights are rounded to T for the P·V product (the sum uses the f32 weights):
///   u·A_d, plus, for f16, subnormal weights off by 2⁻²⁵ absolute: keys·2⁻²⁵·max_j|v_jd|
///   (Σp ≥ 1);
/// - P·V and the running sum in f32 over `keys` terms, rescaled once per 64-key tile, and the
///   combines (≤ 4 warps, ≤ 1024 chunks): 2·γ_keys·A_d with γ_keys = (keys + 64)·2⁻²²;
/// - the division, the final rounding to T (u·|o|, or 2⁻²⁵ absolute in the f16 subnormal
///   range) and the reference's own rounding to f32 (2⁻²⁴·|o|).
///
/// u = 2⁻¹¹ (f16) or 2⁻⁸ (bf16). The sum is scaled by 1.05 for second-order terms. Rows
/// whose slot or position is out of range must be NaN in every element.
#[allow(clippy::too_many_arguments)]
fn check_attention<T: Element>(
    got: &[T],
    want: &[f32],
    q: &[f32],
    (kc, vc): (&[f32], &[f32]),
    layout: KvLayout,
    (slots, positions): (&[u32], &[u32]),
    n_heads: usize,
    scale: f32,
    ctx: &str,
) {
    let (hd, n) = (layout.head_dim, slots.len());
    let width = n_heads * hd;
    assert_eq!((got.len(), want.len()), (n * width, n * width), "{ctx}");
    let u = T::DTYPE.unit_roundoff();
    let ratio = n_heads / layout.kv_heads;
    let scale = scale as f64;
    for i in 0..n {
        let (slot, pos) = (slots[i] as usize, positions[i] as usize);
        if !layout.contains(slot, pos) {
            for (e, g) in got[i * width..][..width].iter().enumerate() {
                assert!(g.to_f32().is_nan(), "{ctx}: row {i} (slot {slot}, position {pos}) element {e} = {g:?}, expected NaN");
            }
            continue;
        }
        let keys = pos + 1;
        let gamma_hd = hd as f64 * 2f64.powi(-22);
        let gamma_keys = (keys + 64) as f64 * 2f64.powi(-22);
        for h in 0..n_heads {
            let qh = &q[i * width + h * hd..][..hd];
            let base = layout.offset(slot, h / ratio, 0);
            let (mut t, mut abs) = (Vec::with_capacity(keys), 0f64);
            for j in 0..keys {
                let kj = &kc[base + j * hd..][..hd];
                t.push(scale * qh.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>());
                abs = abs.max(qh.iter().zip(kj).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>());
            }
            let max = t.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let max_t = t.iter().fold(0f64, |m, x| m.max(x.abs()));
            let rho = 2.0 * scale.abs() * gamma_hd * abs + 3.0 * 2f64.powi(-21) * max_t + 2f64.powi(-18);
            let p: Vec<f64> = t.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = p.iter().sum();
            for d in 0..hd {
                let (mut a, mut vmax) = (0f64, 0f64);
                for (j, pj) in p.iter().enumerate() {
                    let v = (vc[base + j * hd + d] as f64).abs();
                    a += pj * v;
                    vmax = vmax.max(v);
                }
                a /= sum;
                let e = i * width + h * hd + d;
                let (g, w) = (got[e].to_f32() as f64, want[e] as f64);
                let tol = 1.05
                    * ((u + 2f64.powi(-23)) * w.abs()
                        + (u + 2.0 * rho + 2.0 * gamma_keys) * a
                        + keys as f64 * 2f64.powi(-25) * vmax
                        + 2f64.powi(-25));
                assert!(
                    (g - w).abs() <= tol,
                    "{ctx}: row {i} (slot {slot}, position {pos}) head {h} d {d}: got {g}, reference {w}, |err| {} > tol {tol}",
                    (g - w).abs()
                );
            }
        }
    }
}

/// One test case: `seqs[s]` prompt tokens in slot `s + 1` (slot 0 stays empty), then
/// `decode_steps` tokens per sequence, one kv_write + attention per step.
#[derive(Clone, Debug)]
struct Case {
    kv_heads: usize,
    ratio: usize,
    head_dim: usize,
    seqs: Vec<usize>,
    decode_steps: usize,
    chunks: Option<usize>,
    /// Magnitude of the queries (larger: peakier softmax).
    q_mag: f32,
    seed: u64,
}

/// f32 copies of T values.
fn f32s<T: Element>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// Random values of T in [-mag, mag).
fn random_scaled<T: Element>(rng: &mut Rng, len: usize, mag: f32) -> Vec<T> {
    (0..len).map(|_| T::from_f32(rng.uniform() * mag)).collect()
}

/// The GPU cache next to its reference copy (one layer of interest, `LAYER`).
struct Caches<T: Element> {
    gpu: KvCache<T>,
    layout: KvLayout,
    kc: Vec<f32>,
    vc: Vec<f32>,
}

/// Layers of the test caches; the tests write and read `LAYER`, and check that the other
/// stays zero.
const LAYERS: usize = 2;
const LAYER: usize = 1;

impl<T: Element> Caches<T> {
    fn new(gpu: &Gpu, layout: KvLayout) -> Self {
        let KvLayout { slots, kv_heads, max_seq, head_dim } = layout;
        let cache = gpu.kv_cache::<T>(LAYERS, slots, kv_heads, max_seq, head_dim).unwrap();
        assert_eq!(cache.layout(), layout);
        assert_eq!(Some(cache.bytes()), KvCache::<T>::bytes_for(LAYERS, slots, kv_heads, max_seq, head_dim));
        let elems = layout.elems().unwrap();
        Caches { gpu: cache, layout, kc: vec![0.0; elems], vc: vec![0.0; elems] }
    }

    /// Writes `n` random K/V rows at (`slots[i]`, `positions[i]`) on the GPU and in the
    /// reference.
    fn write(&mut self, gpu: &Gpu, rng: &mut Rng, slots: &[u32], positions: &[u32]) {
        let (n, width) = (slots.len(), self.layout.row_width());
        let k: Vec<T> = random(rng, n * width);
        let v: Vec<T> = random(rng, n * width);
        let (dk, dv) = (gpu.upload(n, width, &k).unwrap(), gpu.upload(n, width, &v).unwrap());
        let (ds, dp) = (gpu.upload_indices(slots).unwrap(), gpu.upload_indices(positions).unwrap());
        gpu.kv_write(&mut self.gpu, LAYER, &dk, &dv, &ds, &dp).unwrap();
        kv_write_reference(&mut self.kc, &mut self.vc, self.layout, &f32s(&k), &f32s(&v), slots, positions).unwrap();
    }

    /// The GPU cache holds exactly the reference's values, and the other layer zeros.
    fn check_contents(&self, gpu: &Gpu, ctx: &str) {
        let (k, v) = gpu.download_kv(&self.gpu, LAYER).unwrap();
        assert!(f32s(&k) == self.kc && f32s(&v) == self.vc, "{ctx}: the cache differs from the reference");
        let (k0, v0) = gpu.download_kv(&self.gpu, 1 - LAYER).unwrap();
        assert!(k0.iter().chain(&v0).all(|x| x.to_f32() == 0.0), "{ctx}: the other layer was written");
    }

    /// Runs attention for the query rows at (`slots[i]`, `positions[i]`) on the GPU (poisoned
    /// output) and checks it against the reference.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        gpu: &Gpu,
        rng: &mut Rng,
        slots: &[u32],
        positions: &[u32],
        n_heads: usize,
        q_mag: f32,
        opts: AttentionOptions,
        ctx: &str,
    ) -> Vec<T> {
        let (n, width) = (slots.len(), n_heads * self.layout.head_dim);
        let q: Vec<T> = random_scaled(rng, n * width, q_mag);
        let scale = 1.0 / (self.layout.head_dim as f32).sqrt();
        let dq = gpu.upload(n, width, &q).unwrap();
        let (ds, dp) = (gpu.upload_indices(slots).unwrap(), gpu.upload_indices(positions).unwrap());
        let mut out = gpu.zeros::<T>(n, width).unwrap();
        gpu.fill(&mut out, poison()).unwrap();
        gpu.attention_with(&dq, &self.gpu, LAYER, &ds, &dp, n_heads, scale, &mut out, opts).unwrap();
        let got = gpu.download(&out).unwrap();
        let q32 = f32s(&q);
        let want = attention_reference(&q32, &self.kc, &self.vc, self.layout, slots, positions, n_heads, scale).unwrap();
        check_attention(&got, &want, &q32, (&self.kc, &self.vc), self.layout, (slots, positions), n_heads, scale, ctx);
        got
    }
}

/// Prefill (every prompt token of every sequence written in one shuffled kv_write, then
/// attention for all of them, or a sample of 64 for long prompts), then decode steps.
fn run_case<T: Element>(gpu: &Gpu, case: &Case) {
    let ctx = format!("{} {case:?}", T::DTYPE.name());
    let mut rng = Rng::new(case.seed);
    let n_heads = case.kv_heads * case.ratio;
    let longest = case.seqs.iter().copied().max().unwrap_or(1);
    let layout = KvLayout {
        slots: case.seqs.len() + 1,
        kv_heads: case.kv_heads,
        max_seq: longest + case.decode_steps + 3,
        head_dim: case.head_dim,
    };
    let mut caches = Caches::<T>::new(gpu, layout);
    let opts = AttentionOptions { chunks: case.chunks, ..Default::default() };

    // Prefill: all prompt tokens, in random order.
    let mut rows: Vec<(u32, u32)> =
        case.seqs.iter().enumerate().flat_map(|(s, &len)| (0..len as u32).map(move |p| (s as u32 + 1, p))).collect();
    for i in (1..rows.len()).rev() {
        rows.swap(i, rng.below(i + 1));
    }
    let (slots, positions): (Vec<u32>, Vec<u32>) = rows.iter().copied().unzip();
    caches.write(gpu, &mut rng, &slots, &positions);
    caches.check_contents(gpu, &ctx);
    let sample = rows.len().min(if rows.len() > 400 { 64 } else { rows.len() });
    let (qs, qp): (Vec<u32>, Vec<u32>) = rows[..sample].iter().copied().unzip();
    caches.attend(gpu, &mut rng, &qs, &qp, n_heads, case.q_mag, opts, &format!("{ctx} prefill"));

    // Decode: one token per sequence per step, the batch's rows at different positions.
    for step in 0..case.decode_steps {
        let slots: Vec<u32> = (1..=case.seqs.len() as u32).collect();
        let positions: Vec<u32> = case.seqs.iter().map(|&len| (len + step) as u32).collect();
        caches.write(gpu, &mut rng, &slots, &positions);
        caches.attend(gpu, &mut rng, &slots, &positions, n_heads, case.q_mag, opts, &format!("{ctx} decode step {step}"));
    }
    caches.check_contents(gpu, &ctx);
}

/// Hand-picked cases: odd head counts, GQA ratios 1/3/8 and a group larger than 16 heads,
/// every compiled head width and widths in between (zero-padded columns), rows spanning
/// many chunks, batches of different lengths, automatic and forced splits.
fn fixed_cases() -> Vec<Case> {
    let c = |kv_heads, ratio, head_dim, seqs: &[usize], decode_steps, chunks, q_mag, seed| Case {
        kv_heads,
        ratio,
        head_dim,
        seqs: seqs.to_vec(),
        decode_steps,
        chunks,
        q_mag,
        seed,
    };
    vec![
        c(1, 1, 64, &[1], 2, None, 1.0, 1),
        c(5, 1, 64, &[37, 5, 130], 2, None, 1.0, 2),
        c(3, 3, 128, &[70, 200], 2, Some(3), 2.0, 3),
        c(2, 8, 128, &[100, 64, 1], 3, Some(1), 1.0, 4),
        c(2, 8, 128, &[100, 64, 1], 1, Some(7), 4.0, 5),
        c(1, 24, 64, &[90, 33], 2, None, 1.0, 6),
        c(3, 1, 32, &[65, 128, 129], 1, Some(2), 1.0, 7),
        c(1, 3, 80, &[250], 2, Some(4), 1.0, 8),
        c(2, 3, 96, &[17, 300], 1, None, 1.0, 9),
        c(1, 8, 48, &[64], 1, Some(1), 1.0, 10),
        c(3, 1, 8, &[10, 3], 1, Some(5), 1.0, 11),
        c(1, 5, 40, &[77], 1, None, 3.0, 12),
        c(2, 1, 104, &[150], 1, Some(64), 1.0, 13),
        // Long decode rows, batch of different lengths: automatic split into many chunks.
        c(2, 4, 128, &[1500, 700, 3000], 2, None, 2.0, 14),
        c(1, 8, 64, &[2048], 1, Some(1), 1.0, 15),
        c(1, 8, 64, &[2049], 1, Some(33), 1.0, 16),
    ]
}

/// Random cases from a seed: 1–4 sequences, mostly short, sometimes one long.
fn random_case(seed: u64) -> Case {
    let mut rng = Rng::new(seed ^ 0xA77E);
    let pick = |rng: &mut Rng, xs: &[usize]| xs[rng.below(xs.len())];
    let seqs = (0..1 + rng.below(4)).map(|_| if rng.below(6) == 0 { 1 + rng.below(1500) } else { 1 + rng.below(160) }).collect();
    let chunks = match rng.below(4) {
        0 => None,
        1 => Some(1),
        2 => Some(1 + rng.below(8)),
        _ => Some(1 + rng.below(100)),
    };
    Case {
        kv_heads: pick(&mut rng, &[1, 2, 3, 5]),
        ratio: pick(&mut rng, &[1, 3, 8, 1, 2, 17]),
        head_dim: pick(&mut rng, &[32, 64, 80, 96, 128, 8, 48, 72, 120]),
        seqs,
        decode_steps: 1 + rng.below(2),
        chunks,
        q_mag: [1.0, 2.0, 4.0][rng.below(3)],
        seed,
    }
}

/// The fixed cases, every one normally, an evenly spread few under compute-sanitizer.
fn fixed_cases_to_run() -> Vec<Case> {
    let all = fixed_cases();
    let step = all.len() / common::cases(all.len() as u32) as usize;
    all.into_iter().step_by(step.max(1)).collect()
}

#[test]
fn attention_f16_matches_reference() {
    let Some(gpu) = gpu("attention_f16_matches_reference") else { return };
    for case in fixed_cases_to_run() {
        run_case::<f16>(&gpu, &case);
    }
    for seed in 0..common::cases(24) as u64 {
        run_case::<f16>(&gpu, &random_case(seed));
    }
}

#[test]
fn attention_bf16_matches_reference() {
    let Some(gpu) = gpu("attention_bf16_matches_reference") else { return };
    for case in fixed_cases_to_run() {
        run_case::<bf16>(&gpu, &case);
    }
    for seed in 100..100 + common::cases(16) as u64 {
        run_case::<bf16>(&gpu, &random_case(seed));
    }
}

/// Batch-1 decode over a long context with the automatic split (LLaMA-2-like heads: 8 kv
/// heads of 128, 4 query heads each): one wave of blocks across the SMs, then the combine.
#[test]
fn attention_long_decode_is_split_and_exact() {
    let Some(gpu) = gpu("attention_long_decode_is_split_and_exact") else { return };
    let layout = KvLayout { slots: 1, kv_heads: 8, max_seq: 5000, head_dim: 128 };
    let mut caches = Caches::<f16>::new(&gpu, layout);
    let mut rng = Rng::new(77);
    let positions: Vec<u32> = (0..5000).collect();
    caches.write(&gpu, &mut rng, &vec![0; 5000], &positions);
    for pos in [4999, 2500, 64, 63, 0] {
        caches.attend(&gpu, &mut rng, &[0], &[pos], 32, 2.0, AttentionOptions::default(), &format!("decode at {pos}"));
        // The planning hint, right or wrong (too small: fewer, longer pieces), changes nothing.
        for max_position in [pos as usize, 100, 0] {
            let opts = AttentionOptions { max_position: Some(max_position), ..Default::default() };
            caches.attend(&gpu, &mut rng, &[0], &[pos], 32, 2.0, opts, &format!("decode at {pos}, hint {max_position}"));
        }
    }
}

/// The same inputs give the same bits, run after run (fixed reduction orders, no atomics).
#[test]
fn attention_is_deterministic() {
    let Some(gpu) = gpu("attention_is_deterministic") else { return };
    let layout = KvLayout { slots: 2, kv_heads: 2, max_seq: 1200, head_dim: 64 };
    let mut caches = Caches::<bf16>::new(&gpu, layout);
    let mut rng = Rng::new(5);
    let (slots, positions): (Vec<u32>, Vec<u32>) = (0..1100).map(|p| (p % 2, p / 2 + 600 * (p % 2))).unzip();
    caches.write(&gpu, &mut rng, &slots, &positions);
    let (n, width) = (2, 2 * 4 * 64);
    let q: Vec<bf16> = random(&mut rng, n * width);
    let dq = gpu.upload(n, width, &q).unwrap();
    let (ds, dp) = (gpu.upload_indices(&[0, 1]).unwrap(), gpu.upload_indices(&[549, 1149]).unwrap());
    for chunks in [None, Some(1), Some(5)] {
        let run = || {
            let mut out = gpu.zeros::<bf16>(n, width).unwrap();
            let opts = AttentionOptions { chunks, ..Default::default() };
            gpu.attention_with(&dq, &caches.gpu, LAYER, &ds, &dp, 8, 0.125, &mut out, opts).unwrap();
            gpu.download(&out).unwrap()
        };
        let first = run();
        assert!((0..3).all(|_| run() == first), "chunks {chunks:?}: results differ between runs");
    }
}

/// Rows whose slot or position is out of range: kv_write skips them (the cache is unchanged),
/// attention gives them NaN, and the other rows of the same calls are unaffected, with and
/// without a split.
#[test]
fn out_of_range_rows_are_skipped_or_nan() {
    let Some(gpu) = gpu("out_of_range_rows_are_skipped_or_nan") else { return };
    for chunks in [None, Some(1), Some(4)] {
        let layout = KvLayout { slots: 3, kv_heads: 2, max_seq: 300, head_dim: 64 };
        let mut caches = Caches::<f16>::new(&gpu, layout);
        let mut rng = Rng::new(9);
        let (slots, positions): (Vec<u32>, Vec<u32>) = (0..600).map(|p| (p % 3, p / 3)).unzip();
        caches.write(&gpu, &mut rng, &slots, &positions);
        // Out of range: slot = slots, position = max_seq, both huge; in between valid rows.
        let bad_slots = [0, 3, 1, 0, u32::MAX, 2, 7];
        let bad_pos = [10, 0, 299, 300, u32::MAX, 150, 5];
        caches.write(&gpu, &mut rng, &bad_slots, &bad_pos);
        caches.check_contents(&gpu, "kv_write with out-of-range rows");
        let opts = AttentionOptions { chunks, ..Default::default() };
        let got = caches.attend(&gpu, &mut rng, &bad_slots, &bad_pos, 6, 1.0, opts, &format!("chunks {chunks:?}"));
        // (check_attention asserted NaN rows and exact others; the valid rows are not NaN.)
        let width = 6 * 64;
        for (i, &valid) in [true, false, true, false, false, true, false].iter().enumerate() {
            assert_eq!(got[i * width..][..width].iter().all(|x| !x.to_f32().is_nan()), valid, "row {i}");
        }
    }
}

/// Objects of another handle are refused by every attention operation, naming the operand.
#[test]
fn attention_objects_of_another_handle_are_refused() {
    let Some(a) = gpu("attention_objects_of_another_handle_are_refused") else { return };
    let b = Gpu::new().unwrap();
    let refused = |r: sparse_tc::Result<()>, operand: &str| match r {
        Err(Error::InvalidArgument(msg)) => {
            assert!(msg.contains(operand) && msg.contains("another Gpu handle"), "message {msg:?} should name {operand}")
        }
        Err(e) => panic!("expected InvalidArgument naming {operand}, got {e}"),
        Ok(()) => panic!("an object of another handle was accepted ({operand})"),
    };
    let make = |g: &Gpu| {
        let cache = g.kv_cache::<f16>(1, 2, 1, 16, 64).unwrap();
        let kv = g.zeros::<f16>(1, 64).unwrap();
        let q = g.zeros::<f16>(1, 128).unwrap();
        let out = g.zeros::<f16>(1, 128).unwrap();
        let idx: DeviceIndices = g.upload_indices(&[0]).unwrap();
        let idx2: DeviceIndices = g.upload_indices(&[0]).unwrap();
        (cache, kv, q, out, idx, idx2)
    };
    let (mut ca, kva, qa, mut oa, sa, pa) = make(&a);
    let (mut cb, kvb, qb, mut ob, sb, pb) = make(&b);
    refused(b.kv_write(&mut ca, 0, &kvb, &kvb, &sb, &pb), "cache");
    refused(b.kv_write(&mut cb, 0, &kva, &kvb, &sb, &pb), "K");
    refused(b.kv_write(&mut cb, 0, &kvb, &kva, &sb, &pb), "V");
    refused(b.kv_write(&mut cb, 0, &kvb, &kvb, &sa, &pb), "slots");
    refused(b.kv_write(&mut cb, 0, &kvb, &kvb, &sb, &pa), "positions");
    refused(b.attention(&qa, &cb, 0, &sb, &pb, 2, 1.0, &mut ob), "Q");
    refused(b.attention(&qb, &ca, 0, &sb, &pb, 2, 1.0, &mut ob), "cache");
    refused(b.attention(&qb, &cb, 0, &sa, &pb, 2, 1.0, &mut ob), "slots");
    refused(b.attention(&qb, &cb, 0, &sb, &pa, 2, 1.0, &mut ob), "positions");
    refused(b.attention(&qb, &cb, 0, &sb, &pb, 2, 1.0, &mut oa), "output");
    refused(b.download_kv(&ca, 0).map(|_| ()), "cache");
    // Each handle still works with its own objects.
    a.kv_write(&mut ca, 0, &kva, &kva, &sa, &pa).unwrap();
    a.attention(&qa, &ca, 0, &sa, &pa, 2, 1.0, &mut oa).unwrap();
    b.kv_write(&mut cb, 0, &kvb, &kvb, &sb, &pb).unwrap();
    b.attention(&qb, &cb, 0, &sb, &pb, 2, 1.0, &mut ob).unwrap();
    assert!(a.download(&oa).unwrap().iter().chain(&b.download(&ob).unwrap()).all(|x| *x == f16::ZERO));
}

/// Bad shapes and arguments are errors before anything is launched or allocated.
#[test]
fn attention_shape_errors() {
    let Some(gpu) = gpu("attention_shape_errors") else { return };
    let shape = |r: sparse_tc::Result<()>, what: &str| {
        assert!(matches!(r, Err(Error::Shape(_))), "{what}: expected a shape error, got {r:?}");
    };
    let invalid = |r: sparse_tc::Result<()>, what: &str| {
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{what}: expected an invalid argument, got {r:?}");
    };
    // The cache: zero sizes, unsupported head widths, sizes that overflow (named, nothing
    // allocated), indices beyond u32.
    shape(gpu.kv_cache::<f16>(0, 1, 1, 1, 64).map(|_| ()), "zero layers");
    shape(gpu.kv_cache::<f16>(1, 1, 1, 0, 64).map(|_| ()), "zero max_seq");
    invalid(gpu.kv_cache::<f16>(1, 1, 1, 1, 100).map(|_| ()), "head_dim 100");
    invalid(gpu.kv_cache::<f16>(1, 1, 1, 1, 136).map(|_| ()), "head_dim 136");
    invalid(gpu.kv_cache::<f16>(1, 1, 1, 1, 4).map(|_| ()), "head_dim 4");
    match gpu.kv_cache::<f16>(1 << 40, 1 << 20, 64, 1 << 20, 128) {
        Err(Error::Shape(msg)) => assert!(msg.contains("1099511627776 layers") && msg.contains("overflow"), "{msg}"),
        r => panic!("overflowing cache: {:?}", r.map(|_| ())),
    }
    shape(gpu.kv_cache::<f16>(1, 1 << 33, 1, 1, 8).map(|_| ()), "slots beyond u32");

    let mut cache = gpu.kv_cache::<f16>(2, 2, 2, 32, 64).unwrap();
    let (s1, p1) = (gpu.upload_indices(&[0]).unwrap(), gpu.upload_indices(&[0]).unwrap());
    let s2 = gpu.upload_indices(&[0, 1]).unwrap();
    let kv = gpu.zeros::<f16>(1, 128).unwrap();
    let kv_wrong = gpu.zeros::<f16>(1, 64).unwrap();
    let kv_two = gpu.zeros::<f16>(2, 128).unwrap();
    shape(gpu.kv_write(&mut cache, 0, &kv_wrong, &kv_wrong, &s1, &p1), "K of one kv head");
    shape(gpu.kv_write(&mut cache, 0, &kv, &kv_two, &s1, &p1), "V with more rows than K");
    shape(gpu.kv_write(&mut cache, 0, &kv, &kv, &s2, &p1), "two slots for one row");
    invalid(gpu.kv_write(&mut cache, 2, &kv, &kv, &s1, &p1), "layer 2 of 2");
    gpu.kv_write(&mut cache, 1, &kv, &kv, &s1, &p1).unwrap();

    let q = gpu.zeros::<f16>(1, 6 * 64).unwrap();
    let mut out = gpu.zeros::<f16>(1, 6 * 64).unwrap();
    let mut out_wrong = gpu.zeros::<f16>(2, 6 * 64).unwrap();
    invalid(gpu.attention(&q, &cache, 0, &s1, &p1, 3, 1.0, &mut out), "3 heads over 2 kv heads");
    invalid(gpu.attention(&q, &cache, 0, &s1, &p1, 0, 1.0, &mut out), "0 heads");
    shape(gpu.attention(&q, &cache, 0, &s1, &p1, 4, 1.0, &mut out), "Q of 6 heads for 4");
    shape(gpu.attention(&q, &cache, 0, &s1, &p1, 6, 1.0, &mut out_wrong), "output of 2 rows");
    shape(gpu.attention(&q, &cache, 0, &s2, &p1, 6, 1.0, &mut out), "two slots for one row");
    invalid(gpu.attention(&q, &cache, 2, &s1, &p1, 6, 1.0, &mut out), "layer 2 of 2");
    invalid(gpu.attention(&q, &cache, 0, &s1, &p1, 6, f32::NAN, &mut out), "NaN scale");
    let opts = |chunks| AttentionOptions { chunks: Some(chunks), ..Default::default() };
    invalid(gpu.attention_with(&q, &cache, 0, &s1, &p1, 6, 1.0, &mut out, opts(0)), "0 chunks");
    invalid(gpu.attention_with(&q, &cache, 0, &s1, &p1, 6, 1.0, &mut out, opts(1025)), "1025 chunks");
    // Still usable after the refusals.
    gpu.attention_with(&q, &cache, 1, &s1, &p1, 6, 1.0, &mut out, opts(3)).unwrap();
    assert!(gpu.download(&out).unwrap().iter().all(|x| *x == f16::ZERO));
}
