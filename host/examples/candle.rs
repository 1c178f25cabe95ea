//! A candle model with sparse linear layers: a stack of SwiGLU MLP blocks (SmolLM2-135M's
//! sizes, 576 → 1536 → 576, random weights pruned 50% by magnitude) built from
//! `candle_nn::Linear`s, then the same model with each `Linear` swapped for
//! `sparse_tc::candle::SparseLinear` in one line. Checks that a sparse layer gives exactly what
//! the plain API (`Gpu::linear`, or the CPU linear) gives on the same data, and that the
//! sparse model agrees with candle's dense one within f16 rounding.
//!
//! ```text
//! cargo run --release --features candle --example candle                                    # candle's CPU device
//! . .ci/env.sh && . .ci/candle-cuda-env.sh && cargo run --release --features candle-cuda --example candle   # GPU
//! ```
//!
//! Exits non-zero when a check fails (the GPU bundle runs it as a test).

use candle_core::{DType, Device, Module, Tensor};
use half::f16;
use sparse_tc::candle::SparseLinear;
use sparse_tc::SparseWeight;
use std::process::ExitCode;

const HIDDEN: usize = 576;
const FFN: usize = 1536;
const BLOCKS: usize = 4;
const TOKENS: usize = 8;
const SPARSITY: f64 = 0.5;

/// One linear layer of the model: candle's dense `Linear`, or its sparse twin.
fn layer(weight: Tensor, sparse: bool) -> candle_core::Result<Box<dyn Module>> {
    let linear = candle_nn::Linear::new(weight, None);
    Ok(if sparse { Box::new(SparseLinear::from_linear(&linear)?) } else { Box::new(linear) })
}

/// `x + down(silu(gate(x)) · up(x))`, as in a LLaMA block's MLP.
struct Mlp {
    gate: Box<dyn Module>,
    up: Box<dyn Module>,
    down: Box<dyn Module>,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = (candle_nn::ops::silu(&self.gate.forward(x)?)? * self.up.forward(x)?)?;
        x + self.down.forward(&h)?
    }
}

/// Deterministic pseudo-random weights in [-1, 1) · scale, pruned by magnitude per row.
fn pruned(rows: usize, cols: usize, seed: u64, scale: f32) -> Vec<f16> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let w: Vec<f16> = (0..rows * cols)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            f16::from_f32(((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale)
        })
        .collect();
    SparseWeight::prune_magnitude(rows, cols, &w, SPARSITY).expect("valid shape").to_dense()
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let device = Device::cuda_if_available(0)?;
    println!("candle device: {device:?} (feature candle-cuda: {})", cfg!(feature = "candle-cuda"));
    let weights: Vec<[Tensor; 3]> = (0..BLOCKS as u64)
        .map(|b| -> candle_core::Result<[Tensor; 3]> {
            let t = |rows, cols, seed, scale| Tensor::from_vec(pruned(rows, cols, 3 * b + seed, scale), (rows, cols), &device);
            Ok([t(FFN, HIDDEN, 1, 0.08)?, t(FFN, HIDDEN, 2, 0.08)?, t(HIDDEN, FFN, 3, 0.05)?])
        })
        .collect::<candle_core::Result<_>>()?;
    let model = |sparse: bool| -> candle_core::Result<Vec<Mlp>> {
        weights
            .iter()
            .map(|[g, u, d]| Ok(Mlp { gate: layer(g.clone(), sparse)?, up: layer(u.clone(), sparse)?, down: layer(d.clone(), sparse)? }))
            .collect()
    };
    let (dense, sparse) = (model(false)?, model(true)?);
    let x = Tensor::from_vec(pruned(TOKENS, HIDDEN, 99, 1.0), (1, TOKENS, HIDDEN), &device)?;

    // One sparse layer against the plain API on the same data.
    let first = SparseLinear::new(&weights[0][0], None)?;
    let got: Vec<f16> = first.forward(&x)?.flatten_all()?.to_vec1()?;
    let xs: Vec<f16> = x.flatten_all()?.to_vec1()?;
    let w = SparseWeight::from_dense(FFN, HIDDEN, &weights[0][0].flatten_all()?.to_vec1::<f16>()?)?;
    let want = plain_linear(&device, &xs, &w)?;
    let layer_equal = got == want;
    println!("one sparse layer ({FFN}×{HIDDEN}, {TOKENS} tokens) vs the plain API: {}", if layer_equal { "equal" } else { "DIFFERENT" });

    // The whole model, dense (candle) and sparse (sparse_tc), on the same input.
    let run = |m: &[Mlp]| -> candle_core::Result<Tensor> { m.iter().try_fold(x.clone(), |h, b| b.forward(&h)) };
    let (yd, ys) = (run(&dense)?, run(&sparse)?);
    let diff = (yd.to_dtype(DType::F32)? - ys.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = yd.to_dtype(DType::F32)?.abs()?.max_all()?.to_scalar::<f32>()?;
    // Both compute in f16 with f32 sums but round at different points (candle's activations,
    // our outputs) and sum in different orders: a few f16 ulps of the output's scale after
    // 3·BLOCKS layers; 1% of the scale is far above that and far below a wrong result.
    let model_close = diff.is_finite() && diff <= 0.01 * scale;
    println!(
        "{BLOCKS} SwiGLU blocks at {:.0}% sparsity, {TOKENS} tokens: max |dense − sparse| = {diff:.2e} (output scale {scale:.2}): {}",
        SPARSITY * 100.0,
        if model_close { "agree" } else { "DISAGREE" }
    );
    Ok(layer_equal && model_close)
}

/// The plain API's `x · Wᵀ`: our GPU handle and uploads on a GPU, the CPU linear otherwise.
fn plain_linear(device: &Device, x: &[f16], w: &SparseWeight<f16>) -> Result<Vec<f16>, sparse_tc::Error> {
    let n = x.len() / w.cols();
    if device.is_cuda() {
        let gpu = sparse_tc::Gpu::new()?;
        let y = gpu.linear(&gpu.upload(n, w.cols(), x)?, &gpu.upload_sparse_as(w, sparse_tc::sparse::FormatChoice::Auto)?)?;
        gpu.download(&y)
    } else {
        sparse_tc::cpu::linear_sparse(x, n, w)
    }
}
