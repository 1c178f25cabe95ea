//! Demo: prune a random weight, pack it as Tiled-CSL, run sparse and dense `linear`, check
//! they agree, and print times, speedup and effective bandwidth.
//!
//! `cargo run --release --example spmm -- [SPARSITY [M K N]]` (default 0.8, 28672 4096 16).
//! Without a GPU it says so and runs the multi-threaded CPU SpMM against the CPU dense path.

use anyhow::{ensure, Result};
use clap::Parser;
use half::f16;
use sparse_tc::{cpu, Gpu, SparseWeight};
use std::time::Instant;

mod common;

/// Prune a random weight, pack it, and run the sparse and the dense `linear` on it.
#[derive(Parser)]
struct Args {
    /// Share of W's weights pruned, in [0, 1].
    #[arg(default_value_t = 0.8, value_parser = sparsity)]
    sparsity: f64,
    /// Output features (rows of W); M, K and N go together.
    #[arg(value_parser = clap::value_parser!(u32).range(1..), requires_all = ["k", "n"])]
    m: Option<u32>,
    /// Input features.
    #[arg(value_parser = clap::value_parser!(u32).range(1..))]
    k: Option<u32>,
    /// Tokens.
    #[arg(value_parser = clap::value_parser!(u32).range(1..))]
    n: Option<u32>,
}

fn sparsity(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s} is not a number in [0, 1]")),
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    let sparsity = a.sparsity;
    let dims: Vec<usize> = [a.m, a.k, a.n].iter().flatten().map(|&v| v as usize).collect();
    let (m, k, n) = match dims[..] {
        [m, k, n] => (m, k, n),
        _ => (28672, 4096, 16),
    };
    let gpu = Gpu::new();
    // Without a GPU the CPU path runs; keep it quick.
    let (m, k) = if gpu.is_err() && dims.is_empty() { (4096, 4096) } else { (m, k) };
    println!("Y[{n}×{m}] = X[{n}×{k}] · W[{m}×{k}]ᵀ, W pruned to {:.0}% sparsity, f16", sparsity * 100.0);

    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let w = common::random_f16s(&mut seed, m * k);
    let x = common::random_f16s(&mut seed, n * k);

    let t = Instant::now();
    let mut sparse = SparseWeight::prune_magnitude(m, k, &w, sparsity)?;
    sparse.reorder_for_banks();
    let pruned = sparse.to_dense();
    println!(
        "packed in {:.2} s: {} nonzeros, {:.1} MB stored vs {:.1} MB dense ({:.2}× fewer bytes)",
        t.elapsed().as_secs_f64(),
        sparse.nnz(),
        sparse.stored_bytes() as f64 / 1e6,
        (m * k * 2) as f64 / 1e6,
        (m * k * 2) as f64 / sparse.stored_bytes() as f64
    );

    let gpu = match gpu {
        Ok(g) => g,
        Err(e) => {
            println!("No GPU available ({e}); running the CPU path.");
            let t = Instant::now();
            let ys = cpu::linear_sparse(&x, n, &sparse)?;
            let ts = t.elapsed();
            let t = Instant::now();
            let yd = cpu::linear_dense(&x, n, &pruned, m, k);
            let td = t.elapsed();
            let err = max_rel_diff(&ys, &yd);
            println!("CPU sparse {:.1} ms, CPU dense {:.1} ms, max relative difference {err:.1e}", ts.as_secs_f64() * 1e3, td.as_secs_f64() * 1e3);
            ensure!(err <= 4.0 / 2048.0, "sparse and dense CPU paths disagree");
            return Ok(());
        }
    };
    println!("GPU: {} ({} SMs, {} kernels)", gpu.name(), gpu.sm_count(), gpu.ptx_target());
    let dx = gpu.upload(n, k, &x)?;
    let dw_dense = gpu.upload(m, k, &pruned)?;
    let dw_sparse = gpu.upload_sparse(&sparse)?;
    let mut y_dense = gpu.zeros(n, m)?;
    let mut y_sparse = gpu.zeros(n, m)?;
    let (mut dense, mut sparse_run) = (
        || gpu.linear_into(&dx, &dw_dense, &mut y_dense, Default::default()),
        || gpu.linear_into(&dx, &dw_sparse, &mut y_sparse, Default::default()),
    );
    let t = common::timing::median_us(&gpu, 50, &mut [&mut dense, &mut sparse_run])?;
    let (td, ts) = (t[0], t[1]);
    let (yd, ys) = (gpu.download(&y_dense)?, gpu.download(&y_sparse)?);
    let err = max_rel_diff(&ys, &yd);
    println!("max relative difference sparse vs dense: {err:.1e}");
    ensure!(err <= 4.0 / 2048.0, "sparse and dense GPU results disagree");
    let io = (n * k + n * m) * 2;
    println!("dense  kernel: {td:8.1} µs  {:.2} TB/s", (m * k * 2 + io) as f64 / (td * 1e-6) / 1e12);
    println!("sparse kernel: {ts:8.1} µs  {:.2} TB/s of stored bytes", (sparse.stored_bytes() + io) as f64 / (ts * 1e-6) / 1e12);
    println!("speedup: {:.2}× over our dense kernel", td / ts);
    Ok(())
}

/// max |a − b| / max |b|.
fn max_rel_diff(a: &[f16], b: &[f16]) -> f32 {
    let scale = b.iter().map(|v| v.to_f32().abs()).fold(1e-6f32, f32::max);
    a.iter().zip(b).map(|(p, q)| (p.to_f32() - q.to_f32()).abs()).fold(0.0, f32::max) / scale
}
