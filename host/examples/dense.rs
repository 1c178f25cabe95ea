//! Demo: the dense Tensor Core `linear` against a CPU check.
//!
//! `cargo run --release --example dense -- [M K N]` (default 11008 4096 16). On a GPU it
//! times the kernel with CUDA events and prints µs and TB/s; without one it says so and runs
//! the CPU path.

use anyhow::{ensure, Result};
use clap::Parser;
use sparse_tc::{cpu, Gpu};

mod common;

/// The dense Tensor Core `linear` against a CPU check: Y[N×M] = X[N×K] · W[M×K]ᵀ.
#[derive(Parser)]
struct Args {
    /// Output features (rows of W).
    #[arg(default_value_t = 11008, value_parser = clap::value_parser!(u32).range(1..))]
    m: u32,
    /// Input features.
    #[arg(default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    k: u32,
    /// Tokens.
    #[arg(default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    n: u32,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let (m, k, n) = (a.m as usize, a.k as usize, a.n as usize);
    println!("Y[{n}×{m}] = X[{n}×{k}] · W[{m}×{k}]ᵀ, f16 in, f32 accumulate");
    let mut seed = 0x1234_5678_9abc_def0u64;
    let w = common::random_f16s(&mut seed, m * k);
    let x = common::random_f16s(&mut seed, n * k);

    let t = std::time::Instant::now();
    let y_cpu = cpu::linear_dense(&x, n, &w, m, k);
    println!("CPU (f32 accumulate, {} threads): {:.1} ms", std::thread::available_parallelism().map_or(1, |p| p.get()), t.elapsed().as_secs_f64() * 1e3);

    let gpu = match Gpu::new() {
        Ok(g) => g,
        Err(e) => {
            println!("No GPU available ({e}); ran the CPU path only.");
            return Ok(());
        }
    };
    println!("GPU: {} ({} SMs, {} kernels)", gpu.name(), gpu.sm_count(), gpu.ptx_target());
    let dw = gpu.upload(m, k, &w)?;
    let dx = gpu.upload(n, k, &x)?;
    let mut dy = gpu.zeros(n, m)?;
    let median_us = common::timing::median_us(&gpu, 50, &mut [&mut || gpu.linear_into(&dx, &dw, &mut dy, Default::default())])?[0];
    let y = gpu.download(&dy)?;
    let max_err = y.iter().zip(&y_cpu).map(|(a, b)| (a.to_f32() - b.to_f32()).abs()).fold(0f32, f32::max);
    let max_ref = y_cpu.iter().map(|v| v.to_f32().abs()).fold(0f32, f32::max);
    println!("max |GPU − CPU| = {max_err:.2e} (max |Y| = {max_ref:.3})");
    ensure!(max_err <= 4.0 / 2048.0 * max_ref.max(1e-3), "GPU result disagrees with the CPU");
    let bytes = (m * k + n * k + n * m) * 2;
    println!("dense kernel: {median_us:.1} µs median, {:.2} TB/s effective", bytes as f64 / (median_us * 1e-6) / 1e12);
    Ok(())
}
