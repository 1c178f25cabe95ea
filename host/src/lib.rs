//! # sparse_tc — sparse LLM inference on NVIDIA Tensor Cores
//!
//! Pruned LLM weights are mostly zeros, yet a dense GEMM reads every byte, and the skinny
//! matmuls of token generation are bound by memory bandwidth. This crate stores weights in a
//! compressed tiled format, loads only the nonzeros ("Load-as-Sparse"), rebuilds dense tiles
//! in shared memory and multiplies them on Tensor Cores ("Compute-as-Dense"), after
//! Flash-LLM (Xia et al., VLDB 2024).
//!
//! ```no_run
//! use half::f16;
//! use sparse_tc::{Gpu, SparseWeight};
//! # fn main() -> sparse_tc::Result<()> {
//! let (m, k, n) = (4096, 4096, 8);
//! let w: Vec<f16> = vec![f16::from_f32(0.01); m * k];
//! let x: Vec<f16> = vec![f16::from_f32(1.0); n * k];
//! let gpu = Gpu::new()?;
//! let x = gpu.upload(n, k, &x)?;
//! let sparse = gpu.upload_sparse(&SparseWeight::prune_magnitude(m, k, &w, 0.8)?)?;
//! let y = gpu.linear(&x, &sparse)?;      // Y[n×m] = X · Wᵀ, like nn.Linear
//! let y_host: Vec<f16> = gpu.download(&y)?;
//! # Ok(()) }
//! ```
//!
//! Layout: [`Gpu`] (context, stream, the embedded PTX module), [`DeviceMatrix`] /
//! [`DeviceSparseWeight`] (device operands), [`SparseWeight`] (host format, packing, files),
//! [`cpu`] (reference and fallback paths), [`cublas`] (the baseline, loaded at run time).
//!
//! ## Threads and other libraries
//!
//! A [`Gpu`] is `Send + Sync`: share one handle (`Arc<Gpu>`) between a server's threads; each
//! call queues its work on the handle's one stream as one step (see [`Gpu`]). To use memory
//! and streams of cudarc, candle or your own CUDA code without copies:
//! [`Gpu::from_raw_stream`] (queue on the caller's stream, in its context) or
//! [`Gpu::from_raw_context`]; [`DeviceMatrix::from_raw_parts`] and
//! [`DeviceSparseWeight::from_raw_parts`] ([`RawSparseParts`]) wrap device memory the caller
//! owns (validated as far as the host can; never freed by this crate). [`Gpu::new`] uses the
//! device's primary context, as cudarc and candle do, so their pointers are valid here. The
//! example `host/examples/cudarc.rs` (feature `cudarc`) shows the whole round trip.

#[cfg(feature = "candle")]
pub mod candle;
mod checked;
pub mod cpu;
pub mod cublas;
mod dependent_launch;
mod element;
mod error;
mod gpu;
mod graph;
mod linear;
mod matrix;
mod memory;
pub mod model;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod ops;
pub mod sparse;

/// Tile shapes and fragment maps shared with the device crate (`gpu/src/layout.rs`).
#[path = "../../gpu/src/layout.rs"]
pub mod layout;

pub use element::{Dtype, Element};
pub use error::{Error, Result};
pub use gpu::{Gpu, DEPENDENT_LAUNCH_VAR};
pub use graph::Recording;
pub use linear::{BlockShape, LinearOptions, LinearWeight};
pub use matrix::{DeviceMatrix, DeviceSparseWeight, RawSparseParts};
pub use ops::{DeviceIndices, RopeStyle, SamplingParams};
pub use sparse::{BitmapWeight, SparseWeight};

/// The PTX of the device crate for sm_80 and later (A100, H100, …), built by `host/build.rs`.
pub const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/sparse_tc_gpu.ptx"));

/// The PTX of the device crate for sm_90 and later (H100, …), with instructions the portable
/// build cannot use; [`Gpu`] loads it on compute capability 9.0+ (see [`Gpu::ptx_target`]).
pub const PTX_SM90: &str = include_str!(concat!(env!("OUT_DIR"), "/sparse_tc_gpu_sm90.ptx"));

/// The README's Rust snippets, compiled as doctests so that they stay correct as written.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeSnippets;
