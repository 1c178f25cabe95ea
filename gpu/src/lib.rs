//! Device side of `sparse_tc`: a small kernel DSL over PTX and the kernels written with it.
//!
//! This crate plays the role `cuda_std` plays in Rust-CUDA (whose crates.io release needs an
//! LLVM 7 toolchain that cannot be installed here). It is built only for
//! `nvptx64-nvidia-cuda` by the host crate's `build.rs`, twice: with `-C target-cpu=sm_80`
//! (portable) and with sm_90, PTX 8.3 and `--cfg sm90` (code under `#[cfg(sm90)]` uses
//! instructions only Hopper has).
//!
//! Layout of the DSL (one module per kind of instruction, one documented wrapper per PTX
//! instruction; kernels never contain `asm!`):
//! - [`thread`]: thread / block / warp / lane indices.
//! - [`shared`]: the dynamic shared-memory window and 32-bit shared addresses, `ld/st.shared`,
//!   and (sm90) the 8-byte exchange `atom.shared.exch.b64`.
//! - [`sync`]: `bar.sync` and `bar.warp.sync`.
//! - [`cp_async`]: `cp.async` 16-byte copies (plain, zero-fill, with an L2 policy), commit /
//!   wait groups.
//! - [`cache`]: L2 eviction policies (`createpolicy`) and `discard.global.L2`.
//! - [`griddep`]: programmatic dependent launch (`griddepcontrol`, sm90; no-ops otherwise).
//! - [`flag`]: completion flags between grids (`st.release` / `ld.acquire` at GPU scope) and
//!   `nanosleep`.
//! - [`ldmatrix`]: `ldmatrix` x1/x2/x4 and `.trans`.
//! - [`mma`]: typed fragments and `mma.sync.m16n8k16` (f16, bf16 → f32).
//! - [`convert`]: f32 → f16/bf16 rounding and f16 → f32 widening (`cvt`).
//! - [`warp`]: lane exchange within a warp (`shfl.sync.bfly`, `shfl.sync.up`), for warp
//!   reductions and scans.
//! - [`math`]: floating-point instructions plain operators do not reach (`sqrt.rn.f32`).
//! - [`bits`]: integer bit manipulation plain operators do not reach (`prmt.b32`).
//! - [`pipeline`]: an N-stage shared-memory pipeline built on `cp_async` and `sync`, and a
//!   wait for a run-time number of pending copy groups (pipelines with variable-size steps).
//! - [`layout`]: tile shapes and lane→element maps (pure Rust, shared with the host).
//! - [`numerics`]: exp, SiLU, RoPE frequencies and sin/cos, the sampler's weights and random
//!   numbers (pure Rust, shared with the host's CPU references so both compute the same bits).
//! - [`kernels`]: the dense GEMM, the sparse SpMM and the split-K reduction, and the model
//!   operations between them (norms, element-wise ops, embeddings, RoPE, argmax and sampling).

#![no_std]
#![feature(abi_ptx, asm_experimental_arch, stdarch_nvptx)]
#![allow(clippy::missing_safety_doc)]
// `unroll!` writes out every index up to 16 behind `if i < N`: the copies past an array's
// length are dead code, which this lint cannot see.
#![allow(clippy::out_of_bounds_indexing)]

/// `unroll!(i in 0..N => { body })`: the body for i = 0, 1, …, N-1, written out (N ≤ 16 and a
/// compile-time constant). Register arrays such as MMA accumulators must only ever be indexed
/// by constants, or they move to local memory; this makes the unrolling explicit instead of
/// hoping the optimiser does it.
macro_rules! unroll {
    ($i:ident in 0..$n:expr => $body:block) => {{
        const { assert!($n <= 16, "unroll! handles at most 16 iterations") };
        unroll!(@each $i, $n, $body, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    }};
    (@each $i:ident, $n:expr, $body:block, $($j:literal)*) => {
        $( if $j < $n { #[allow(non_upper_case_globals)] const $i: usize = $j; $body } )*
    };
}

pub mod bits;
pub mod cache;
pub mod convert;
pub mod cp_async;
pub mod flag;
pub mod griddep;
pub mod kernels;
pub mod layout;
pub mod ldmatrix;
pub mod math;
pub mod mma;
pub mod numerics;
pub mod pipeline;
pub mod shared;
pub mod sync;
pub mod thread;
pub mod warp;

/// Device code cannot unwind or print; a panic (which the kernels are written never to reach:
/// no slice indexing, no division by run-time zero) traps the kernel, which the host sees as a
/// launch failure instead of a wrong result.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: `trap` aborts the kernel; it has no operands and touches no memory.
    unsafe { core::arch::nvptx::trap() }
}
