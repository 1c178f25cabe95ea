//! Issue 17: no input through the safe API may cause undefined behaviour, a hang or a GPU
//! fault. These tests call the public API the way a hostile user would: option values that
//! used to make the host's size arithmetic wrap, shapes whose products overflow, token counts
//! beyond one launch grid. GPU tests print SKIPPED without a GPU; the host-only ones (and the
//! unit tests of `plan` and `checked` in the library, and `tests/fuzz_sparse_file.rs`) run
//! everywhere.

mod common;

use common::{assert_close, gpu, random, Rng};
use half::f16;
use sparse_tc::{cpu, Error, Gpu, LinearOptions, SparseWeight};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Tokens one launch covers at most (65535 token tiles of 64, the grid's y limit); more are
/// computed in several launches.
const SLICE_TOKENS: usize = 65535 * 64;

/// The message of an `Err(Error::InvalidArgument)`.
fn invalid<T>(r: sparse_tc::Result<T>, what: &str) -> String {
    match r {
        Err(Error::InvalidArgument(m)) => m,
        Err(e) => panic!("{what}: expected InvalidArgument, got {e:?}"),
        Ok(_) => panic!("{what}: expected InvalidArgument, got Ok"),
    }
}

/// The message of an `Err(Error::Shape)`.
fn shape<T>(r: sparse_tc::Result<T>, what: &str) -> String {
    match r {
        Err(Error::Shape(m)) => m,
        Err(e) => panic!("{what}: expected Shape, got {e:?}"),
        Ok(_) => panic!("{what}: expected Shape, got Ok"),
    }
}

/// A random weight with about `density` of its entries nonzero.
fn weight(rng: &mut Rng, m: usize, k: usize, density: f64) -> Vec<f16> {
    (0..m * k)
        .map(|_| {
            let keep = ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < density;
            let v = rng.uniform();
            f16::from_f32(if keep { if v == 0.0 { 0.5 } else { v } } else { 0.0 })
        })
        .collect()
}

// ---- Host only. ----

#[test]
fn sparse_constructors_refuse_shapes_whose_sizes_overflow() {
    let d = [f16::ONE; 4];
    for (rows, cols) in [(usize::MAX, 2), (1 << 32, 1 << 32), (usize::MAX, usize::MAX), (3, usize::MAX / 2)] {
        let m = shape(SparseWeight::from_dense(rows, cols, &d), "from_dense");
        assert!(m.contains("rows × cols") && m.contains(&rows.to_string()), "{m}");
        let m = shape(SparseWeight::prune_magnitude(rows, cols, &d, 0.5), "prune_magnitude");
        assert!(m.contains("rows × cols"), "{m}");
        let m = shape(SparseWeight::<f16>::from_parts(rows, cols, vec![0, 0], vec![], false), "from_parts");
        assert!(m.contains("rows × cols"), "{m}");
    }
    // rows × cols fits, but the tile grid (2⁵⁸ tiles) is refused by the offsets length
    // without allocating anything of that size.
    let r = SparseWeight::<f16>::from_parts(1, usize::MAX, vec![0, 0], vec![], false);
    assert!(matches!(r, Err(Error::Format(ref m)) if m.contains("tile_offsets has 2 entries")), "{r:?}");
    // The CPU path: n × k that overflows is a shape error, not a wrapped length.
    let w = SparseWeight::<f16>::from_dense(2, 2, &d).unwrap();
    for n in [usize::MAX, usize::MAX / 2 + 1] {
        assert!(matches!(cpu::linear_sparse(&[], n, &w), Err(Error::Shape(_))));
    }
}

#[test]
fn sparse_files_whose_length_disagrees_with_the_header_are_refused() {
    let mut rng = Rng::new(5);
    let w = SparseWeight::from_dense(300, 130, &weight(&mut rng, 300, 130, 0.3)).unwrap();
    let mut bytes = Vec::new();
    w.save(&mut bytes).unwrap();
    let dir = std::env::temp_dir().join(format!("sparse_tc_safety_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.stcw");
    let load = |b: &[u8]| {
        std::fs::write(&path, b).unwrap();
        SparseWeight::<f16>::load_file(&path)
    };
    assert_eq!(load(&bytes).unwrap(), w);
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 4]);
    for (b, what) in [(&bytes[..bytes.len() - 4], "truncated"), (&longer[..], "trailing bytes")] {
        match load(b) {
            Err(Error::Format(m)) => assert!(m.contains(what) && m.contains("the header describes"), "{m}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

// ---- GPU. ----

/// A 512×1024 weight at 60% density (2 row tiles of 256, 16 K tiles: 32 tiles), its sparse
/// form on the device, and 16 tokens.
struct Case {
    w: Vec<f16>,
    x: Vec<f16>,
    dw: sparse_tc::DeviceSparseWeight<f16>,
    dx: sparse_tc::DeviceMatrix<f16>,
    ww: sparse_tc::DeviceMatrix<f16>,
}

const M: usize = 512;
const K: usize = 1024;
const N: usize = 16;

fn case(gpu: &Gpu, density: f64) -> Case {
    let mut rng = Rng::new(17);
    let w = weight(&mut rng, M, K, density);
    let x: Vec<f16> = random(&mut rng, N * K);
    let dw = gpu.upload_sparse(&SparseWeight::from_dense(M, K, &w).unwrap()).unwrap();
    let dx = gpu.upload(N, K, &x).unwrap();
    let ww = gpu.upload(M, K, &w).unwrap();
    Case { w, x, dw, dx, ww }
}

impl Case {
    /// Runs the sparse kernel with `opts` and checks the result.
    fn sparse_ok(&self, gpu: &Gpu, opts: LinearOptions) {
        let y = gpu.linear_with(&self.dx, &self.dw, opts).unwrap_or_else(|e| panic!("{opts:?}: {e}"));
        assert_close(&gpu.download(&y).unwrap(), &self.x, &self.w, N, M, K);
    }
    fn dense_ok(&self, gpu: &Gpu, opts: LinearOptions) {
        let y = gpu.linear_with(&self.dx, &self.ww, opts).unwrap_or_else(|e| panic!("{opts:?}: {e}"));
        assert_close(&gpu.download(&y).unwrap(), &self.x, &self.w, N, M, K);
    }
}

/// `ring_words` values whose size arithmetic used to wrap (2⁶²: the kernel got a ring of 0
/// words and looped forever; 2⁶² − 8192: a ring of 2³² − 8192 words in 8 KiB of shared
/// memory, IllegalAddress; 2⁶² + 1024: silently 1024) and their neighbours.
const WRAPPING_RINGS: [usize; 10] = [
    1 << 62,
    (1 << 62) - 8192,
    (1 << 62) + 1024,
    (1 << 32) + 1024,
    usize::MAX,
    usize::MAX / 4,
    usize::MAX / 4 / 128 * 128,
    usize::MAX / 128 * 128,
    (1 << 63) + 1024,
    (3 << 62) + 2048,
];

#[test]
fn ring_words_that_used_to_wrap_are_refused() {
    let Some(gpu) = gpu("ring_words_that_used_to_wrap_are_refused") else { return };
    let c = case(&gpu, 0.6);
    for r in WRAPPING_RINGS {
        let m = invalid(gpu.linear_with(&c.dx, &c.dw, LinearOptions { ring_words: Some(r), ..Default::default() }), "ring");
        assert!(m.contains(&format!("ring_words = {r}")) && m.contains("multiple of 128 in 1024..="), "{m}");
    }
    // Nothing was launched: the handle still computes correctly, with the smallest ring too.
    c.sparse_ok(&gpu, LinearOptions { ring_words: Some(1024), ..Default::default() });
    c.sparse_ok(&gpu, LinearOptions::default());
}

#[test]
fn blocks_and_splits_at_integer_limits_are_refused() {
    let Some(gpu) = gpu("blocks_and_splits_at_integer_limits_are_refused") else { return };
    let c = case(&gpu, 0.3);
    for b in [0, 1, 33, u32::MAX as usize, u32::MAX as usize + 1, (1 << 32) + 2, 1 << 31, usize::MAX, usize::MAX / 2] {
        let m = invalid(gpu.linear_with(&c.dx, &c.dw, LinearOptions { blocks: Some(b), ..Default::default() }), "blocks");
        assert!(m.contains(&format!("blocks = {b}")) && m.contains("2..=32"), "{m}");
    }
    for s in [0, 17, u32::MAX as usize, (1 << 32) + 1, usize::MAX] {
        let opts = LinearOptions { splits: Some(s), ..Default::default() };
        let m = invalid(gpu.linear_with(&c.dx, &c.dw, opts), "sparse splits");
        assert!(m.contains(&format!("splits = {s}")) && m.contains("1..=16"), "{m}");
        let m = invalid(gpu.linear_with(&c.dx, &c.ww, opts), "dense splits");
        assert!(m.contains(&format!("splits = {s}")) && m.contains("1..=16"), "{m}");
    }
    // The extremes that are valid compute the right result: one tile per block, one block
    // per row tile, every K tile its own split, and more whole row tiles than exist (all).
    for b in [2, 3, 31, 32] {
        c.sparse_ok(&gpu, LinearOptions { blocks: Some(b), ..Default::default() });
    }
    c.sparse_ok(&gpu, LinearOptions { splits: Some(16), ..Default::default() });
    c.dense_ok(&gpu, LinearOptions { splits: Some(16), ..Default::default() });
    for u in [7, 8, 9, u32::MAX as usize + 1, usize::MAX] {
        c.dense_ok(&gpu, LinearOptions { splits: Some(16), unsplit_row_tiles: Some(u), ..Default::default() });
    }
}

#[test]
fn uploads_whose_sizes_overflow_are_refused() {
    let Some(gpu) = gpu("uploads_whose_sizes_overflow_are_refused") else { return };
    let max = i32::MAX as usize;
    for (rows, cols, what) in [
        (usize::MAX, 2, "rows = 18446744073709551615"),
        (1 << 31, 1, "rows = 2147483648"),
        (1, 1 << 31, "cols = 2147483648"),
        (usize::MAX, usize::MAX, "rows"),
        (0, 5, "rows = 0"),
    ] {
        let m = shape(gpu.upload::<f16>(rows, cols, &[]), "upload");
        assert!(m.contains(what) && m.contains("1..=2147483647"), "{m}");
        let m = shape(gpu.zeros::<f16>(rows, cols), "zeros");
        assert!(m.contains(what), "{m}");
    }
    // Each dimension in range, the product far beyond any data given.
    let m = shape(gpu.upload::<f16>(max, max, &[f16::ONE; 3]), "upload");
    assert!(m.contains(&format!("needs {} elements, got 3", max * max)), "{m}");
    // 8 EiB of device memory: a driver error (out of memory), not a wrapped size.
    assert!(matches!(gpu.zeros::<f16>(max, max), Err(Error::Driver { .. })));
    // A sparse weight taller than the kernels index (2²³ row tiles, offsets only).
    let tall = SparseWeight::<f16>::from_parts(1 << 31, 1, vec![0; (1 << 23) + 1], vec![], false).unwrap();
    let m = shape(gpu.upload_sparse(&tall), "upload_sparse");
    assert!(m.contains("rows = 2147483648"), "{m}");
}

/// More tokens than one launch grid holds (65535 token tiles of 64): computed in several
/// launches, the last with its own token tile; checked on the tokens at the slice boundary
/// and a sample of the others. Before, grid y = 65536+ token tiles was a driver error.
#[test]
fn token_counts_beyond_one_launch_grid() {
    let Some(gpu) = gpu("token_counts_beyond_one_launch_grid") else { return };
    if std::env::var_os("SPARSE_TC_SANITIZER").is_some() {
        println!("SKIPPED token_counts_beyond_one_launch_grid: too slow under compute-sanitizer");
        return;
    }
    let (n, m, k) = (SLICE_TOKENS + 3, 40, 128);
    let mut rng = Rng::new(23);
    let w = weight(&mut rng, m, k, 0.4);
    let x: Vec<f16> = random(&mut rng, n * k);
    let dx = gpu.upload(n, k, &x).unwrap();
    let dense = gpu.upload(m, k, &w).unwrap();
    let sparse = gpu.upload_sparse(&SparseWeight::from_dense(m, k, &w).unwrap()).unwrap();
    let mut tokens: Vec<usize> = vec![0, 1, 63, 64, SLICE_TOKENS - 1, SLICE_TOKENS, SLICE_TOKENS + 1, n - 1];
    tokens.extend((0..200).map(|_| rng.below(n)));
    let check = |y: &sparse_tc::DeviceMatrix<f16>, what: &str| {
        let y = gpu.download(y).unwrap();
        let xs: Vec<f16> = tokens.iter().flat_map(|&t| x[t * k..(t + 1) * k].iter().copied()).collect();
        let ys: Vec<f16> = tokens.iter().flat_map(|&t| y[t * m..(t + 1) * m].iter().copied()).collect();
        println!("token_counts_beyond_one_launch_grid: {what}");
        assert_close(&ys, &xs, &w, tokens.len(), m, k);
    };
    check(&gpu.linear(&dx, &dense).unwrap(), "dense, automatic");
    // Split K: the slices share the workspace, each reduction done before the next slice.
    check(&gpu.linear_with(&dx, &dense, LinearOptions { splits: Some(2), ..Default::default() }).unwrap(), "dense, 2 splits");
    check(&gpu.linear(&dx, &sparse).unwrap(), "sparse, automatic");
    // The stream-K split with its completion flags: 2 blocks × 65535 token tiles of 64 need
    // 17 GB of partial sums.
    let (free, _) = cust::memory::mem_get_info().unwrap();
    if free > 24 << 30 {
        check(&gpu.linear_with(&dx, &sparse, LinearOptions { blocks: Some(2), ..Default::default() }).unwrap(), "sparse, 2 blocks");
    } else {
        println!("token_counts_beyond_one_launch_grid: sparse split case left out ({free} bytes free)");
    }
}

// ---- The hang guard. ----

/// Environment variable that makes [`hang_guard_child_cases`] run (in the child process).
const CHILD: &str = "SPARSE_TC_HANG_GUARD_CHILD";

/// Runs [`hang_guard_child_cases`] in a child process and fails if it does not finish in
/// 60 s (`SPARSE_TC_HANG_TIMEOUT_S`; ×10 under compute-sanitizer): the inputs that used to
/// hang the GPU (a word ring that wrapped to 0) or fault it, and the valid extremes next to
/// them. A child process, so that a hung kernel is killed with it.
#[test]
fn hang_guard_previously_hanging_inputs_finish() {
    if gpu("hang_guard_previously_hanging_inputs_finish").is_none() {
        return;
    }
    let mut limit: u64 = std::env::var("SPARSE_TC_HANG_TIMEOUT_S").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    if std::env::var_os("SPARSE_TC_SANITIZER").is_some() {
        limit *= 10;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["hang_guard_child_cases", "--exact", "--include-ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Drain the child's output on a thread, so a full pipe cannot stall it.
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(limit) {
            child.kill().ok();
            child.wait().ok();
            panic!("the hostile-input cases did not finish within {limit} s: a launch hangs the GPU");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = reader.join().unwrap();
    println!("{output}");
    assert!(status.success(), "the hostile-input cases failed ({status}):\n{output}");
    assert!(output.contains("test result: ok. 1 passed"), "the child ran no case:\n{output}");
    println!("hang_guard_previously_hanging_inputs_finish: done in {:.1} s", start.elapsed().as_secs_f64());
}

/// The hang guard's cases (run only as its child process).
#[test]
#[ignore = "run by hang_guard_previously_hanging_inputs_finish in a child process"]
fn hang_guard_child_cases() {
    if std::env::var_os(CHILD).is_none() {
        println!("SKIPPED hang_guard_child_cases: runs as hang_guard_previously_hanging_inputs_finish's child");
        return;
    }
    let gpu = Gpu::new().unwrap();
    // Fully dense (every tile 16 chunks of the smallest ring), typical, and empty weights.
    for density in [1.0, 0.2, 0.0] {
        let c = case(&gpu, density);
        for r in WRAPPING_RINGS {
            let opts = LinearOptions { ring_words: Some(r), ..Default::default() };
            invalid(gpu.linear_with(&c.dx, &c.dw, opts), "ring");
            gpu.synchronize().unwrap();
        }
        for ring_words in [None, Some(1024), Some(1152)] {
            for blocks in [None, Some(2), Some(3), Some(32)] {
                c.sparse_ok(&gpu, LinearOptions { ring_words, blocks, ..Default::default() });
            }
        }
        println!("hang guard: density {density} done");
    }
}
