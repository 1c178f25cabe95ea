//! cudarc allocates and streams, sparse_tc computes: `Y = X · Wᵀ` on cudarc's memory and
//! stream without a copy through the host, checked against `Gpu::linear` on uploaded copies.
//!
//! ```text
//! cargo run --release --features cudarc --example cudarc
//! ```
//!
//! Exits non-zero when a result differs (so the GPU bundle can run it as a test); says
//! "SKIPPED" and exits 0 without a GPU.

use cudarc::driver::{CudaContext, DevicePtr, DevicePtrMut};
use half::f16;
use sparse_tc::{DeviceMatrix, DeviceSparseWeight, Gpu, RawSparseParts, SparseWeight};
use std::process::ExitCode;

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
    // Without a driver or GPU, say so and stop (cudarc would panic loading the driver).
    let plain = match Gpu::new() {
        Ok(g) => g,
        Err(e) => {
            println!("SKIPPED cudarc example: no usable GPU ({e})");
            return Ok(true);
        }
    };
    let ctx = CudaContext::new(0)?;
    let stream = ctx.new_stream()?;
    let (n, k, m) = (8usize, 4096usize, 1024usize);
    let x: Vec<f16> = (0..n * k).map(|i| f16::from_f32(((i * 7919) % 17) as f32 / 17.0 - 0.5)).collect();
    let w: Vec<f16> = (0..m * k).map(|i| f16::from_f32(((i * 104729) % 23) as f32 / 23.0 - 0.5)).collect();
    let sparse = SparseWeight::prune_magnitude(m, k, &w, 0.7)?;
    let bits = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<u16>>();

    // cudarc's memory, written on cudarc's stream.
    let x_dev = stream.clone_htod(&bits(&x))?;
    let w_dev = stream.clone_htod(&bits(&w))?;
    let offsets_dev = stream.clone_htod(sparse.tile_offsets())?;
    let words_dev = stream.clone_htod(sparse.words())?;
    let mut y_dense = stream.alloc_zeros::<u16>(n * m)?;
    let mut y_sparse = stream.alloc_zeros::<u16>(n * m)?;

    // A handle on cudarc's context and stream: what cudarc queued before runs first.
    // SAFETY: cudarc's context is the device's primary context (retained by the handle too);
    // its stream outlives `gpu` (dropped at the end of this function, after a synchronize).
    let gpu = unsafe { Gpu::from_raw_stream(ctx.cu_ctx().cast(), stream.cu_stream().cast())? };
    {
        let (xp, _sx) = x_dev.device_ptr(&stream);
        let (wp, _sw) = w_dev.device_ptr(&stream);
        let (op, _so) = offsets_dev.device_ptr(&stream);
        let (dp, _sd) = words_dev.device_ptr(&stream);
        let (yd, _syd) = y_dense.device_ptr_mut(&stream);
        let (ys, _sys) = y_sparse.device_ptr_mut(&stream);
        // SAFETY: the slices live until after `gpu.synchronize()` below; rows are contiguous
        // (ld = cols, multiples of 8); everything is ordered on cudarc's stream.
        let (xm, wm, mut ydm, mut ysm) = unsafe {
            (
                DeviceMatrix::<f16>::from_raw_parts(&gpu, xp, n, k, k)?,
                DeviceMatrix::<f16>::from_raw_parts(&gpu, wp, m, k, k)?,
                DeviceMatrix::<f16>::from_raw_parts(&gpu, yd, n, m, m)?,
                DeviceMatrix::<f16>::from_raw_parts(&gpu, ys, n, m, m)?,
            )
        };
        let parts = RawSparseParts {
            format: sparse_tc::sparse::SparseFormat::TiledCsl,
            rows: m,
            cols: k,
            tile_offsets: op,
            tile_offsets_len: sparse.tile_offsets().len(),
            data: dp,
            data_len: sparse.words().len(),
            reordered: sparse.is_reordered(),
        };
        // SAFETY: as above; the arrays are not modified while the weight lives.
        let sw = unsafe { DeviceSparseWeight::<f16>::from_raw_parts(&gpu, parts)? };
        gpu.linear_into(&xm, &wm, &mut ydm, Default::default())?;
        gpu.linear_into(&xm, &sw, &mut ysm, Default::default())?;
        gpu.synchronize()?;
    }
    // Read back with cudarc (same stream: after our kernels).
    let got_dense = stream.clone_dtoh(&y_dense)?;
    let got_sparse = stream.clone_dtoh(&y_sparse)?;

    // The plain API on uploaded copies.
    let xu = plain.upload(n, k, &x)?;
    let want_dense = bits(&plain.download(&plain.linear(&xu, &plain.upload(m, k, &w)?)?)?);
    let want_sparse = bits(&plain.download(&plain.linear(&xu, &plain.upload_sparse(&sparse)?)?)?);
    let ok = got_dense == want_dense && got_sparse == want_sparse;
    println!(
        "cudarc example on {}: dense {}, sparse (70%) {} ({}×{} · {}×{}ᵀ)",
        gpu.name(),
        if got_dense == want_dense { "equal" } else { "DIFFERENT" },
        if got_sparse == want_sparse { "equal" } else { "DIFFERENT" },
        n,
        k,
        m,
        k
    );
    Ok(ok)
}
