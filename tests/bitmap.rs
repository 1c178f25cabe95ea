//! The bitmap-format Tensor Core `linear` (`gpu/src/kernels/bitmap.rs`) against the f64
//! reference, the bitmap CPU SpMM and the dense kernel (GPU; skipped visibly without).
//!
//! Tolerance: `common::assert_close`, the bound of every f32-accumulating kernel here. The
//! bitmap kernel multiplies exactly the products of the dense one (16-bit × 16-bit, exact in
//! f32; pruned entries are zeros in the A fragments), accumulates them in f32 on the Tensor
//! Cores per 256×64 panel and, when a row tile is split among blocks, sums the f32 partial
//! sums in block order (`streamk_reduce`): K products summed in f32 in some order, so
//! `γ_K·Σ|x·w|` (allowed 4× for the Tensor Cores' truncating adds) plus the final rounding
//! to the element type, `u·|y|`, and half the f16 subnormal spacing.

mod common;

use common::{assert_close, gpu, poison, random, Rng};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sparse_tc::sparse::bitmap::linear_bitmap;
use sparse_tc::sparse::{FormatChoice, SparseFormat};
use sparse_tc::{BitmapWeight, BlockShape, Element, Error, Gpu, LinearOptions, SparseWeight};

/// A weight whose 8×8 blocks are, at random, empty, full, a single entry or random at
/// density `1 − sparsity` (dense blocks next to empty ones).
fn blocky<T: Element>(rng: &mut Rng, m: usize, k: usize, sparsity: f64) -> Vec<T> {
    let bk = k.div_ceil(8);
    let kinds: Vec<u64> = (0..m.div_ceil(8) * bk).map(|_| rng.next_u64() % 4).collect();
    let mut w = vec![T::from_f32(0.0); m * k];
    for r in 0..m {
        for c in 0..k {
            let keep = match kinds[(r / 8) * bk + c / 8] {
                0 => false,
                1 => true,
                2 => r % 8 == 7 && c % 8 == 2,
                _ => (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 >= sparsity,
            };
            if keep {
                let v = rng.uniform();
                w[r * k + c] = T::from_f32(if v == 0.0 { 0.5 } else { v });
            }
        }
    }
    w
}

/// A weight whose entries survive independently with probability `1 − sparsity`.
fn uniform<T: Element>(rng: &mut Rng, m: usize, k: usize, sparsity: f64) -> Vec<T> {
    (0..m * k)
        .map(|_| {
            let keep = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 >= sparsity;
            let v = rng.uniform();
            T::from_f32(if keep { if v == 0.0 { 0.5 } else { v } } else { 0.0 })
        })
        .collect()
}

/// How a check schedules the kernel: automatically, `s` K splits per row tile, or the
/// stream-K schedule with `R + f·(R·K − R)` blocks.
#[derive(Clone, Copy, Debug)]
enum Sched {
    Auto,
    Splits(usize),
    Blocks(f64),
}

/// Runs the bitmap kernel on a poisoned output, uploaded both directly and through
/// `upload_sparse_as`, and checks it against the reference, the CPU SpMM and (bit for bit
/// when the schedules agree, else within the bound) the dense kernel.
fn check<T: Element>(gpu: &Gpu, w: &[T], m: usize, k: usize, x: &[T], n: usize, sched: Sched, warp_m: Option<usize>) {
    let bw = BitmapWeight::from_dense(m, k, w).unwrap();
    let cpu_y = linear_bitmap(x, n, &bw).unwrap();
    assert_close(&cpu_y, x, w, n, m, k);
    let dx = gpu.upload(n, k, x).unwrap();
    let via_csl = gpu.upload_sparse_as(&SparseWeight::from_dense(m, k, w).unwrap(), FormatChoice::Is(SparseFormat::Bitmap)).unwrap();
    for dw in [gpu.upload_bitmap(&bw).unwrap(), via_csl] {
        assert_eq!(dw.format(), SparseFormat::Bitmap);
        let (r, kt) = (m.div_ceil(256), k.div_ceil(64));
        let (splits, blocks) = match sched {
            Sched::Auto => (None, None),
            Sched::Splits(s) => (Some(s.min(kt)), None),
            Sched::Blocks(f) => (None, Some(r + (f * (r * kt - r) as f64).round() as usize)),
        };
        let block = warp_m.map(|warp_m_tiles| BlockShape { row_tiles: 4, warp_m_tiles });
        let mut y = gpu.zeros::<T>(n, m).unwrap();
        gpu.fill(&mut y, poison()).unwrap();
        gpu.linear_into(&dx, &dw, &mut y, LinearOptions { splits, blocks, block, ..Default::default() }).unwrap();
        assert_close(&gpu.download(&y).unwrap(), x, w, n, m, k);
    }
}

#[test]
fn bitmap_matches_reference_on_random_shapes_and_densities() {
    let Some(gpu) = gpu("bitmap_matches_reference_on_random_shapes_and_densities") else { return };
    let sparsity = prop_oneof![Just(0.0), Just(0.5), Just(0.7), Just(0.8), Just(0.9), Just(0.99), Just(1.0), 0.0f64..1.0];
    let sched = prop_oneof![Just(Sched::Auto), (1usize..5).prop_map(Sched::Splits), (0.0f64..=1.0).prop_map(Sched::Blocks)];
    let warp_m = prop_oneof![Just(None), Just(Some(2)), Just(Some(4))];
    let strategy = (1usize..700, 1usize..400, prop_oneof![Just(1usize), 1usize..140], sparsity, sched, warp_m, any::<bool>(), any::<u64>());
    TestRunner::new(Config { cases: common::cases(64), ..Config::default() })
        .run(&strategy, |(m, k, n, s, sched, warp_m, blocks, seed)| {
            let mut rng = Rng::new(seed);
            let w: Vec<f16> = if blocks { blocky(&mut rng, m, k, s) } else { uniform(&mut rng, m, k, s) };
            let x: Vec<f16> = random(&mut rng, n * k);
            let warp_m = warp_m.filter(|&mt| mt < 4 || n <= 32);
            check(&gpu, &w, m, k, &x, n, sched, warp_m);
            Ok(())
        })
        .unwrap();
}

#[test]
fn bitmap_bf16_matches_reference() {
    let Some(gpu) = gpu("bitmap_bf16_matches_reference") else { return };
    TestRunner::new(Config { cases: common::cases(24), ..Config::default() })
        .run(&(1usize..300, 1usize..300, 1usize..70, 0.0f64..1.0, any::<u64>()), |(m, k, n, s, seed)| {
            let mut rng = Rng::new(seed);
            let w: Vec<bf16> = blocky(&mut rng, m, k, s);
            let x: Vec<bf16> = random(&mut rng, n * k);
            check(&gpu, &w, m, k, &x, n, Sched::Auto, None);
            Ok(())
        })
        .unwrap();
}

/// Fully dense panels (4 tiles of 8736 bytes, the largest slot) next to empty ones and
/// single entries, a partial last panel row (600 rows: 10 tile rows, the last panel 2 high)
/// and a partial last column.
#[test]
fn bitmap_non_uniform_density() {
    let Some(gpu) = gpu("bitmap_non_uniform_density") else { return };
    let (m, k, n) = (600, 330, 17);
    let mut rng = Rng::new(11);
    let mut w = vec![f16::ZERO; m * k];
    for r in 0..m {
        for c in 0..k {
            let kind = (r / 256 + c / 64) % 4;
            let keep = kind == 0 || (kind == 1 && (r + c) % 2 == 0) || (kind == 2 && (r + c) % 4 != 0);
            if keep && r % 7 != 3 {
                w[r * k + c] = f16::from_f32(rng.uniform() + 1.5);
            }
        }
    }
    w[(m - 1) * k + k - 1] = f16::from_f32(2.0);
    let x: Vec<f16> = random(&mut rng, n * k);
    for sched in [Sched::Auto, Sched::Splits(1), Sched::Splits(2), Sched::Splits(6), Sched::Blocks(0.37), Sched::Blocks(1.0)] {
        for warp_m in [None, Some(2), Some(4)] {
            check(&gpu, &w, m, k, &x, n, sched, warp_m);
        }
    }
}

#[test]
fn bitmap_propagates_nan_and_inf_like_dense_math() {
    let Some(gpu) = gpu("bitmap_propagates_nan_and_inf_like_dense_math") else { return };
    let (m, k, n) = (130, 200, 4);
    let mut rng = Rng::new(5);
    let mut w: Vec<f16> = blocky(&mut rng, m, k, 0.9);
    let mut x: Vec<f16> = random(&mut rng, n * k);
    x[17] = f16::NAN;
    x[k + 150] = f16::INFINITY; // meets pruned zeros → NaN, as in dense math
    w[5 * k + 9] = f16::NEG_INFINITY;
    check(&gpu, &w, m, k, &x, n, Sched::Auto, None);
}

/// Bit-identical results run to run, for every schedule.
#[test]
fn bitmap_is_deterministic() {
    let Some(gpu) = gpu("bitmap_is_deterministic") else { return };
    let (m, k, n) = (300, 5000, 32);
    let mut rng = Rng::new(9);
    let w: Vec<f16> = blocky(&mut rng, m, k, 0.6);
    let x: Vec<f16> = random(&mut rng, n * k);
    let dw = gpu.upload_bitmap(&BitmapWeight::from_dense(m, k, &w).unwrap()).unwrap();
    let dx = gpu.upload(n, k, &x).unwrap();
    for (splits, blocks) in [(None, None), (Some(5), None), (Some(40), None), (None, Some(7)), (None, Some(61))] {
        let opts = LinearOptions { splits, blocks, ..Default::default() };
        let a = gpu.download(&gpu.linear_with(&dx, &dw, opts).unwrap()).unwrap();
        let b = gpu.download(&gpu.linear_with(&dx, &dw, opts).unwrap()).unwrap();
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        assert_close(&a, &x, &w, n, m, k);
    }
}

/// Bitmap and Tiled-CSL launches queued back to back with other schedules share the
/// completion flags and the workspace without mixing them up.
#[test]
fn bitmap_and_tiled_csl_back_to_back() {
    let Some(gpu) = gpu("bitmap_and_tiled_csl_back_to_back") else { return };
    let (m, k) = (700, 3000);
    let mut rng = Rng::new(17);
    let w: Vec<f16> = blocky(&mut rng, m, k, 0.7);
    let sw = SparseWeight::from_dense(m, k, &w).unwrap();
    let weights = [
        gpu.upload_sparse_as(&sw, FormatChoice::Is(SparseFormat::Bitmap)).unwrap(),
        gpu.upload_sparse(&sw).unwrap(),
    ];
    let runs = [(32, 141), (8, 5), (70, 40), (32, 7), (16, 141), (1, 100), (70, 3), (32, 64)];
    let xs: Vec<Vec<f16>> = runs.iter().map(|&(n, _)| random(&mut rng, n * k)).collect();
    let dxs: Vec<_> = runs.iter().zip(&xs).map(|(&(n, _), x)| gpu.upload(n, k, x).unwrap()).collect();
    let mut ys: Vec<_> = runs.iter().map(|&(n, _)| gpu.zeros::<f16>(n, m).unwrap()).collect();
    for y in &mut ys {
        gpu.fill(y, poison()).unwrap();
    }
    gpu.synchronize().unwrap();
    for round in 0..3 {
        for (i, ((&(_, blocks), dx), y)) in runs.iter().zip(&dxs).zip(&mut ys).enumerate() {
            let dw = &weights[(i + round) % 2];
            gpu.linear_into(dx, dw, y, LinearOptions { blocks: Some(blocks), ..Default::default() }).unwrap();
        }
    }
    for ((&(n, _), x), y) in runs.iter().zip(&xs).zip(&ys) {
        assert_close(&gpu.download(y).unwrap(), x, &w, n, m, k);
    }
}

#[test]
fn bitmap_rejects_bad_options_and_shapes() {
    let Some(gpu) = gpu("bitmap_rejects_bad_options_and_shapes") else { return };
    let bw = BitmapWeight::<f16>::from_dense(10, 20, &[f16::ZERO; 200]).unwrap();
    let dw = gpu.upload_bitmap(&bw).unwrap();
    assert!(matches!(gpu.linear(&gpu.zeros::<f16>(3, 21).unwrap(), &dw), Err(Error::Shape(_))));
    let x = gpu.zeros::<f16>(40, 20).unwrap();
    let bad = [
        LinearOptions { ring_words: Some(4096), ..Default::default() },
        LinearOptions { blocks: Some(2), ..Default::default() },
        LinearOptions { block: Some(BlockShape { row_tiles: 4, warp_m_tiles: 4 }), ..Default::default() },
    ];
    for opts in bad {
        assert!(matches!(gpu.linear_with(&x, &dw, opts), Err(Error::InvalidArgument(_))), "{opts:?}");
    }
    // An all-zero weight and X give zeros.
    let y = gpu.download(&gpu.linear(&x, &dw).unwrap()).unwrap();
    assert!(y.iter().all(|v| v.to_bits() == 0));
}
