//! The model operations (`sparse_tc::ops`) on the GPU against their CPU references
//! (`sparse_tc::ops::reference`), for f16 and bf16, on random shapes including odd column
//! counts, one-wave-overflowing row counts and 256k vocabularies (GPU; skipped visibly
//! without).
//!
//! What is compared, and how exactly:
//! - element-wise ops, gathers, RoPE, argmax and sampling: **bit for bit** (NaN matching any
//!   NaN). The kernels and the references run the same IEEE operations in the same order on
//!   the exact f32 values of the 16-bit inputs (exp, SiLU, RoPE's frequencies and sin/cos and
//!   the sampler's integer weights come from one source, `gpu/src/numerics.rs`, compiled into
//!   both, and `.ci/check-ptx` verifies the kernels hold no fused or approximate arithmetic);
//!   the GPU then rounds to nearest even once, as `half`'s `from_f32` does here;
//! - norms: against an f64 reference, with the bound derived at [`check_rms`] / [`check_layer`]
//!   (the GPU sums in f32 in its own order);
//! - every output is poisoned with NaN first (an element left unwritten cannot pass) and its
//!   padding columns are read back raw: they must still be zero.

mod common;

use common::{cases, gpu, poison, Rng};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sparse_tc::ops::reference;
use sparse_tc::ops::NO_TOKEN;
use sparse_tc::{DeviceMatrix, Element, Error, Gpu, RopeStyle, SamplingParams};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `len` values: uniform in [-scale, scale), with about 1 in `special_every` replaced by a
/// special value (NaN, ±Inf, ±0, a subnormal of T) when `special_every` > 0; rounded to `T`.
fn data<T: Element>(rng: &mut Rng, len: usize, scale: f32, special_every: usize) -> Vec<T> {
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e-7, -3e-40];
    (0..len)
        .map(|_| {
            if special_every > 0 && rng.below(special_every) == 0 {
                T::from_f32(specials[rng.below(specials.len())])
            } else {
                T::from_f32(rng.uniform() * scale)
            }
        })
        .collect()
}

fn widen<T: Element>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

fn round<T: Element>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

/// A poisoned (all NaN) `rows × cols` device matrix.
fn poisoned<T: Element>(gpu: &Gpu, rows: usize, cols: usize) -> DeviceMatrix<T> {
    let mut m = gpu.zeros::<T>(rows, cols).unwrap();
    gpu.fill(&mut m, poison()).unwrap();
    m
}

/// Downloads `m` and checks that its padding columns (`cols..ld` of every row) are still zero,
/// reading the raw device buffer.
fn download_checked<T: Element>(gpu: &Gpu, m: &DeviceMatrix<T>, what: &str) -> Vec<T> {
    let values = gpu.download(m).unwrap(); // binds the context and synchronises
    if m.ld() > m.cols() {
        let mut raw = vec![0u16; m.rows() * m.ld()];
        // SAFETY: copies the matrix's whole allocation (rows · ld u16, live) into `raw`; the
        // handle's context is current (`download` bound it) and its stream is idle.
        let rc = unsafe { cust::sys::cuMemcpyDtoH_v2(raw.as_mut_ptr().cast(), m.device_ptr(), raw.len() * 2) };
        assert_eq!(rc, cust::sys::cudaError_enum::CUDA_SUCCESS, "raw download");
        for (r, row) in raw.chunks_exact(m.ld()).enumerate() {
            assert!(row[m.cols()..].iter().all(|&b| b == 0), "{what}: nonzero padding in row {r}: {:?}", &row[m.cols()..]);
        }
    }
    values
}

/// Bit-exact comparison (any NaN matches any NaN).
fn assert_same<T: Element>(got: &[T], want: &[T], cols: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.to_bits() == w.to_bits() || (g.to_f32().is_nan() && w.to_f32().is_nan());
        assert!(same, "{what}: element ({}, {}) = {g:?}, reference {w:?}", i / cols, i % cols);
    }
}

/// Random shapes: rows mostly small (a decode batch) but up to a few hundred, columns of any
/// residue mod 8 from 1 up, sometimes model-sized (4096, 5003, 8190–8199).
fn shapes() -> impl Strategy<Value = (usize, usize, u64)> {
    let rows = prop_oneof![3 => 1usize..9, 2 => 9usize..80, 1 => 80usize..400];
    let cols = prop_oneof![4 => 1usize..300, 1 => Just(4096usize), 1 => Just(5003usize), 1 => 8190usize..8200];
    (rows, cols, any::<u64>())
}

/// Runs `check` on `n` random shapes (fewer under compute-sanitizer).
fn run_shapes(n: u32, check: impl Fn(usize, usize, u64)) {
    TestRunner::new(Config { cases: cases(n), ..Config::default() })
        .run(&shapes(), |(rows, cols, seed)| {
            check(rows, cols, seed);
            Ok(())
        })
        .unwrap();
}

fn scale_of(rng: &mut Rng) -> f32 {
    [1.0, 0.01, 30.0][rng.below(3)]
}

// ---------------------------------------------------------------------------------------------
// Norms
// ---------------------------------------------------------------------------------------------

/// 2⁻²⁴: one f32 rounding.
const U32: f64 = 1.0 / 16_777_216.0;

/// RMSNorm (fused with the residual add when `fused`) of random rows against the f64
/// reference.
///
/// Bound per element, y = s · w · r with r = 1/sqrt(mean(s²) + eps): each s² of a 16-bit value
/// is exact in f32, and the GPU's f32 sum of d of them, in any order, errs by at most
/// γ_d·Σs² (γ_d = d·2⁻²⁴), so r errs by at most (γ_d/2 + 2·2⁻²⁴)·r (the division by d, the
/// add of eps, sqrt and the reciprocal each round once, and the square root halves the sum's
/// error); the two products add 2·2⁻²⁴·|y|. The result is then rounded to T: + u·|y| (u the
/// unit roundoff), plus half the f16 subnormal spacing (2⁻²⁵) for tiny y. We allow
/// u·|y| + (d + 8)·2⁻²⁴·|y| + 2⁻²⁵ (the γ_d term taken whole rather than halved).
fn check_rms<T: Element>(gpu: &Gpu, rows: usize, d: usize, seed: u64, fused: bool) {
    let mut rng = Rng::new(seed);
    let scale = scale_of(&mut rng);
    let eps = [1e-5, 1e-6, 0.25][rng.below(3)];
    let x: Vec<T> = data(&mut rng, rows * d, scale, 0);
    let w: Vec<T> = data(&mut rng, d, 1.5, 0);
    let dx = gpu.upload(rows, d, &x).unwrap();
    let dw = gpu.upload(1, d, &w).unwrap();
    let mut out = poisoned::<T>(gpu, rows, d);
    let normed: Vec<f32> = if fused {
        let delta: Vec<T> = data(&mut rng, rows * d, scale, 0);
        let mut res = dx;
        let dd = gpu.upload(rows, d, &delta).unwrap();
        gpu.add_rms_norm(&mut res, &dd, &dw, eps, &mut out).unwrap();
        // The residual: round(res + delta), bit for bit; the norm is of that rounded residual.
        let mut sum = widen(&x);
        reference::elementwise::add_assign(&mut sum, &widen(&delta));
        let want: Vec<T> = round(&sum);
        assert_same(&download_checked(gpu, &res, "add_rms_norm residual"), &want, d, "add_rms_norm residual");
        widen(&want)
    } else {
        gpu.rms_norm(&dx, &dw, eps, &mut out).unwrap();
        widen(&x)
    };
    let got = download_checked(gpu, &out, "rms_norm out");
    let mut want = vec![0.0f32; rows * d];
    reference::norm::rms_norm(&normed, &widen(&w), eps, &mut want);
    let u = T::DTYPE.unit_roundoff();
    for (i, (g, &y)) in got.iter().zip(&want).enumerate() {
        let (g, y) = (g.to_f32() as f64, y as f64);
        let tol = u * y.abs() + (d as f64 + 8.0) * U32 * y.abs() + 2f64.powi(-25);
        assert!((g - y).abs() <= tol, "rms_norm {rows}×{d} (fused {fused}) [{}, {}] = {g}, reference {y}, tol {tol}", i / d, i % d);
    }
}

/// LayerNorm (fused when `fused`) against the f64 reference.
///
/// Bound per element, y = (s − m)·r·w + b: the GPU's mean m errs by at most γ·A (A = mean |s|,
/// γ = (d + 2)·2⁻²⁴ for the f32 sum and the division); the centred values then err by γ·A plus
/// one rounding; the variance of the centred values (their squares and sum) by at most γ
/// relative (plus (γA)²/var, negligible), so r errs by at most (γ/2 + 3·2⁻²⁴) relative. Hence
/// |Δ((s − m)·r·w)| ≤ |w|·r·(γ·A + |s − m|·(γ + 4·2⁻²⁴)), the bias add rounds once more (2⁻²⁴
/// of the sum), and the final rounding to T adds u·|y| (+ 2⁻²⁵ for f16 subnormals).
fn check_layer<T: Element>(gpu: &Gpu, rows: usize, d: usize, seed: u64, fused: bool) {
    let mut rng = Rng::new(seed);
    let scale = scale_of(&mut rng);
    let eps = [1e-5, 1e-6, 0.25][rng.below(3)];
    // An offset makes the mean matter (|mean| up to the spread).
    let shift = rng.uniform() * scale;
    let x: Vec<T> = data::<T>(&mut rng, rows * d, scale, 0).iter().map(|v| T::from_f32(v.to_f32() + shift)).collect();
    let w: Vec<T> = data(&mut rng, d, 1.5, 0);
    let b: Vec<T> = data(&mut rng, d, 0.5, 0);
    let dx = gpu.upload(rows, d, &x).unwrap();
    let (dw, db) = (gpu.upload(1, d, &w).unwrap(), gpu.upload(1, d, &b).unwrap());
    let mut out = poisoned::<T>(gpu, rows, d);
    let normed: Vec<f32> = if fused {
        let delta: Vec<T> = data(&mut rng, rows * d, scale, 0);
        let mut res = dx;
        let dd = gpu.upload(rows, d, &delta).unwrap();
        gpu.add_layer_norm(&mut res, &dd, &dw, &db, eps, &mut out).unwrap();
        let mut sum = widen(&x);
        reference::elementwise::add_assign(&mut sum, &widen(&delta));
        let want: Vec<T> = round(&sum);
        assert_same(&download_checked(gpu, &res, "add_layer_norm residual"), &want, d, "add_layer_norm residual");
        widen(&want)
    } else {
        gpu.layer_norm(&dx, &dw, &db, eps, &mut out).unwrap();
        widen(&x)
    };
    let got = download_checked(gpu, &out, "layer_norm out");
    let (wf, bf) = (widen(&w), widen(&b));
    let mut want = vec![0.0f32; rows * d];
    reference::norm::layer_norm(&normed, &wf, &bf, eps, &mut want);
    let u = T::DTYPE.unit_roundoff();
    let gamma = (d as f64 + 2.0) * U32;
    for (r, row) in normed.chunks_exact(d).enumerate() {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let abs_mean = row.iter().map(|&v| (v as f64).abs()).sum::<f64>() / d as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for c in 0..d {
            let (g, y) = (got[r * d + c].to_f32() as f64, want[r * d + c] as f64);
            let centred = (row[c] as f64 - mean).abs();
            let tol = u * y.abs()
                + (wf[c] as f64).abs() * rstd * (gamma * abs_mean + centred * (gamma + 4.0 * U32))
                + 2.0 * U32 * y.abs()
                + 2f64.powi(-25);
            assert!((g - y).abs() <= tol, "layer_norm {rows}×{d} (fused {fused}) [{r}, {c}] = {g}, reference {y}, tol {tol}");
        }
    }
}

#[test]
fn norms_match_reference_on_random_shapes() {
    let Some(gpu) = gpu("norms_match_reference_on_random_shapes") else { return };
    run_shapes(24, |rows, d, seed| {
        for fused in [false, true] {
            check_rms::<f16>(&gpu, rows, d, seed, fused);
            check_rms::<bf16>(&gpu, rows, d, seed ^ 1, fused);
            check_layer::<f16>(&gpu, rows, d, seed ^ 2, fused);
            check_layer::<bf16>(&gpu, rows, d, seed ^ 3, fused);
        }
    });
}

/// More rows than one wave of resident blocks (each block then loops over rows), and
/// LLaMA/OPT widths.
#[test]
fn norms_large_shapes() {
    let Some(gpu) = gpu("norms_large_shapes") else { return };
    for (rows, d) in [(3000, 24), (2500, 7), (33, 4096), (17, 5120), (5, 12288), (2, 28672)] {
        check_rms::<f16>(&gpu, rows, d, (rows * d) as u64, true);
        check_layer::<bf16>(&gpu, rows, d, (rows + d) as u64, true);
    }
}

/// eps = 0 on a zero row gives NaN (0 · ∞), like the formula; a zero row with eps > 0 gives 0.
#[test]
fn norms_of_zero_rows() {
    let Some(gpu) = gpu("norms_of_zero_rows") else { return };
    let x = gpu.zeros::<f16>(2, 9).unwrap();
    let w = gpu.upload(1, 9, &[f16::ONE; 9]).unwrap();
    let mut out = poisoned::<f16>(&gpu, 2, 9);
    gpu.rms_norm(&x, &w, 1e-6, &mut out).unwrap();
    assert!(download_checked(&gpu, &out, "rms zero row").iter().all(|v| v.to_f32() == 0.0));
    gpu.rms_norm(&x, &w, 0.0, &mut out).unwrap();
    assert!(download_checked(&gpu, &out, "rms zero row, eps 0").iter().all(|v| v.is_nan()));
}

// ---------------------------------------------------------------------------------------------
// Element-wise
// ---------------------------------------------------------------------------------------------

/// All four element-wise operations on one shape, bit for bit against the reference, with
/// special values (NaN, ±Inf, ±0, subnormals) mixed in.
fn check_elementwise<T: Element>(gpu: &Gpu, rows: usize, cols: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let scale = scale_of(&mut rng);
    let a: Vec<T> = data(&mut rng, rows * cols, scale, 50);
    let b: Vec<T> = data(&mut rng, rows * cols, scale, 50);
    let bias: Vec<T> = data(&mut rng, cols, scale, 20);
    let (af, bf) = (widen(&a), widen(&b));
    let db = gpu.upload(rows, cols, &b).unwrap();
    let what = |op: &str| format!("{op} {rows}×{cols} ({})", T::DTYPE.name());

    let mut acc = gpu.upload(rows, cols, &a).unwrap();
    gpu.add_assign(&mut acc, &db).unwrap();
    let mut want = af.clone();
    reference::elementwise::add_assign(&mut want, &bf);
    assert_same(&download_checked(gpu, &acc, &what("add_assign")), &round::<T>(&want), cols, &what("add_assign"));

    let mut x = gpu.upload(rows, cols, &a).unwrap();
    gpu.add_bias(&mut x, &gpu.upload(1, cols, &bias).unwrap()).unwrap();
    let mut want = af.clone();
    reference::elementwise::add_bias(&mut want, &widen(&bias));
    assert_same(&download_checked(gpu, &x, &what("add_bias")), &round::<T>(&want), cols, &what("add_bias"));

    let gate = gpu.upload(rows, cols, &a).unwrap();
    let mut out = poisoned::<T>(gpu, rows, cols);
    gpu.silu_mul(&gate, &db, &mut out).unwrap();
    let mut want = vec![0.0; rows * cols];
    reference::elementwise::silu_mul(&af, &bf, &mut want);
    assert_same(&download_checked(gpu, &out, &what("silu_mul")), &round::<T>(&want), cols, &what("silu_mul"));
    // The gate is only read.
    assert_same(&download_checked(gpu, &gate, &what("silu_mul gate")), &a, cols, &what("silu_mul gate"));

    let mut x = gpu.upload(rows, cols, &a).unwrap();
    gpu.relu(&mut x).unwrap();
    let mut want = af;
    reference::elementwise::relu(&mut want);
    assert_same(&download_checked(gpu, &x, &what("relu")), &round::<T>(&want), cols, &what("relu"));
}

#[test]
fn elementwise_matches_reference_bit_for_bit() {
    let Some(gpu) = gpu("elementwise_matches_reference_bit_for_bit") else { return };
    run_shapes(32, |rows, cols, seed| {
        check_elementwise::<f16>(&gpu, rows, cols, seed);
        check_elementwise::<bf16>(&gpu, rows, cols, seed ^ 5);
    });
    // More chunks than one wave of threads holds (grid-stride loops, incremental row/column
    // stepping across row ends), and a tall narrow one.
    check_elementwise::<f16>(&gpu, 600, 4100, 11);
    check_elementwise::<bf16>(&gpu, 70_001, 3, 12);
}

// ---------------------------------------------------------------------------------------------
// Embeddings and gathers
// ---------------------------------------------------------------------------------------------

fn check_embed<T: Element>(gpu: &Gpu, rows: usize, cols: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let vocab = 1 + rng.below(300);
    let table: Vec<T> = data(&mut rng, vocab * cols, 1.0, 100);
    let dt = gpu.upload(vocab, cols, &table).unwrap();
    // Ids mostly in range, some just past the end, and the largest u32 (no wrap-around with an
    // offset).
    let ids: Vec<u32> = (0..rows)
        .map(|_| match rng.below(10) {
            0 => vocab as u32 + rng.below(3) as u32,
            1 => u32::MAX - rng.below(3) as u32,
            _ => rng.below(vocab) as u32,
        })
        .collect();
    let offset = [0u32, 2][rng.below(2)];
    let di = gpu.upload_indices(&ids).unwrap();
    let tf = widen(&table);
    let what = format!("embed {rows}×{cols} vocab {vocab} offset {offset} ({})", T::DTYPE.name());

    let mut out = poisoned::<T>(gpu, rows, cols);
    gpu.embed(&dt, &di, offset, false, &mut out).unwrap();
    let mut want = vec![0.0; rows * cols];
    reference::embed::embed(&tf, cols, &ids, offset, false, &mut want);
    assert_same(&download_checked(gpu, &out, &what), &round::<T>(&want), cols, &what);

    // Accumulate onto existing values (OPT's positions after the tokens).
    let base: Vec<T> = data(&mut rng, rows * cols, 1.0, 100);
    let mut acc = gpu.upload(rows, cols, &base).unwrap();
    gpu.embed(&dt, &di, offset, true, &mut acc).unwrap();
    let mut want = widen(&base);
    reference::embed::embed(&tf, cols, &ids, offset, true, &mut want);
    assert_same(&download_checked(gpu, &acc, &what), &round::<T>(&want), cols, &format!("{what}, accumulate"));

    // gather_rows: the same without offset.
    let mut out = poisoned::<T>(gpu, rows, cols);
    gpu.gather_rows(&dt, &di, &mut out).unwrap();
    let mut want = vec![0.0; rows * cols];
    reference::embed::gather_rows(&tf, cols, &ids, &mut want);
    assert_same(&download_checked(gpu, &out, &what), &round::<T>(&want), cols, &format!("{what}, gather_rows"));
}

#[test]
fn embed_and_gather_match_reference() {
    let Some(gpu) = gpu("embed_and_gather_match_reference") else { return };
    run_shapes(32, |rows, cols, seed| {
        check_embed::<f16>(&gpu, rows, cols, seed);
        check_embed::<bf16>(&gpu, rows, cols, seed ^ 7);
    });
    check_embed::<f16>(&gpu, 5000, 4096, 3);
}

/// A bad id yields a NaN row, never another row's values.
#[test]
fn embed_out_of_range_ids_give_nan_rows() {
    let Some(gpu) = gpu("embed_out_of_range_ids_give_nan_rows") else { return };
    let table = gpu.upload(2, 3, &[bf16::ONE; 6]).unwrap();
    let ids = gpu.upload_indices(&[1, 2, u32::MAX, 0]).unwrap();
    let mut out = poisoned::<bf16>(&gpu, 4, 3);
    gpu.embed(&table, &ids, 0, false, &mut out).unwrap();
    let got = download_checked(&gpu, &out, "embed");
    assert!(got[..3].iter().all(|v| v.to_f32() == 1.0) && got[9..].iter().all(|v| v.to_f32() == 1.0));
    assert!(got[3..9].iter().all(|v| v.is_nan()));
    gpu.embed(&table, &ids, 1, false, &mut out).unwrap(); // id 1 + 1 is past the end too
    assert!(download_checked(&gpu, &out, "embed").iter().take(9).all(|v| v.is_nan()));
}

// ---------------------------------------------------------------------------------------------
// RoPE
// ---------------------------------------------------------------------------------------------

fn check_rope<T: Element>(gpu: &Gpu, rows: usize, heads: usize, head_dim: usize, theta: f32, seed: u64) {
    let mut rng = Rng::new(seed);
    let cols = heads * head_dim;
    let x: Vec<T> = data(&mut rng, rows * cols, 2.0, 200);
    // Decode positions, long-context ones, and the extremes.
    let positions: Vec<u32> = (0..rows)
        .map(|_| match rng.below(6) {
            0 => rng.below(64) as u32,
            1 => rng.below(1 << 17) as u32,
            2 => rng.below(1 << 20) as u32,
            3 => [0, 1, 131_071, 1 << 24, (1 << 24) + 1, u32::MAX][rng.below(6)],
            _ => rng.below(8192) as u32,
        })
        .collect();
    let dp = gpu.upload_indices(&positions).unwrap();
    for style in [RopeStyle::HalfSplit, RopeStyle::Interleaved] {
        let mut dx = gpu.upload(rows, cols, &x).unwrap();
        gpu.rope(&mut dx, &dp, head_dim, theta, style).unwrap();
        let mut want = widen(&x);
        reference::rope::rope(&mut want, cols, &positions, head_dim, theta, style);
        let what = format!("rope {style:?} {rows}×{heads}×{head_dim} θ={theta} ({})", T::DTYPE.name());
        assert_same(&download_checked(gpu, &dx, &what), &round::<T>(&want), cols, &what);
    }
}

#[test]
fn rope_matches_reference_bit_for_bit() {
    let Some(gpu) = gpu("rope_matches_reference_bit_for_bit") else { return };
    let strategy = (1usize..50, 1usize..6, prop_oneof![Just(64usize), Just(128), Just(80), (1usize..20).prop_map(|h| 2 * h)], 0usize..4, any::<u64>());
    TestRunner::new(Config { cases: cases(32), ..Config::default() })
        .run(&strategy, |(rows, heads, hd, t, seed)| {
            let theta = [10_000.0, 500_000.0, 1_000_000.0, 2.0][t];
            check_rope::<f16>(&gpu, rows, heads, hd, theta, seed);
            check_rope::<bf16>(&gpu, rows, heads, hd, theta, seed ^ 9);
            Ok(())
        })
        .unwrap();
    // LLaMA-sized: 32 heads of 128 over many rows (blocks loop over rows), the widest head.
    check_rope::<bf16>(&gpu, 2000, 32, 128, 500_000.0, 1);
    check_rope::<f16>(&gpu, 3, 1, 2048, 10_000.0, 2);
    check_rope::<f16>(&gpu, 3, 7, 2, 10_000.0, 3);
}

// ---------------------------------------------------------------------------------------------
// argmax and sampling
// ---------------------------------------------------------------------------------------------

/// Logits with many exact ties (few distinct values after rounding), some NaN/±Inf, and rows
/// of NaN only.
fn logits<T: Element>(rng: &mut Rng, rows: usize, vocab: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(rows * vocab);
    for _ in 0..rows {
        match rng.below(12) {
            0 => v.extend((0..vocab).map(|_| T::from_f32(f32::NAN))),
            1 => v.extend((0..vocab).map(|_| T::from_f32([f32::NAN, f32::NEG_INFINITY][rng.below(2)]))),
            k => {
                // Coarse values (many ties) or fine ones, at several spreads.
                let (coarse, spread) = (k % 2 == 0, [0.5, 4.0, 12.0, 40.0][rng.below(4)]);
                let special = [0, 200, 2000][rng.below(3)];
                v.extend((0..vocab).map(|_| {
                    if special > 0 && rng.below(special) == 0 {
                        return T::from_f32([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0][rng.below(4)]);
                    }
                    let x = rng.uniform() * spread;
                    T::from_f32(if coarse { (x * 2.0).round() / 2.0 } else { x })
                }));
            }
        }
    }
    v
}

fn check_tokens<T: Element>(gpu: &Gpu, rows: usize, vocab: usize, seed: u64, samples: usize) {
    let mut rng = Rng::new(seed);
    let l: Vec<T> = logits(&mut rng, rows, vocab);
    let lf = widen(&l);
    let dl = gpu.upload(rows, vocab, &l).unwrap();
    let mut out = gpu.indices_with_capacity(rows + rng.below(3)).unwrap();
    gpu.argmax(&dl, &mut out).unwrap();
    let mut want = vec![0u32; rows];
    reference::sample::argmax(&lf, vocab, &mut want);
    assert_eq!(gpu.download_indices(&out).unwrap(), want, "argmax {rows}×{vocab} ({})", T::DTYPE.name());
    for _ in 0..samples {
        let params = SamplingParams {
            temperature: [0.0, 1e-3, 0.3, 0.7, 1.0, 2.5][rng.below(6)],
            top_k: [0, 0, 1, 5, 50, vocab, vocab + 1, 1 + rng.below(vocab)][rng.below(8)],
            top_p: [1.0, 1.0, 0.9, 0.5, 0.0, rng.uniform().abs()][rng.below(6)],
            seed: rng.next_u64(),
        };
        let step = rng.next_u64() % 100_000;
        gpu.write_indices(&mut out, &[7; 1]).unwrap(); // a stale length and value
        gpu.sample(&dl, &params, step, &mut out).unwrap();
        reference::sample::sample(&lf, vocab, &params, step, &mut want).unwrap();
        assert_eq!(
            gpu.download_indices(&out).unwrap(),
            want,
            "sample {rows}×{vocab} ({}) {params:?} step {step}",
            T::DTYPE.name()
        );
    }
}

#[test]
fn argmax_and_sample_match_reference_exactly() {
    let Some(gpu) = gpu("argmax_and_sample_match_reference_exactly") else { return };
    let strategy = (prop_oneof![1usize..6, 6usize..40], prop_oneof![1usize..40, 40usize..3000, Just(32_000usize)], any::<u64>());
    TestRunner::new(Config { cases: cases(32), ..Config::default() })
        .run(&strategy, |(rows, vocab, seed)| {
            check_tokens::<f16>(&gpu, rows, vocab, seed, 6);
            check_tokens::<bf16>(&gpu, rows, vocab, seed ^ 3, 6);
            Ok(())
        })
        .unwrap();
}

/// Vocabularies of LLaMA-3 (128256) and larger (262147: 256k and odd), and many rows (blocks
/// loop over rows).
#[test]
fn argmax_and_sample_large_vocabularies() {
    let Some(gpu) = gpu("argmax_and_sample_large_vocabularies") else { return };
    check_tokens::<bf16>(&gpu, 3, 128_256, 1, 4);
    check_tokens::<f16>(&gpu, 2, 262_147, 2, 4);
    check_tokens::<bf16>(&gpu, 1500, 40, 3, 2);
}

#[test]
fn argmax_ties_nan_and_no_candidates() {
    let Some(gpu) = gpu("argmax_ties_nan_and_no_candidates") else { return };
    let nan = f32::NAN;
    let rows: [[f32; 5]; 5] = [
        [1.0, 3.0, 3.0, -1.0, 3.0],
        [nan, f32::NEG_INFINITY, nan, f32::NEG_INFINITY, nan],
        [nan; 5],
        [-0.0, 0.0, -5.0, nan, 0.0],
        [nan, 2.0, f32::INFINITY, nan, f32::INFINITY],
    ];
    let l: Vec<f16> = rows.as_flattened().iter().map(|&v| f16::from_f32(v)).collect();
    let dl = gpu.upload(5, 5, &l).unwrap();
    let mut out = gpu.indices_with_capacity(5).unwrap();
    gpu.argmax(&dl, &mut out).unwrap();
    assert_eq!(gpu.download_indices(&out).unwrap(), [1, 1, NO_TOKEN, 0, 2]);
    // Sampling never draws NaN; a row without candidates gets NO_TOKEN too.
    gpu.sample(&dl, &SamplingParams::default(), 4, &mut out).unwrap();
    let got = gpu.download_indices(&out).unwrap();
    assert!([1, 2, 4].contains(&got[0]) && [1, 3].contains(&got[1]) && got[2] == NO_TOKEN, "{got:?}");
    assert!([0, 1, 2, 4].contains(&got[3]) && [2, 4].contains(&got[4]), "{got:?}");
}

/// The same (seed, step) gives the same tokens; other steps explore the distribution.
#[test]
fn sampling_is_deterministic_and_varies_with_the_step() {
    let Some(gpu) = gpu("sampling_is_deterministic_and_varies_with_the_step") else { return };
    let (rows, vocab) = (4, 8);
    let dl = gpu.upload(rows, vocab, &vec![bf16::ZERO; rows * vocab]).unwrap();
    let mut out = gpu.indices_with_capacity(rows).unwrap();
    let p = SamplingParams { seed: 42, ..Default::default() };
    let mut seen = vec![0u32; vocab];
    for step in 0..200 {
        gpu.sample(&dl, &p, step, &mut out).unwrap();
        let a = gpu.download_indices(&out).unwrap();
        gpu.sample(&dl, &p, step, &mut out).unwrap();
        assert_eq!(a, gpu.download_indices(&out).unwrap(), "step {step}");
        for t in a {
            seen[t as usize] += 1;
        }
    }
    // 800 uniform draws over 8 tokens: each about 100 (a missing one is a broken stream).
    assert!(seen.iter().all(|&c| (50..=150).contains(&c)), "{seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------------

fn shape_error(r: sparse_tc::Result<()>, names: &[&str]) {
    match r {
        Err(Error::Shape(m)) => assert!(names.iter().all(|n| m.contains(n)), "message {m:?} should name {names:?}"),
        r => panic!("expected a shape error naming {names:?}, got {r:?}"),
    }
}

fn invalid(r: sparse_tc::Result<()>, names: &[&str]) {
    match r {
        Err(Error::InvalidArgument(m)) => assert!(names.iter().all(|n| m.contains(n)), "message {m:?} should name {names:?}"),
        r => panic!("expected an invalid argument naming {names:?}, got {r:?}"),
    }
}

#[test]
fn operations_refuse_mismatched_shapes_and_bad_arguments() {
    let Some(gpu) = gpu("operations_refuse_mismatched_shapes_and_bad_arguments") else { return };
    let z = |r, c| gpu.zeros::<f16>(r, c).unwrap();
    let (x, w) = (z(4, 16), z(1, 16));
    let mut out = z(4, 16);
    shape_error(gpu.rms_norm(&x, &z(1, 15), 1e-5, &mut out), &["rms_norm", "weight", "1×16"]);
    shape_error(gpu.rms_norm(&x, &z(2, 16), 1e-5, &mut out), &["weight"]);
    shape_error(gpu.rms_norm(&x, &w, 1e-5, &mut z(4, 17)), &["out"]);
    invalid(gpu.rms_norm(&x, &w, -1.0, &mut out), &["eps"]);
    invalid(gpu.layer_norm(&x, &w, &w, f32::NAN, &mut out), &["eps"]);
    shape_error(gpu.layer_norm(&x, &w, &z(1, 3), 1e-5, &mut out), &["bias"]);
    let mut res = z(4, 16);
    shape_error(gpu.add_rms_norm(&mut res, &z(3, 16), &w, 1e-5, &mut out), &["delta", "residual"]);
    shape_error(gpu.add_layer_norm(&mut res, &x, &w, &z(16, 1), 1e-5, &mut out), &["bias"]);

    let mut acc = z(4, 16);
    shape_error(gpu.add_assign(&mut acc, &z(4, 15)), &["add_assign", "x"]);
    shape_error(gpu.add_bias(&mut acc, &z(1, 8)), &["bias"]);
    shape_error(gpu.silu_mul(&x, &z(4, 8), &mut out), &["up"]);
    shape_error(gpu.silu_mul(&x, &x, &mut z(5, 16)), &["out"]);

    let ids = gpu.upload_indices(&[0, 1, 2]).unwrap();
    shape_error(gpu.embed(&z(10, 16), &ids, 0, false, &mut out), &["ids", "out"]);
    shape_error(gpu.embed(&z(10, 15), &gpu.upload_indices(&[0; 4]).unwrap(), 0, false, &mut out), &["table", "out"]);
    shape_error(gpu.gather_rows(&x, &ids, &mut out), &["rows"]);

    let pos = gpu.upload_indices(&[0; 4]).unwrap();
    let mut q = z(4, 16);
    for hd in [0, 3, 6, 32, 4096] {
        shape_error(gpu.rope(&mut q, &pos, hd, 1e4, RopeStyle::HalfSplit), &["head_dim"]);
    }
    shape_error(gpu.rope(&mut q, &ids, 8, 1e4, RopeStyle::Interleaved), &["positions"]);
    for theta in [0.0, -1.0, f32::INFINITY, f32::NAN] {
        invalid(gpu.rope(&mut q, &pos, 8, theta, RopeStyle::HalfSplit), &["theta"]);
    }

    let mut small = gpu.indices_with_capacity(3).unwrap();
    shape_error(gpu.argmax(&x, &mut small), &["out"]);
    shape_error(gpu.sample(&x, &SamplingParams::default(), 0, &mut small), &["out"]);
    let mut toks = gpu.indices_with_capacity(4).unwrap();
    invalid(gpu.sample(&x, &SamplingParams { temperature: -1.0, ..Default::default() }, 0, &mut toks), &["temperature"]);
    invalid(gpu.sample(&x, &SamplingParams { top_p: 2.0, ..Default::default() }, 0, &mut toks), &["top_p"]);
}

/// Objects of another handle are refused by every operation, naming the operand.
#[test]
fn operations_refuse_objects_of_another_handle() {
    let Some(a) = gpu("operations_refuse_objects_of_another_handle") else { return };
    let b = Gpu::new().unwrap();
    let (xa, wa) = (a.zeros::<bf16>(2, 8).unwrap(), a.zeros::<bf16>(1, 8).unwrap());
    let (xb, wb) = (b.zeros::<bf16>(2, 8).unwrap(), b.zeros::<bf16>(1, 8).unwrap());
    let mut ob = b.zeros::<bf16>(2, 8).unwrap();
    let foreign = "another Gpu handle";
    invalid(b.rms_norm(&xa, &wb, 1e-5, &mut ob), &["rms_norm: x", foreign]);
    invalid(b.layer_norm(&xb, &wb, &wa, 1e-5, &mut ob), &["layer_norm: bias", foreign]);
    let mut rb = b.zeros::<bf16>(2, 8).unwrap();
    invalid(b.add_rms_norm(&mut rb, &xa, &wb, 1e-5, &mut ob), &["delta", foreign]);
    invalid(b.add_assign(&mut ob, &xa), &["add_assign: x", foreign]);
    invalid(b.add_bias(&mut ob, &wa), &["bias", foreign]);
    let mut oa = a.zeros::<bf16>(2, 8).unwrap();
    invalid(b.silu_mul(&xb, &xb, &mut oa), &["silu_mul: out", foreign]);
    invalid(b.relu(&mut oa), &["relu: x", foreign]);
    let (ia, ib) = (a.upload_indices(&[0, 0]).unwrap(), b.upload_indices(&[0, 0]).unwrap());
    invalid(b.embed(&xb, &ia, 0, false, &mut ob), &["embed: ids", foreign]);
    invalid(b.gather_rows(&xa, &ib, &mut ob), &["gather_rows: x", foreign]);
    let mut ra = a.zeros::<bf16>(2, 8).unwrap();
    invalid(b.rope(&mut ra, &ib, 8, 1e4, RopeStyle::HalfSplit), &["rope: x", foreign]);
    let mut ta = a.indices_with_capacity(2).unwrap();
    invalid(b.argmax(&xb, &mut ta), &["argmax: out", foreign]);
    invalid(b.sample(&xa, &SamplingParams::default(), 0, &mut b.indices_with_capacity(2).unwrap()), &["sample: logits", foreign]);
    // Each handle still works with its own objects.
    a.rms_norm(&xa, &wa, 1e-5, &mut oa).unwrap();
    b.rms_norm(&xb, &wb, 1e-5, &mut ob).unwrap();
    a.synchronize().unwrap();
    b.synchronize().unwrap();
}
