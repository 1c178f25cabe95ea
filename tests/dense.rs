//! Dense Tensor Core `linear` against the f64 CPU reference (GPU; skipped visibly without).

mod common;

use common::{assert_close, gpu, poison, random, Rng};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sparse_tc::layout::DENSE_CONFIGS;
use sparse_tc::{BlockShape, Element, Error, Gpu, LinearOptions};

/// A forced schedule: K splits, and how many row tiles stay whole (`None`: all split).
type Sched = Option<(usize, Option<usize>)>;

/// Runs one dense case: poisoned output, optional forced schedule, checked element-wise.
fn check_case<T: Element>(gpu: &Gpu, m: usize, k: usize, n: usize, sched: Sched, block: Option<BlockShape>, seed: u64) {
    let mut rng = Rng::new(seed);
    let w: Vec<T> = random(&mut rng, m * k);
    let x: Vec<T> = random(&mut rng, n * k);
    let dw = gpu.upload(m, k, &w).unwrap();
    let dx = gpu.upload(n, k, &x).unwrap();
    let mut y = gpu.zeros::<T>(n, m).unwrap();
    gpu.fill(&mut y, poison()).unwrap();
    let k_tiles = k.div_ceil(64);
    let splits = sched.map(|(s, _)| s.min(k_tiles));
    let unsplit_row_tiles = sched.and_then(|(_, u)| u);
    gpu.linear_into(&dx, &dw, &mut y, LinearOptions { splits, unsplit_row_tiles, block, ..Default::default() }).unwrap();
    let got = gpu.download(&y).unwrap();
    assert_close(&got, &x, &w, n, m, k);
}

type Case = (usize, usize, usize, Sched, Option<BlockShape>, u64);

/// A schedule strategy: automatic, every row tile split, or the first few whole and the
/// rest split (the schedule automatic planning picks for large layers).
pub fn schedules() -> impl Strategy<Value = Sched> {
    prop_oneof![Just(None), (1usize..5, prop_oneof![Just(None), (0usize..6).prop_map(Some)]).prop_map(Some)]
}

/// (m, k, n, schedule, block shape, seed): N = 1 often, forced schedules, every compiled
/// block shape.
fn shapes() -> impl Strategy<Value = Case> {
    let splits = schedules();
    let rt = (0..=DENSE_CONFIGS.len()).prop_map(|i| {
        DENSE_CONFIGS.get(i).map(|&(row_tiles, warp_m_tiles)| BlockShape { row_tiles, warp_m_tiles })
    });
    (1usize..300, 1usize..400, prop_oneof![Just(1usize), 1usize..80], splits, rt, any::<u64>())
}

#[test]
fn dense_f16_matches_reference_on_random_shapes() {
    let Some(gpu) = gpu("dense_f16_matches_reference_on_random_shapes") else { return };
    TestRunner::new(Config { cases: common::cases(48), ..Config::default() })
        .run(&shapes(), |(m, k, n, s, rt, seed)| {
            check_case::<f16>(&gpu, m, k, n, s, rt, seed);
            Ok(())
        })
        .unwrap();
}

#[test]
fn dense_bf16_matches_reference_on_random_shapes() {
    let Some(gpu) = gpu("dense_bf16_matches_reference_on_random_shapes") else { return };
    TestRunner::new(Config { cases: common::cases(32), ..Config::default() })
        .run(&shapes(), |(m, k, n, s, rt, seed)| {
            check_case::<bf16>(&gpu, m, k, n, s, rt, seed);
            Ok(())
        })
        .unwrap();
}

/// Tile edges and the largest token tile, including N > 64 (several grid slices).
#[test]
fn dense_edge_shapes() {
    let Some(gpu) = gpu("dense_edge_shapes") else { return };
    for &(m, k, n) in &[(1, 1, 1), (64, 64, 8), (65, 63, 9), (128, 1000, 64), (200, 130, 65), (70, 520, 130), (4096, 4096, 16)] {
        check_case::<f16>(&gpu, m, k, n, None, None, (m * 31 + k * 7 + n) as u64);
    }
    // Whole row tiles next to split ones, with a ragged last tile.
    for &(m, k, n, s, u) in &[(300, 700, 8, 3, 3), (64 * 5 + 1, 300, 33, 2, 4), (1000, 256, 1, 4, 0), (130, 640, 16, 5, 9)] {
        check_case::<f16>(&gpu, m, k, n, Some((s, Some(u))), None, (m + k + n) as u64);
    }
}

/// Split-K partials are reduced in a fixed order: two runs give identical bits, and every
/// split count agrees with the reference.
#[test]
fn dense_split_k_is_deterministic() {
    let Some(gpu) = gpu("dense_split_k_is_deterministic") else { return };
    let (m, k, n) = (256, 4096, 16);
    let mut rng = Rng::new(7);
    let w: Vec<f16> = random(&mut rng, m * k);
    let x: Vec<f16> = random(&mut rng, n * k);
    let dw = gpu.upload(m, k, &w).unwrap();
    let dx = gpu.upload(n, k, &x).unwrap();
    for splits in [1, 2, 3, 7, 16, 64] {
        let opts = LinearOptions { splits: Some(splits), ..Default::default() };
        let a = gpu.download(&gpu.linear_with(&dx, &dw, opts).unwrap()).unwrap();
        let b = gpu.download(&gpu.linear_with(&dx, &dw, opts).unwrap()).unwrap();
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "splits={splits} not deterministic");
        assert_close(&a, &x, &w, n, m, k);
    }
}

#[test]
fn dense_propagates_nan_and_inf() {
    let Some(gpu) = gpu("dense_propagates_nan_and_inf") else { return };
    let (m, k, n) = (70, 130, 3);
    let mut rng = Rng::new(3);
    let mut w: Vec<f16> = random(&mut rng, m * k);
    let mut x: Vec<f16> = random(&mut rng, n * k);
    x[5] = f16::NAN; // token 0 → all NaN
    x[k + 100] = f16::INFINITY; // token 1 → NaN or ±Inf
    w[3 * k + 7] = f16::INFINITY; // column 3 of token 2 → ±Inf
    let y = gpu.linear(&gpu.upload(n, k, &x).unwrap(), &gpu.upload(m, k, &w).unwrap()).unwrap();
    assert_close(&gpu.download(&y).unwrap(), &x, &w, n, m, k);
}

#[test]
fn dense_rejects_bad_shapes_and_options() {
    let Some(gpu) = gpu("dense_rejects_bad_shapes_and_options") else { return };
    let x = gpu.zeros::<f16>(4, 100).unwrap();
    let w = gpu.zeros::<f16>(50, 99).unwrap();
    assert!(matches!(gpu.linear(&x, &w), Err(Error::Shape(_))));
    let w = gpu.zeros::<f16>(50, 100).unwrap();
    let mut y = gpu.zeros::<f16>(4, 49).unwrap();
    assert!(matches!(gpu.linear_into(&x, &w, &mut y, LinearOptions::default()), Err(Error::Shape(_))));
    for s in [0, 3] {
        // 100 columns = 2 K tiles
        assert!(matches!(gpu.linear_with(&x, &w, LinearOptions { splits: Some(s), ..Default::default() }), Err(Error::InvalidArgument(_))));
    }
    for (row_tiles, warp_m_tiles) in [(0, 1), (3, 1), (1, 2), (4, 4)] {
        let block = Some(BlockShape { row_tiles, warp_m_tiles });
        assert!(matches!(gpu.linear_with(&x, &w, LinearOptions { block, ..Default::default() }), Err(Error::InvalidArgument(_))));
    }
    // Sparse-kernel knobs are refused for a dense weight.
    let sparse_only = [
        LinearOptions { ring_words: Some(2048), ..Default::default() },
        LinearOptions { l2_evict_first: Some(true), ..Default::default() },
        LinearOptions { blocks: Some(2), ..Default::default() },
    ];
    for opts in sparse_only {
        assert!(matches!(gpu.linear_with(&x, &w, opts), Err(Error::InvalidArgument(_))));
    }
    assert!(matches!(gpu.upload::<f16>(0, 5, &[]), Err(Error::Shape(_))));
    assert!(matches!(gpu.upload(2, 5, &[f16::ZERO; 9]), Err(Error::Shape(_))));
}
