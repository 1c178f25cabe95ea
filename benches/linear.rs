//! Benchmark: our dense and sparse `linear` against cuBLAS, on one stream, with CUDA events.
//!
//! ```text
//! cargo bench --bench linear -- [--shapes 36864x9216,...] [--n 1,8,16,32,64]
//!     [--sparsity 0.5,0.7,0.8,0.9] [--reps 100] [--dtype f16|bf16] [--csv out.csv]
//!     [--no-sparse] [--tune]
//! ```
//! Every kernel of a case is timed in the same loop (round-robin, so clock drift hits all
//! alike), each launch between two events, after warm-up; the median is reported. Weights
//! smaller than 3× the L2 cache are rotated among several copies so no run is served from
//! L2. Every timed result is checked against cuBLAS; a mismatch is reported as FAIL.
//! `--tune` also times every compiled block shape and several split counts (the data behind
//! the defaults in `gpu/src/layout.rs` and `host/src/linear.rs`).

use half::{bf16, f16};
use sparse_tc::cublas::{self, Cublas};
use sparse_tc::{BlockShape, DeviceMatrix, DeviceSparseWeight, Dtype, Element, Gpu, LinearOptions, SparseWeight};
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;

use cust::event::{Event, EventFlags};

const L2_BYTES: usize = 50 << 20;

struct Args {
    shapes: Vec<(usize, usize)>,
    ns: Vec<usize>,
    sparsities: Vec<f64>,
    reps: usize,
    dtype: Dtype,
    csv: Option<String>,
    tune: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        shapes: vec![(36864, 9216), (9216, 36864), (11008, 4096)],
        ns: vec![1, 8, 16, 32, 64],
        sparsities: vec![0.5, 0.7, 0.8, 0.9],
        reps: 100,
        dtype: Dtype::F16,
        csv: None,
        tune: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let list = |s: &str| s.split(',').map(|v| v.trim().to_string()).collect::<Vec<_>>();
    while i < argv.len() {
        let val = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--shapes" => {
                a.shapes = list(&val)
                    .iter()
                    .map(|s| {
                        let (m, k) = s.split_once('x').expect("shape as MxK");
                        (m.parse().unwrap(), k.parse().unwrap())
                    })
                    .collect()
            }
            "--n" => a.ns = list(&val).iter().map(|v| v.parse().unwrap()).collect(),
            "--sparsity" => a.sparsities = list(&val).iter().map(|v| v.parse().unwrap()).collect(),
            "--reps" => a.reps = val.parse().unwrap(),
            "--dtype" => a.dtype = if val == "bf16" { Dtype::Bf16 } else { Dtype::F16 },
            "--csv" => a.csv = Some(val),
            "--no-sparse" => {
                a.sparsities.clear();
                i += 1;
                continue;
            }
            "--tune" => {
                a.tune = true;
                i += 1;
                continue;
            }
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// One timed kernel of a case.
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

fn pct(v: &[f32], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize] as f64
}

/// xorshift64* for weights.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Random weights with each entry kept with probability `1 - sparsity`, generated in
/// parallel (deterministic per row block).
fn random_weight<T: Element>(m: usize, k: usize, sparsity: f64, seed: u64) -> Vec<T> {
    let mut w = vec![T::from_f32(0.0); m * k];
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let rows_per = m.div_ceil(threads);
    let keep = ((1.0 - sparsity) * (1u64 << 32) as f64) as u64;
    std::thread::scope(|s| {
        for (t, chunk) in w.chunks_mut(rows_per * k).enumerate() {
            s.spawn(move || {
                let mut rng = Rng(seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                for v in chunk {
                    let r = rng.next();
                    if (r >> 32) < keep {
                        let val = rng.uniform() * 0.1;
                        *v = T::from_f32(if val == 0.0 { 0.01 } else { val });
                    }
                }
            });
        }
    });
    w
}

/// Device-to-device copy bandwidth (bytes read + written per second), median of 20.
fn copy_bandwidth(gpu: &Gpu) -> f64 {
    let bytes = 1usize << 30;
    let src = unsafe { cust::memory::DeviceBuffer::<u8>::uninitialized(bytes) }.unwrap();
    let dst = unsafe { cust::memory::DeviceBuffer::<u8>::uninitialized(bytes) }.unwrap();
    let mut times = vec![];
    for i in 0..25 {
        let (a, b) = (Event::new(EventFlags::DEFAULT).unwrap(), Event::new(EventFlags::DEFAULT).unwrap());
        a.record(gpu.stream()).unwrap();
        // SAFETY: two live allocations of `bytes`, copied on our stream.
        unsafe {
            cust::sys::cuMemcpyDtoDAsync_v2(dst.as_device_ptr().as_raw(), src.as_device_ptr().as_raw(), bytes, gpu.stream().as_inner());
        }
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

fn launch<T: Element>(gpu: &Gpu, cb: &Cublas, k: &Kernel<T>, x: &DeviceMatrix<T>, y: &mut DeviceMatrix<T>) {
    match k {
        Kernel::Cublas(w) => unsafe {
            cb.linear(T::DTYPE, w.rows(), x.rows(), w.cols(), w.device_ptr(), w.ld(), x.device_ptr(), x.ld(), y.device_ptr(), y.ld())
                .unwrap()
        },
        Kernel::Dense(w, o) => gpu.linear_into(x, *w, y, *o).unwrap(),
        Kernel::Sparse(w, o) => gpu.linear_into(x, *w, y, *o).unwrap(),
    }
}

/// Times `kernels` (each entry: name, one kernel per weight copy, bytes) round-robin.
fn time_case<T: Element>(
    gpu: &Gpu,
    cb: &Cublas,
    kernels: &[(String, Vec<Kernel<T>>, usize)],
    x: &DeviceMatrix<T>,
    reps: usize,
) -> Vec<Timed> {
    let n = x.rows();
    let m = match &kernels[0].1[0] {
        Kernel::Cublas(w) | Kernel::Dense(w, _) => w.rows(),
        Kernel::Sparse(w, _) => w.rows(),
    };
    let mut ys: Vec<DeviceMatrix<T>> = kernels.iter().map(|_| gpu.zeros(n, m).unwrap()).collect();
    // Warm-up (module load, cuBLAS heuristics, clocks).
    for _ in 0..5 {
        for (kernel, y) in kernels.iter().zip(ys.iter_mut()) {
            for kc in &kernel.1 {
                launch(gpu, cb, kc, x, y);
            }
        }
    }
    gpu.synchronize().unwrap();
    let events: Vec<Vec<(Event, Event)>> = kernels
        .iter()
        .map(|_| (0..reps).map(|_| (Event::new(EventFlags::DEFAULT).unwrap(), Event::new(EventFlags::DEFAULT).unwrap())).collect())
        .collect();
    for r in 0..reps {
        for (i, (kernel, y)) in kernels.iter().zip(ys.iter_mut()).enumerate() {
            let kc = &kernel.1[r % kernel.1.len()];
            events[i][r].0.record(gpu.stream()).unwrap();
            launch(gpu, cb, kc, x, y);
            events[i][r].1.record(gpu.stream()).unwrap();
        }
    }
    gpu.synchronize().unwrap();
    let reference: Vec<f32> = gpu.download(&ys[0]).unwrap().iter().map(|v| v.to_f32()).collect();
    let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-6) as f64;
    kernels
        .iter()
        .enumerate()
        .map(|(i, (name, _, bytes))| {
            let got = gpu.download(&ys[i]).unwrap();
            let err = got.iter().zip(&reference).map(|(g, r)| ((g.to_f32() - r).abs() as f64) / scale).fold(0.0, f64::max);
            let err = if got.iter().any(|v| v.to_f32().is_nan()) { f64::INFINITY } else { err };
            Timed {
                name: name.clone(),
                times_us: events[i].iter().map(|(a, b)| b.elapsed_time_f32(a).unwrap() * 1000.0).collect(),
                max_rel_err: err,
                bytes: *bytes,
            }
        })
        .collect()
}

fn run<T: Element>(args: &Args) {
    let gpu = match Gpu::new() {
        Ok(g) => g,
        Err(e) => {
            println!("SKIPPED benchmark: no usable GPU ({e})");
            return;
        }
    };
    let cb = match cublas::load() {
        Ok(c) => c,
        Err(e) => {
            println!("SKIPPED benchmark: cuBLAS not found ({e})");
            return;
        }
    };
    cb.set_stream(gpu.stream().as_inner()).unwrap();
    let copy_bw = copy_bandwidth(&gpu);
    println!("device: {} ({} SMs), cuBLAS {} from {}", gpu.name(), gpu.sm_count(), cb.version().unwrap_or(0), cb.path().display());
    println!("device-to-device copy: {:.3} TB/s (read + write)", copy_bw / 1e12);
    let mut csv = String::from("device,dtype,m,k,n,sparsity,kernel,median_us,p10_us,p90_us,tflops,bytes,tb_per_s,pct_copy_bw,speedup_vs_cublas,max_rel_err\n");
    let mut summary = String::new();
    let tol = 4.0 * T::DTYPE.unit_roundoff();
    let mut failures = 0;
    let mut levels: Vec<f64> = vec![0.0];
    levels.extend(&args.sparsities);
    for &(m, k) in &args.shapes {
        for &sparsity in &levels {
            let t0 = Instant::now();
            let w_host: Vec<T> = random_weight(m, k, sparsity, (m * 31 + k) as u64 ^ sparsity.to_bits());
            let dense_bytes = m * k * 2;
            let copies = (3 * L2_BYTES).div_ceil(dense_bytes).max(1);
            let w_dense: Vec<DeviceMatrix<T>> = (0..copies).map(|_| gpu.upload(m, k, &w_host).unwrap()).collect();
            let sparse = (sparsity > 0.0).then(|| {
                let sw = SparseWeight::from_dense(m, k, &w_host).unwrap();
                let mut swr = sw.clone();
                swr.reorder_for_banks();
                let sc = (3 * L2_BYTES).div_ceil(sw.stored_bytes()).max(1);
                let plain: Vec<_> = (0..sc).map(|_| gpu.upload_sparse(&sw).unwrap()).collect();
                let reord: Vec<_> = (0..sc).map(|_| gpu.upload_sparse(&swr).unwrap()).collect();
                (plain, reord, sw.stored_bytes(), sw.density())
            });
            drop(w_host);
            eprintln!("[prep {m}x{k} sparsity {sparsity}: {:.1} s]", t0.elapsed().as_secs_f64());
            for &n in &args.ns {
                let mut rng = Rng(n as u64 + 99);
                let xh: Vec<T> = (0..n * k).map(|_| T::from_f32(rng.uniform())).collect();
                let x = gpu.upload(n, k, &xh).unwrap();
                let io_bytes = (n * k + n * m) * 2;
                let mut kernels: Vec<(String, Vec<Kernel<T>>, usize)> = vec![
                    ("cublas".into(), w_dense.iter().map(Kernel::Cublas).collect(), dense_bytes + io_bytes),
                    ("dense".into(), w_dense.iter().map(|w| Kernel::Dense(w, LinearOptions::default())).collect(), dense_bytes + io_bytes),
                ];
                let k_tiles = k.div_ceil(64);
                let tune_splits = [None, Some(1), Some(2), Some(3), Some(4), Some(6), Some(8)];
                if args.tune && sparsity == 0.0 {
                    for (row_tiles, warp_m_tiles) in sparse_tc::layout::DENSE_CONFIGS {
                        for s in tune_splits.into_iter().filter(|s| s.is_none_or(|s| s <= k_tiles)) {
                            let name = format!("dense_r{row_tiles}m{warp_m_tiles}s{}", s.map_or("A".into(), |s| s.to_string()));
                            let o = LinearOptions { splits: s, block: Some(BlockShape { row_tiles, warp_m_tiles }) };
                            kernels.push((name, w_dense.iter().map(|w| Kernel::Dense(w, o)).collect(), dense_bytes + io_bytes));
                        }
                    }
                }
                if let Some((plain, reord, bytes, _)) = &sparse {
                    let d = LinearOptions::default();
                    kernels.push(("sparse_plain".into(), plain.iter().map(|w| Kernel::Sparse(w, d)).collect(), bytes + io_bytes));
                    kernels.push(("sparse".into(), reord.iter().map(|w| Kernel::Sparse(w, d)).collect(), bytes + io_bytes));
                    if args.tune {
                        let n_tile = [8, 16, 32, 64].into_iter().find(|&t| t >= n).unwrap_or(64);
                        for warp_m_tiles in sparse_tc::layout::SPMM_CONFIGS {
                            if n_tile / 8 > sparse_tc::layout::spmm_max_nt(warp_m_tiles) {
                                continue;
                            }
                            for s in tune_splits.into_iter().chain([Some(12), Some(16)]).filter(|s| s.is_none_or(|s| s <= k_tiles)) {
                                let name = format!("sparse_m{warp_m_tiles}s{}", s.map_or("A".into(), |s| s.to_string()));
                                let o = LinearOptions { splits: s, block: Some(BlockShape { row_tiles: 4, warp_m_tiles }) };
                                kernels.push((name, reord.iter().map(|w| Kernel::Sparse(w, o)).collect(), bytes + io_bytes));
                            }
                        }
                    }
                }
                let results = time_case(&gpu, &cb, &kernels, &x, args.reps);
                let base = results[0].median();
                let mut line = format!("{m:>6}x{k:<6} n={n:<3} s={sparsity:<4}");
                for r in &results {
                    let med = r.median();
                    let tbs = r.bytes as f64 / (med * 1e-6) / 1e12;
                    let ok = r.max_rel_err <= tol;
                    if !ok {
                        failures += 1;
                    }
                    let _ = writeln!(
                        csv,
                        "{},{},{m},{k},{n},{sparsity},{},{med:.2},{:.2},{:.2},{:.2},{},{tbs:.3},{:.1},{:.3},{:.2e}",
                        gpu.name(), T::DTYPE.name(), r.name, pct(&r.times_us, 0.1), pct(&r.times_us, 0.9),
                        2.0 * (m * k * n) as f64 / (med * 1e-6) / 1e12, r.bytes, 100.0 * tbs * 1e12 / copy_bw, base / med, r.max_rel_err
                    );
                    let _ = write!(line, " | {} {med:.1}us {:.2}x {tbs:.2}TB/s{}", r.name, base / med, if ok { "" } else { " FAIL" });
                }
                println!("{line}");
                let _ = writeln!(summary, "{line}");
            }
        }
    }
    if let Some(path) = &args.csv {
        std::fs::File::create(path).unwrap().write_all(csv.as_bytes()).unwrap();
        println!("wrote {path}");
    }
    println!("\n==== summary ({}, copy {:.3} TB/s) ====\n{summary}", gpu.name(), copy_bw / 1e12);
    if failures > 0 {
        println!("{failures} kernel results disagreed with cuBLAS (max rel err > {tol:.1e})");
        std::process::exit(1);
    }
}

fn main() {
    let args = parse_args();
    match args.dtype {
        Dtype::F16 => run::<f16>(&args),
        Dtype::Bf16 => run::<bf16>(&args),
    }
}
