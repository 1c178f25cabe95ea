//! Benchmark suite: cuBLAS vs our dense and sparse `linear`, against the memory roofline.
//!
//! ```text
//! cargo bench --bench linear                      # the default sweep (see `Args::default`)
//! cargo bench --bench linear -- [--shapes 36864x9216,...] [--n 1,8,16,32,64]
//!     [--sparsity 0.5,0.7,0.8,0.9] [--rows-pattern 0.8|none] [--reps 100] [--dtype f16,bf16]
//!     [--csv out.csv] [--no-sparse] [--tune dense|sparse|ring|bitmap|all]   (--help lists them)
//! ```
//! Method, in one process and on one stream:
//! - every kernel of a case is timed in the same loop, round-robin (clock drift hits all
//!   alike), each launch between two CUDA events, after warm-up; median, p10 and p90 of
//!   `--reps` launches (≥ 50);
//! - weights smaller than 3× the L2 cache are rotated among several copies, so no launch is
//!   served from L2;
//! - a 1 GiB device-to-device copy is timed in the same run: the bandwidth ceiling that
//!   "% of copy bandwidth" refers to (bytes read + written);
//! - every timed result is compared with cuBLAS on the same (pruned) weight; a case whose max
//!   relative error exceeds 4·u (u = unit roundoff of the dtype) is reported as FAIL, never
//!   as a fast result, and makes the program exit non-zero.
//!
//! Kernels: `cublas` (`cublasGemmEx`, f32 accumulate — the denominator of every speedup),
//! `dense` (ours), `sparse_plain` (Tiled-CSL, words in row order), `sparse` (bank-reordered)
//! and `bitmap` (the bitmap format, `gpu/src/kernels/bitmap.rs`; `--tune bitmap` adds its
//! warp heights, split counts and stream-K block counts).
//! `--tune KIND` also times every compiled block shape and several split counts (`dense`;
//! `sparse` also block counts), or the sparse kernel's word-ring sizes per warp height and its L2 hint off
//! (`ring`): the data behind the defaults in `gpu/src/layout.rs` and `host/src/linear.rs`.

use cust::event::{Event, EventFlags};
use half::{bf16, f16};
use sparse_tc::cublas::{self, Cublas};
use sparse_tc::layout::{spmm_max_nt, DENSE_CONFIGS, SPARSE_TILE_M, SPMM_CONFIGS, SPMM_ROW_TILES};
use sparse_tc::{BitmapWeight, BlockShape, DeviceMatrix, DeviceSparseWeight, Dtype, Element, Gpu, LinearOptions, SparseWeight};
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;

const L2_BYTES: usize = 50 << 20;

/// Shapes of the default sweep (M = out_features × K = in_features).
const SWEEP_SHAPES: [(&str, usize, usize); 19] = [
    ("OPT-30B", 21504, 7168),
    ("OPT-30B", 7168, 7168),
    ("OPT-30B", 28672, 7168),
    ("OPT-30B", 7168, 28672),
    ("OPT-66B", 27648, 9216),
    ("OPT-66B", 9216, 9216),
    ("OPT-66B", 36864, 9216),
    ("OPT-66B", 9216, 36864),
    ("OPT-175B", 36864, 12288),
    ("OPT-175B", 12288, 12288),
    ("OPT-175B", 49152, 12288),
    ("OPT-175B", 12288, 49152),
    ("LLaMA-2-7B", 12288, 4096),
    ("LLaMA-2-7B", 4096, 4096),
    ("LLaMA-2-7B", 22016, 4096),
    ("LLaMA-2-7B", 4096, 11008),
    ("Llama-3-8B", 6144, 4096),
    ("Llama-3-8B", 28672, 4096),
    ("Llama-3-8B", 4096, 14336),
];

struct Args {
    shapes: Vec<(usize, usize)>,
    ns: Vec<usize>,
    sparsities: Vec<f64>,
    /// Mean sparsity of the non-uniform "rows" pattern, if it is part of the run.
    rows_pattern: Option<f64>,
    reps: usize,
    dtypes: Vec<Dtype>,
    csv: Option<String>,
    tune: Option<String>,
}

impl Default for Args {
    /// The default sweep: all model shapes, N = 1…64, 50–90% uniform sparsity plus the
    /// non-uniform row pattern at 80%, f16 then bf16, 60 timed launches per kernel.
    fn default() -> Self {
        Args {
            shapes: SWEEP_SHAPES.iter().map(|&(_, m, k)| (m, k)).collect(),
            ns: vec![1, 8, 16, 32, 64],
            sparsities: vec![0.5, 0.6, 0.7, 0.8, 0.9],
            rows_pattern: Some(0.8),
            reps: 60,
            dtypes: vec![Dtype::F16, Dtype::Bf16],
            csv: Some("sweep.csv".into()),
            tune: None,
        }
    }
}

/// The command line (clap); see the module docs.
#[derive(clap::Parser)]
#[command(name = "bench_linear", about = "cuBLAS vs our dense and sparse linear, against the memory roofline")]
struct Cli {
    /// Weight shapes `MxK` (out × in features) [default: the model sweep]
    #[arg(long, value_delimiter = ',', value_parser = parse_shape)]
    shapes: Vec<(usize, usize)>,
    /// Token counts
    #[arg(long, value_delimiter = ',', default_value = "1,8,16,32,64", value_parser = clap::value_parser!(u32).range(1..))]
    n: Vec<u32>,
    /// Uniform sparsities, each in [0, 1)
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.7,0.8,0.9", value_parser = parse_sparsity)]
    sparsity: Vec<f64>,
    /// Mean sparsity of the non-uniform row pattern, in [0, 1), or `none`
    #[arg(long, default_value = "0.8", value_parser = parse_rows_pattern)]
    rows_pattern: RowsPattern,
    /// Timed launches per kernel (medians over at least 50)
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(50..))]
    reps: u32,
    /// Element types: `f16`, `bf16`
    #[arg(long, value_delimiter = ',', default_value = "f16,bf16", value_parser = parse_dtype)]
    dtype: Vec<Dtype>,
    /// CSV file the rows are appended to
    #[arg(long, default_value = "sweep.csv")]
    csv: String,
    /// Also time every compiled block shape / split count / ring size of a kernel
    #[arg(long, value_parser = ["dense", "sparse", "ring", "bitmap", "all"])]
    tune: Option<String>,
    /// Dense cases only
    #[arg(long)]
    no_sparse: bool,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

/// `--rows-pattern`: a mean sparsity or none.
#[derive(Clone, Copy)]
struct RowsPattern(Option<f64>);

fn parse_shape(s: &str) -> Result<(usize, usize), String> {
    let (m, k) = s.split_once('x').ok_or_else(|| format!("`{s}` is not MxK"))?;
    let dim = |v: &str| match v.parse::<usize>() {
        Ok(d) if d >= 1 => Ok(d),
        _ => Err(format!("`{v}` in `{s}` is not a positive integer")),
    };
    Ok((dim(m)?, dim(k)?))
}

fn parse_sparsity(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a sparsity in [0, 1)")),
    }
}

fn parse_rows_pattern(s: &str) -> Result<RowsPattern, String> {
    if s == "none" {
        Ok(RowsPattern(None))
    } else {
        parse_sparsity(s).map(|v| RowsPattern(Some(v)))
    }
}

fn parse_dtype(s: &str) -> Result<Dtype, String> {
    match s {
        "f16" => Ok(Dtype::F16),
        "bf16" => Ok(Dtype::Bf16),
        other => Err(format!("`{other}` is neither f16 nor bf16")),
    }
}

fn parse_args() -> Args {
    use clap::Parser;
    let cli = Cli::parse();
    let sparse = !cli.no_sparse;
    Args {
        shapes: if cli.shapes.is_empty() { Args::default().shapes } else { cli.shapes },
        ns: cli.n.iter().map(|&n| n as usize).collect(),
        sparsities: if sparse { cli.sparsity } else { Vec::new() },
        rows_pattern: if sparse { cli.rows_pattern.0 } else { None },
        reps: cli.reps as usize,
        dtypes: cli.dtype,
        csv: Some(cli.csv),
        tune: cli.tune,
    }
}

/// How a weight is pruned.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pattern {
    /// No pruning: the dense baseline case.
    Dense,
    /// Each entry kept with probability `1 - sparsity`.
    Uniform(f64),
    /// Row r kept with probability `2·(1 - mean)·u_r`, u_r uniform in [0, 1): rows from empty
    /// to twice the mean density, as magnitude pruning of real layers produces.
    Rows(f64),
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::Dense => "dense",
            Pattern::Uniform(_) => "uniform",
            Pattern::Rows(_) => "rows",
        }
    }
}

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn uniform(&mut self) -> f32 {
        self.unit() as f32 * 2.0 - 1.0
    }
}

/// Random weights in ±0.1 pruned by `pattern`, generated in parallel, deterministic: each row
/// has its own generator (seeded by `seed` and the row index), so the values do not depend
/// on how many threads made them.
fn random_weight<T: Element>(m: usize, k: usize, pattern: Pattern, seed: u64) -> Vec<T> {
    let mut w = vec![T::from_f32(0.0); m * k];
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let rows_per = m.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (t, chunk) in w.chunks_mut(rows_per * k).enumerate() {
            s.spawn(move || {
                for (i, row) in chunk.chunks_mut(k).enumerate() {
                    let mut rng = Rng::new(seed ^ ((t * rows_per + i) as u64 + 1) << 20);
                    let keep = match pattern {
                        Pattern::Dense => 1.0,
                        Pattern::Uniform(s) => 1.0 - s,
                        Pattern::Rows(mean) => 2.0 * (1.0 - mean) * rng.unit(),
                    };
                    for v in row {
                        if rng.unit() < keep {
                            let val = rng.uniform() * 0.1;
                            *v = T::from_f32(if val == 0.0 { 0.01 } else { val });
                        }
                    }
                }
            });
        }
    });
    w
}

fn pct(v: &[f32], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize] as f64
}

/// Device-to-device copy bandwidth (bytes read + written per second), median of 20.
fn copy_bandwidth(gpu: &Gpu) -> f64 {
    let bytes = 1usize << 30;
    // SAFETY: plain byte buffers; their contents do not matter for a copy.
    let src = unsafe { cust::memory::DeviceBuffer::<u8>::uninitialized(bytes) }.unwrap();
    let dst = unsafe { cust::memory::DeviceBuffer::<u8>::uninitialized(bytes) }.unwrap();
    let mut times = vec![];
    for i in 0..25 {
        let (a, b) = (Event::new(EventFlags::DEFAULT).unwrap(), Event::new(EventFlags::DEFAULT).unwrap());
        a.record(gpu.stream()).unwrap();
        // SAFETY: two live allocations of `bytes`, copied on our stream.
        let rc = unsafe {
            cust::sys::cuMemcpyDtoDAsync_v2(dst.as_device_ptr().as_raw(), src.as_device_ptr().as_raw(), bytes, gpu.stream().as_inner())
        };
        assert_eq!(rc, cust::sys::cudaError_enum::CUDA_SUCCESS);
        b.record(gpu.stream()).unwrap();
        b.synchronize().unwrap();
        if i >= 5 {
            times.push(b.elapsed_time_f32(&a).unwrap() * 1000.0);
        }
    }
    2.0 * bytes as f64 / (pct(&times, 0.5) * 1e-6)
}

enum Kernel<'a, T: Element> {
    Cublas(&'a DeviceMatrix<T>),
    Dense(&'a DeviceMatrix<T>, LinearOptions),
    Sparse(&'a DeviceSparseWeight<T>, LinearOptions),
}

impl<T: Element> Kernel<'_, T> {
    fn rows(&self) -> usize {
        match self {
            Kernel::Cublas(w) | Kernel::Dense(w, _) => w.rows(),
            Kernel::Sparse(w, _) => w.rows(),
        }
    }

    fn launch(&self, gpu: &Gpu, cb: &Cublas, x: &DeviceMatrix<T>, y: &mut DeviceMatrix<T>) {
        match self {
            // SAFETY: live device matrices of the stated shapes, in the current context; cuBLAS
            // runs on the handle's stream.
            Kernel::Cublas(w) => unsafe {
                cb.linear(T::DTYPE, w.rows(), x.rows(), w.cols(), w.device_ptr(), w.ld(), x.device_ptr(), x.ld(), y.device_ptr(), y.ld())
                    .unwrap()
            },
            Kernel::Dense(w, o) => gpu.linear_into(x, *w, y, *o).unwrap(),
            Kernel::Sparse(w, o) => gpu.linear_into(x, *w, y, *o).unwrap(),
        }
    }
}

/// One kernel of a case: its name, one launchable per weight copy, and the bytes it must move.
struct Entry<'a, T: Element> {
    name: String,
    copies: Vec<Kernel<'a, T>>,
    bytes: usize,
}

fn sparse_entry<T: Element>(name: String, ws: &[DeviceSparseWeight<T>], o: LinearOptions, bytes: usize) -> Entry<'_, T> {
    Entry { name, copies: ws.iter().map(|w| Kernel::Sparse(w, o)).collect(), bytes }
}

/// Split counts `--tune` tries (`None`: the automatic plan).
const SPLIT_CANDIDATES: [Option<usize>; 8] = [None, Some(1), Some(2), Some(3), Some(4), Some(6), Some(8), Some(12)];

/// `--tune bitmap|sparse`: every warp height of a sparse format's kernel for `n_tile` tokens
/// with each split count (`s`, `A` = automatic) and each stream-K block count of 1–8 per SM
/// (`b` = blocks, within `R..=R·K` for an `m`-row weight of `k_tiles` K tiles).
fn tune_plans<'a, T: Element>(
    prefix: &str, ws: &'a [DeviceSparseWeight<T>], bytes: usize, m: usize, k_tiles: usize, n_tile: usize, sms: usize,
) -> Vec<Entry<'a, T>> {
    let r = m.div_ceil(SPARSE_TILE_M);
    let mut out = vec![];
    for warp_m_tiles in SPMM_CONFIGS.into_iter().filter(|&mt| n_tile / 8 <= spmm_max_nt(mt)) {
        let block = Some(BlockShape { row_tiles: SPMM_ROW_TILES, warp_m_tiles });
        for s in SPLIT_CANDIDATES.into_iter().filter(|s| s.is_none_or(|s| s <= k_tiles)) {
            let name = format!("{prefix}_m{warp_m_tiles}s{}", s.map_or("A".into(), |s| s.to_string()));
            out.push(sparse_entry(name, ws, LinearOptions { splits: s, block, ..Default::default() }, bytes));
        }
        for blocks in [1, 2, 3, 4, 5, 6, 8].map(|per_sm| per_sm * sms) {
            if (r..=r * k_tiles).contains(&blocks) {
                let o = LinearOptions { blocks: Some(blocks), block, ..Default::default() };
                out.push(sparse_entry(format!("{prefix}_m{warp_m_tiles}b{blocks}"), ws, o, bytes));
            }
        }
    }
    out
}

/// A timed kernel.
struct Timed {
    name: String,
    times_us: Vec<f32>,
    max_rel_err: f64,
    bytes: usize,
}

impl Timed {
    fn median(&self) -> f64 {
        pct(&self.times_us, 0.5)
    }
}

/// Times all entries round-robin; entry 0 (cuBLAS) is the reference of the error check.
fn time_case<T: Element>(gpu: &Gpu, cb: &Cublas, entries: &[Entry<T>], x: &DeviceMatrix<T>, reps: usize) -> Vec<Timed> {
    let (n, m) = (x.rows(), entries[0].copies[0].rows());
    let mut ys: Vec<DeviceMatrix<T>> = entries.iter().map(|_| gpu.zeros(n, m).unwrap()).collect();
    for _ in 0..3 {
        for (e, y) in entries.iter().zip(ys.iter_mut()) {
            for k in &e.copies {
                k.launch(gpu, cb, x, y);
            }
        }
    }
    gpu.synchronize().unwrap();
    let new_pair = || (Event::new(EventFlags::DEFAULT).unwrap(), Event::new(EventFlags::DEFAULT).unwrap());
    let events: Vec<Vec<(Event, Event)>> = entries.iter().map(|_| (0..reps).map(|_| new_pair()).collect()).collect();
    for r in 0..reps {
        for (i, (e, y)) in entries.iter().zip(ys.iter_mut()).enumerate() {
            events[i][r].0.record(gpu.stream()).unwrap();
            e.copies[r % e.copies.len()].launch(gpu, cb, x, y);
            events[i][r].1.record(gpu.stream()).unwrap();
        }
    }
    gpu.synchronize().unwrap();
    let reference: Vec<f32> = gpu.download(&ys[0]).unwrap().iter().map(|v| v.to_f32()).collect();
    let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-6) as f64;
    entries
        .iter()
        .zip(&ys)
        .zip(&events)
        .map(|((e, y), ev)| {
            let got = gpu.download(y).unwrap();
            let mut err = 0f64;
            for (g, r) in got.iter().zip(&reference) {
                let d = (g.to_f32() - r).abs() as f64 / scale;
                err = if d.is_nan() { f64::INFINITY } else { err.max(d) };
            }
            Timed {
                name: e.name.clone(),
                times_us: ev.iter().map(|(a, b)| b.elapsed_time_f32(a).unwrap() * 1000.0).collect(),
                max_rel_err: err,
                bytes: e.bytes,
            }
        })
        .collect()
}

/// Progress on stderr: cases done, elapsed, estimated time left.
struct Progress {
    total: usize,
    done: usize,
    start: Instant,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        let el = self.start.elapsed().as_secs_f64();
        let eta = el / self.done as f64 * (self.total - self.done) as f64;
        let width = 30;
        let filled = width * self.done / self.total.max(1);
        eprint!(
            "\r[{}{}] {}/{} {:>4.0}s elapsed, ~{:>4.0}s left  {what:<40}",
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.done,
            self.total,
            el,
            eta
        );
        if self.done == self.total {
            eprintln!();
        }
    }
}

/// Result rows kept for the summary.
struct Row {
    shape: (usize, usize),
    n: usize,
    pattern: Pattern,
    sparsity: f64,
    kernel: String,
    median: f64,
    speedup: f64,
    pct_bw: f64,
    ok: bool,
}

fn geomean(v: impl Iterator<Item = f64>) -> (f64, usize) {
    let (mut s, mut c) = (0.0, 0);
    for x in v {
        s += x.ln();
        c += 1;
    }
    ((s / c.max(1) as f64).exp(), c)
}

/// What every sweep of one run shares.
struct Bench {
    gpu: Gpu,
    cublas: Cublas,
    driver: String,
    copy_bw: f64,
}

fn setup() -> Option<Bench> {
    let gpu = match Gpu::new() {
        Ok(g) => g,
        Err(e) => {
            println!("SKIPPED benchmark: no usable GPU ({e})");
            return None;
        }
    };
    let cublas = match cublas::load() {
        Ok(c) => c,
        Err(e) => {
            println!("SKIPPED benchmark: cuBLAS not found ({e})");
            return None;
        }
    };
    cublas.set_stream(gpu.stream().as_inner()).unwrap();
    let mut driver = 0i32;
    // SAFETY: writes one int.
    unsafe { cust::sys::cuDriverGetVersion(&mut driver) };
    let driver = format!("CUDA {}.{}", driver / 1000, driver % 1000 / 10);
    let copy_bw = copy_bandwidth(&gpu);
    println!("device: {} ({} SMs, {} kernels), driver API {driver}, cuBLAS {} ({})", gpu.name(), gpu.sm_count(), gpu.ptx_target(), cublas.version().unwrap_or(0), cublas.path().display());
    println!("device-to-device copy: {:.3} TB/s (read + write)", copy_bw / 1e12);
    Some(Bench { gpu, cublas, driver, copy_bw })
}

/// Runs the sweep for one element type, appending CSV rows; returns the result rows.
/// Word-ring sizes `--tune ring` tries: on an H100 (227 KiB per block, 228 KiB per SM) they
/// span four to two resident blocks per SM up to 32 tokens.
const RING_CANDIDATES: [usize; 7] = [4096, 6144, 8192, 9728, 12288, 16384, 19456];

fn run<T: Element>(bench: &Bench, args: &Args, csv: &mut String) -> Vec<Row> {
    let Bench { gpu, cublas: cb, driver, copy_bw } = bench;
    let copy_bw = *copy_bw;
    let mut patterns = vec![Pattern::Dense];
    patterns.extend(args.sparsities.iter().map(|&s| Pattern::Uniform(s)));
    patterns.extend(args.rows_pattern.map(Pattern::Rows));
    let mut progress = Progress { total: args.shapes.len() * patterns.len() * args.ns.len(), done: 0, start: Instant::now() };
    let mut rows: Vec<Row> = vec![];
    let tol = 4.0 * T::DTYPE.unit_roundoff();
    let tuning = |kind: &str| args.tune.as_deref().is_some_and(|t| t == kind || t == "all");

    for (si, &(m, k)) in args.shapes.iter().enumerate() {
        for (pi, &pattern) in patterns.iter().enumerate() {
            let seed = (si * 1000 + pi) as u64;
            let w_host: Vec<T> = random_weight(m, k, pattern, seed);
            let dense_bytes = m * k * 2;
            let copies = (3 * L2_BYTES).div_ceil(dense_bytes);
            let w_dense: Vec<DeviceMatrix<T>> = (0..copies).map(|_| gpu.upload(m, k, &w_host).unwrap()).collect();
            let sparse = (pattern != Pattern::Dense).then(|| {
                let plain = SparseWeight::from_dense(m, k, &w_host).unwrap();
                let mut reordered = plain.clone();
                reordered.reorder_for_banks();
                let c = (3 * L2_BYTES).div_ceil(plain.stored_bytes());
                let up = |w: &SparseWeight<T>| (0..c).map(|_| gpu.upload_sparse(w).unwrap()).collect::<Vec<_>>();
                let bitmap = BitmapWeight::from_tiled_csl(&plain).unwrap();
                let cb = (3 * L2_BYTES).div_ceil(bitmap.stored_bytes());
                let bitmaps = (0..cb).map(|_| gpu.upload_bitmap(&bitmap).unwrap()).collect::<Vec<_>>();
                (up(&plain), up(&reordered), plain.stored_bytes(), 1.0 - plain.density(), bitmaps, bitmap.stored_bytes())
            });
            drop(w_host);
            let sparsity = sparse.as_ref().map_or(0.0, |s| s.3);
            for &n in &args.ns {
                let mut rng = Rng::new(n as u64 + 99);
                let xh: Vec<T> = (0..n * k).map(|_| T::from_f32(rng.uniform())).collect();
                let x = gpu.upload(n, k, &xh).unwrap();
                let io = (n * k + n * m) * 2;
                let dense_entry = |name: String, o: LinearOptions| Entry { name, copies: w_dense.iter().map(|w| Kernel::Dense(w, o)).collect(), bytes: dense_bytes + io };
                let mut entries = vec![
                    Entry { name: "cublas".into(), copies: w_dense.iter().map(Kernel::Cublas).collect(), bytes: dense_bytes + io },
                    dense_entry("dense".into(), LinearOptions::default()),
                ];
                let k_tiles = k.div_ceil(64);
                let splits = SPLIT_CANDIDATES.into_iter().filter(|s| s.is_none_or(|s| s <= k_tiles));
                if tuning("dense") && pattern == Pattern::Dense {
                    for (row_tiles, warp_m_tiles) in DENSE_CONFIGS {
                        for s in splits.clone() {
                            let name = format!("dense_r{row_tiles}m{warp_m_tiles}s{}", s.map_or("A".into(), |s| s.to_string()));
                            entries.push(dense_entry(name, LinearOptions { splits: s, block: Some(BlockShape { row_tiles, warp_m_tiles }), ..Default::default() }));
                        }
                        // Whole row tiles for ⌊R / SMs⌋ rounds, the rest split (`t` = tail).
                        let (r, sms) = (m.div_ceil(64 * row_tiles), gpu.sm_count() as usize);
                        for s in [2, 3, 5, 8, 11].into_iter().filter(|&s| r >= sms && s <= k_tiles) {
                            let o = LinearOptions {
                                splits: Some(s),
                                unsplit_row_tiles: Some(r / sms * sms),
                                block: Some(BlockShape { row_tiles, warp_m_tiles }),
                                ..Default::default()
                            };
                            entries.push(dense_entry(format!("dense_r{row_tiles}m{warp_m_tiles}t{s}"), o));
                        }
                    }
                }
                if let Some((plain, reordered, bytes, _, bitmaps, bitmap_bytes)) = &sparse {
                    entries.push(sparse_entry("sparse_plain".into(), plain, LinearOptions::default(), bytes + io));
                    entries.push(sparse_entry("sparse".into(), reordered, LinearOptions::default(), bytes + io));
                    entries.push(sparse_entry("bitmap".into(), bitmaps, LinearOptions::default(), bitmap_bytes + io));
                    let n_tile = [8, 16, 32, 64].into_iter().find(|&t| t >= n).unwrap_or(64);
                    let sms = gpu.sm_count() as usize;
                    if tuning("bitmap") {
                        entries.extend(tune_plans("bitmap", bitmaps, bitmap_bytes + io, m, k_tiles, n_tile, sms));
                    }
                    if tuning("sparse") {
                        entries.extend(tune_plans("sparse", reordered, bytes + io, m, k_tiles, n_tile, sms));
                    }
                    if tuning("ring") {
                        let o = LinearOptions { l2_evict_first: Some(false), ..Default::default() };
                        entries.push(sparse_entry("sparse_noevict".into(), reordered, o, bytes + io));
                        for warp_m_tiles in SPMM_CONFIGS.into_iter().filter(|&mt| n_tile / 8 <= spmm_max_nt(mt)) {
                            for ring in RING_CANDIDATES {
                                let block = Some(BlockShape { row_tiles: 4, warp_m_tiles });
                                let o = LinearOptions { block, ring_words: Some(ring), ..Default::default() };
                                entries.push(sparse_entry(format!("sparse_m{warp_m_tiles}r{ring}"), reordered, o, bytes + io));
                            }
                        }
                    }
                }
                let results = time_case(gpu, cb, &entries, &x, args.reps);
                let base = results[0].median();
                for r in &results {
                    let med = r.median();
                    let tbs = r.bytes as f64 / (med * 1e-6);
                    let ok = r.max_rel_err <= tol;
                    let _ = writeln!(
                        csv,
                        "{},{driver},{},{m},{k},{n},{sparsity:.4},{},{},{med:.2},{:.2},{:.2},{:.2},{},{:.3},{:.1},{:.3},{:.2e},{}",
                        gpu.name(),
                        T::DTYPE.name(),
                        pattern.name(),
                        r.name,
                        pct(&r.times_us, 0.1),
                        pct(&r.times_us, 0.9),
                        2.0 * (m * k * n) as f64 / (med * 1e-6) / 1e12,
                        r.bytes,
                        tbs / 1e12,
                        100.0 * tbs / copy_bw,
                        base / med,
                        r.max_rel_err,
                        if ok { "ok" } else { "FAIL" }
                    );
                    rows.push(Row {
                        shape: (m, k),
                        n,
                        pattern,
                        sparsity,
                        kernel: r.name.clone(),
                        median: med,
                        speedup: base / med,
                        pct_bw: 100.0 * tbs / copy_bw,
                        ok,
                    });
                }
                progress.step(&format!("{m}x{k} {} n={n}", pattern.name()));
            }
        }
    }
    summary(gpu, T::DTYPE, copy_bw, &rows, &patterns, &args.ns);
    rows
}

/// The summary printed last: geometric-mean speedups of each kernel per sparsity and N, the
/// worst case, and where the sparse kernel is furthest below the roofline.
fn summary(gpu: &Gpu, dtype: Dtype, copy_bw: f64, rows: &[Row], patterns: &[Pattern], ns: &[usize]) {
    println!(
        "\n==== summary, {}: {} (copy {:.2} TB/s); geometric mean over shapes of cuBLAS time / kernel time ====",
        dtype.name(),
        gpu.name(),
        copy_bw / 1e12
    );
    let mut header = format!("{:<16}{:<14}", "pattern", "kernel");
    for n in ns {
        let _ = write!(header, "{:>9}", format!("N={n}"));
    }
    println!("{header}{:>9}", "all N");
    for &p in patterns {
        for kernel in ["dense", "sparse_plain", "sparse", "bitmap"] {
            let sel = |n: Option<usize>| rows.iter().filter(move |r| r.ok && r.pattern == p && r.kernel == kernel && n.is_none_or(|n| r.n == n));
            if sel(None).next().is_none() {
                continue;
            }
            let label = match p {
                Pattern::Dense => "dense".to_string(),
                Pattern::Uniform(s) => format!("uniform {:.0}%", s * 100.0),
                Pattern::Rows(s) => format!("rows ~{:.0}%", s * 100.0),
            };
            let mut line = format!("{label:<16}{kernel:<14}");
            for &n in ns {
                let _ = write!(line, "{:>8.2}×", geomean(sel(Some(n)).map(|r| r.speedup)).0);
            }
            println!("{line}{:>8.2}×", geomean(sel(None).map(|r| r.speedup)).0);
        }
    }
    let sparse: Vec<&Row> = rows.iter().filter(|r| r.ok && r.kernel == "sparse").collect();
    if let Some(w) = sparse.iter().min_by(|a, b| a.speedup.total_cmp(&b.speedup)) {
        println!(
            "worst sparse case: {}x{} N={} {} sparsity {:.0}%: {:.2}× ({:.1} µs)",
            w.shape.0, w.shape.1, w.n, w.pattern.name(), w.sparsity * 100.0, w.speedup, w.median
        );
    }
    if let Some(w) = sparse.iter().min_by(|a, b| a.pct_bw.total_cmp(&b.pct_bw)) {
        println!(
            "furthest below the roofline: {}x{} N={} {} sparsity {:.0}%: {:.0}% of copy bandwidth",
            w.shape.0, w.shape.1, w.n, w.pattern.name(), w.sparsity * 100.0, w.pct_bw
        );
    }
    for kernel in ["cublas", "dense", "sparse", "bitmap"] {
        let (g, c) = geomean(rows.iter().filter(|r| r.ok && r.kernel == kernel).map(|r| r.pct_bw));
        if c > 0 {
            println!("{kernel:<8} geometric-mean % of copy bandwidth over {c} cases: {g:.0}%");
        }
    }
}

fn main() {
    let args = parse_args();
    let Some(bench) = setup() else { return };
    let mut csv = String::from(
        "device,driver,dtype,m,k,n,sparsity,pattern,kernel,median_us,p10_us,p90_us,tflops,bytes,tb_per_s,pct_copy_bw,speedup_vs_cublas,max_rel_err,status\n",
    );
    let mut failures = vec![];
    for &dtype in &args.dtypes {
        let rows = match dtype {
            Dtype::F16 => run::<f16>(&bench, &args, &mut csv),
            Dtype::Bf16 => run::<bf16>(&bench, &args, &mut csv),
        };
        failures.extend(rows.into_iter().filter(|r| !r.ok).map(|r| (dtype, r)));
    }
    if let Some(path) = &args.csv {
        std::fs::File::create(path).and_then(|mut f| f.write_all(csv.as_bytes())).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        println!("wrote {path}");
    }
    for (dtype, f) in &failures {
        println!("FAIL: {} {}x{} n={} {:?} {}: result disagrees with cuBLAS", dtype.name(), f.shape.0, f.shape.1, f.n, f.pattern, f.kernel);
    }
    std::process::exit(i32::from(!failures.is_empty()));
}
