//! Sparse (Tiled-CSL) Tensor Core `linear` against the f64 reference, the dense kernel and
//! the CPU SpMM (GPU; skipped visibly without).

mod common;

use common::{assert_close, gpu, poison, random, Rng};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sparse_tc::{cpu, BlockShape, Element, Error, Gpu, LinearOptions, SparseWeight};

/// Random weight where each entry survives with probability `1 - sparsity`.
fn sparse_random<T: Element>(rng: &mut Rng, m: usize, k: usize, sparsity: f64) -> Vec<T> {
    (0..m * k)
        .map(|_| {
            let keep = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 >= sparsity;
            let v = rng.uniform();
            T::from_f32(if keep { if v == 0.0 { 0.5 } else { v } } else { 0.0 })
        })
        .collect()
}

/// Runs the sparse kernel (plain and bank-reordered) on a poisoned output and checks it
/// against the reference, the CPU SpMM and the dense kernel.
fn check<T: Element>(gpu: &Gpu, w: &[T], m: usize, k: usize, x: &[T], n: usize) {
    check_with(gpu, w, m, k, x, n, Sched::Auto, LinearOptions::default())
}

/// The schedule of a check: automatic, every row tile split `s` ways along K (capped at the
/// K tiles), or the stream-K schedule with `R + f·(R·K − R)` blocks (`f` in 0..=1, R row
/// tiles of 256, K tiles of 64).
#[derive(Clone, Copy, Debug)]
enum Sched {
    Auto,
    Splits(usize),
    Blocks(f64),
}

/// The tuning knobs of a check: warp height (m16 tiles per warp), word ring, L2 hint.
fn knobs(warp_m_tiles: Option<usize>, ring_words: Option<usize>, l2_evict_first: Option<bool>) -> LinearOptions {
    let block = warp_m_tiles.map(|warp_m_tiles| BlockShape { row_tiles: 4, warp_m_tiles });
    LinearOptions { block, ring_words, l2_evict_first, ..Default::default() }
}

/// As [`check`] with a forced schedule and the tuning knobs of `opts`.
#[allow(clippy::too_many_arguments)]
fn check_with<T: Element>(gpu: &Gpu, w: &[T], m: usize, k: usize, x: &[T], n: usize, sched: Sched, opts: LinearOptions) {
    let mut sw = SparseWeight::from_dense(m, k, w).unwrap();
    let dx = gpu.upload(n, k, x).unwrap();
    let dense = gpu.download(&gpu.linear(&dx, &gpu.upload(m, k, w).unwrap()).unwrap()).unwrap();
    let cpu_y = cpu::linear_sparse(x, n, &sw).unwrap();
    for reorder in [false, true] {
        if reorder {
            sw.reorder_for_banks();
        }
        let dw = gpu.upload_sparse(&sw).unwrap();
        let mut y = gpu.zeros::<T>(n, m).unwrap();
        gpu.fill(&mut y, poison()).unwrap();
        let (r, kt) = (m.div_ceil(256), k.div_ceil(64));
        let (splits, blocks) = match sched {
            Sched::Auto => (None, None),
            Sched::Splits(s) => (Some(s.min(kt)), None),
            Sched::Blocks(f) => (None, Some(r + (f * (r * kt - r) as f64).round() as usize)),
        };
        gpu.linear_into(&dx, &dw, &mut y, LinearOptions { splits, blocks, ..opts }).unwrap();
        let got = gpu.download(&y).unwrap();
        assert_close(&got, x, w, n, m, k);
        assert_close(&cpu_y, x, w, n, m, k);
        if matches!(sched, Sched::Auto) {
            // Same tiles, same MMA code and (automatic) split: the sparse kernel equals the
            // dense one bit for bit, unless the two kernels' occupancy picked other splits.
            let same = got.iter().zip(&dense).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
            if same != got.len() {
                assert_close(&dense, x, w, n, m, k);
            }
        }
    }
}

#[test]
fn spmm_matches_reference_on_random_shapes_and_sparsities() {
    let Some(gpu) = gpu("spmm_matches_reference_on_random_shapes_and_sparsities") else { return };
    let sparsity = prop_oneof![Just(0.0), Just(0.5), Just(0.7), Just(0.8), Just(0.9), Just(0.99), Just(1.0), 0.0f64..1.0];
    let splits = prop_oneof![Just(Sched::Auto), (1usize..5).prop_map(Sched::Splits), (0.0f64..=1.0).prop_map(Sched::Blocks)];
    let warp_m = prop_oneof![Just(None), Just(Some(2)), Just(Some(4))];
    // Rings of 1024 words take a tile of > 6.25% density in several chunks.
    let ring = prop_oneof![Just(None), Just(Some(1024)), Just(Some(2048)), Just(Some(12288))];
    let evict = prop_oneof![Just(None), Just(Some(false))];
    let knob = (warp_m, ring, evict);
    let strategy = (1usize..600, 1usize..400, prop_oneof![Just(1usize), 1usize..130], sparsity, splits, knob, any::<u64>());
    TestRunner::new(Config { cases: common::cases(64), ..Config::default() })
        .run(&strategy, |(m, k, n, s, splits, (warp_m, ring, evict), seed)| {
            let mut rng = Rng::new(seed);
            let w: Vec<f16> = sparse_random(&mut rng, m, k, s);
            let x: Vec<f16> = random(&mut rng, n * k);
            // 4 m16 tiles per warp are compiled up to 32 tokens only
            let warp_m = warp_m.filter(|&mt| mt < 4 || n <= 32);
            check_with(&gpu, &w, m, k, &x, n, splits, knobs(warp_m, ring, evict));
            Ok(())
        })
        .unwrap();
}

#[test]
fn spmm_bf16_matches_reference() {
    let Some(gpu) = gpu("spmm_bf16_matches_reference") else { return };
    TestRunner::new(Config { cases: common::cases(24), ..Config::default() })
        .run(&(1usize..200, 1usize..300, 1usize..70, 0.0f64..1.0, any::<u64>()), |(m, k, n, s, seed)| {
            let mut rng = Rng::new(seed);
            let w: Vec<bf16> = sparse_random(&mut rng, m, k, s);
            let x: Vec<bf16> = random(&mut rng, n * k);
            check(&gpu, &w, m, k, &x, n);
            Ok(())
        })
        .unwrap();
}

/// Non-uniform sparsity: empty rows, empty tiles, fully dense 256×64 tiles (16384 words = two
/// full chunks of the 8192-word ring, 16 of a 1024-word one), 75% tiles (a full chunk and a
/// partial one) next to empty and half-dense ones (about one chunk), one nonzero in a corner.
#[test]
fn spmm_non_uniform_density() {
    let Some(gpu) = gpu("spmm_non_uniform_density") else { return };
    let (m, k, n) = (600, 330, 17);
    let mut rng = Rng::new(11);
    let mut w = vec![f16::ZERO; m * k];
    for r in 0..m {
        for c in 0..k {
            let (tr, tc) = (r / 256, c / 64);
            let v = f16::from_f32(rng.uniform() + 1.5);
            let dense_tile = (tr + tc) % 4 == 0; // 100% dense
            let half_tile = (tr + tc) % 4 == 1 && (r + c) % 2 == 0; // 50%
            let three_quarter_tile = (tr + tc) % 4 == 2 && (r + c) % 4 != 0; // 75%
            let empty_row = r % 7 == 3;
            if (dense_tile || half_tile || three_quarter_tile) && !empty_row {
                w[r * k + c] = v;
            }
        }
    }
    w[(m - 1) * k + k - 1] = f16::from_f32(2.0);
    let x: Vec<f16> = random(&mut rng, n * k);
    for splits in [Sched::Auto, Sched::Splits(1), Sched::Splits(2), Sched::Splits(6), Sched::Blocks(0.37), Sched::Blocks(1.0)] {
        for warp_m in [None, Some(2), Some(4)] {
            check_with(&gpu, &w, m, k, &x, n, splits, knobs(warp_m, None, None));
        }
        for ring in [1024, 3072, 20480] {
            check_with(&gpu, &w, m, k, &x, n, splits, knobs(None, Some(ring), Some(false)));
        }
    }
}

#[test]
fn spmm_propagates_nan_and_inf_like_dense_math() {
    let Some(gpu) = gpu("spmm_propagates_nan_and_inf_like_dense_math") else { return };
    let (m, k, n) = (130, 200, 4);
    let mut rng = Rng::new(5);
    let mut w: Vec<f16> = sparse_random(&mut rng, m, k, 0.9);
    let mut x: Vec<f16> = random(&mut rng, n * k);
    x[17] = f16::NAN;
    x[k + 150] = f16::INFINITY; // meets pruned zeros → NaN, as in dense math
    w[5 * k + 9] = f16::NEG_INFINITY;
    check(&gpu, &w, m, k, &x, n);
}

/// Split-K results are bit-identical run to run.
#[test]
fn spmm_is_deterministic() {
    let Some(gpu) = gpu("spmm_is_deterministic") else { return };
    let (m, k, n) = (300, 5000, 32);
    let mut rng = Rng::new(9);
    let w: Vec<f16> = sparse_random(&mut rng, m, k, 0.8);
    let x: Vec<f16> = random(&mut rng, n * k);
    let dw = gpu.upload_sparse(&SparseWeight::from_dense(m, k, &w).unwrap()).unwrap();
    let dx = gpu.upload(n, k, &x).unwrap();
    // Splits, and stream-K ranges of 158 tiles over 7 and 61 blocks (row tiles cut mid-way).
    let schedules = [(None, None), (Some(5), None), (Some(40), None), (None, Some(7)), (None, Some(61))];
    for (splits, blocks) in schedules {
        let opts = LinearOptions { splits, blocks, ..Default::default() };
        let a = gpu.download(&gpu.linear_with(&dx, &dw, opts).unwrap()).unwrap();
        let b = gpu.download(&gpu.linear_with(&dx, &dw, opts).unwrap()).unwrap();
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        assert_close(&a, &x, &w, n, m, k);
    }
}

/// Launches queued back to back, with no synchronisation between them, each with another
/// stream-K schedule or token count: every split launch's reduction waits only for the
/// completion flags its own SpMM blocks set (`gpu::flag`), so a flag an earlier launch left
/// at the same position must never be taken for this launch's.
#[test]
fn spmm_back_to_back_launches_do_not_mix_schedules() {
    let Some(gpu) = gpu("spmm_back_to_back_launches_do_not_mix_schedules") else { return };
    let (m, k) = (700, 3000);
    let mut rng = Rng::new(17);
    let w: Vec<f16> = sparse_random(&mut rng, m, k, 0.7);
    let dw = gpu.upload_sparse(&SparseWeight::from_dense(m, k, &w).unwrap()).unwrap();
    // (tokens, blocks): 3 row tiles × 47 K tiles; 70 tokens take two token tiles of 64.
    let runs = [(32, 141), (8, 5), (70, 40), (32, 7), (16, 141), (1, 100), (70, 3), (32, 64)];
    let xs: Vec<Vec<f16>> = runs.iter().map(|&(n, _)| random(&mut rng, n * k)).collect();
    let dxs: Vec<_> = runs.iter().zip(&xs).map(|(&(n, _), x)| gpu.upload(n, k, x).unwrap()).collect();
    let mut ys: Vec<_> = runs.iter().map(|&(n, _)| gpu.zeros::<f16>(n, m).unwrap()).collect();
    for y in &mut ys {
        gpu.fill(y, poison()).unwrap();
    }
    gpu.synchronize().unwrap();
    for _round in 0..3 {
        for ((&(_, blocks), dx), y) in runs.iter().zip(&dxs).zip(&mut ys) {
            gpu.linear_into(dx, &dw, y, LinearOptions { blocks: Some(blocks), ..Default::default() }).unwrap();
        }
    }
    for ((&(n, _), x), y) in runs.iter().zip(&xs).zip(&ys) {
        assert_close(&gpu.download(y).unwrap(), x, &w, n, m, k);
    }
}

#[test]
fn spmm_rejects_shape_mismatch() {
    let Some(gpu) = gpu("spmm_rejects_shape_mismatch") else { return };
    let sw = SparseWeight::<f16>::from_dense(10, 20, &[f16::ZERO; 200]).unwrap();
    let dw = gpu.upload_sparse(&sw).unwrap();
    let x = gpu.zeros::<f16>(3, 21).unwrap();
    assert!(matches!(gpu.linear(&x, &dw), Err(Error::Shape(_))));
    let x = gpu.zeros::<f16>(40, 20).unwrap();
    for (row_tiles, warp_m_tiles) in [(1, 2), (4, 1), (4, 3), (4, 4)] {
        // (4, 4) is compiled only up to 32 tokens
        let block = Some(BlockShape { row_tiles, warp_m_tiles });
        assert!(matches!(gpu.linear_with(&x, &dw, LinearOptions { block, ..Default::default() }), Err(Error::InvalidArgument(_))));
    }
    // Rings: multiples of 128 words from 1024 on, within the device's shared memory.
    for ring_words in [0, 128, 1000, 1 << 20] {
        let opts = LinearOptions { ring_words: Some(ring_words), ..Default::default() };
        assert!(matches!(gpu.linear_with(&x, &dw, opts), Err(Error::InvalidArgument(_))));
    }
    // Blocks: between the 1 row tile and the 1 tile of this 10×20 weight, not with splits;
    // unsplit_row_tiles is a dense-kernel option.
    let bad = [
        LinearOptions { blocks: Some(0), ..Default::default() },
        LinearOptions { blocks: Some(2), ..Default::default() },
        LinearOptions { blocks: Some(1), splits: Some(1), ..Default::default() },
        LinearOptions { splits: Some(1), unsplit_row_tiles: Some(0), ..Default::default() },
    ];
    for opts in bad {
        assert!(matches!(gpu.linear_with(&x, &dw, opts), Err(Error::InvalidArgument(_))));
    }
}
