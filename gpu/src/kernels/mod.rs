//! The kernels, and their exported entry points.
//!
//! Every entry is `#[no_mangle] extern "ptx-kernel"`, monomorphised per element type
//! (`f16`, `bf16`) and per token-tile width `N_TILE = 8·NT` (8, 16, 32, 64). The host picks
//! the entry by name: `{kernel}_{dtype}_n{N_TILE}`.
//!
//! Common launch shape of the GEMM-like kernels: grid `(work items, ceil(N / N_TILE), 1)`,
//! where the dense kernel's work items are `full` whole row tiles followed by the remaining
//! row tiles split `splits` ways along K (`tile::WorkItem`), and the sparse kernel's are
//! equal ranges of the row-major tile sequence (`tile::StreamRange`), as are the bitmap
//! kernel's (`bitmap_linear_{dtype}_n{N_TILE}_m{MT}`, ranges of 256×64 panels); dynamic shared memory
//! as given by `layout::{dense,spmm}_smem_bytes` (shared with the host).
//!
//! The model operations between the matmuls (`norm`, `elementwise`, `embed`, `rope`, `sample`,
//! built on `rowwise`) are monomorphised per element type only: `{op}_{dtype}`, one-dimensional
//! blocks of whole warps and grids of any size (each loops grid-stride over its rows or chunks;
//! the host launches at most one wave of resident blocks); the row-wise ones (norms, `argmax`,
//! `sample`) take `rowwise::SCRATCH_BYTES` of dynamic shared memory.

pub mod attention;
pub mod bitmap;
pub mod dense;
pub mod elementwise;
pub mod embed;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod rowwise;
pub mod sample;
pub mod spmm;
pub mod tile;

use crate::mma::{Bf16, F16};
use core::ptr;

macro_rules! dense_entries {
    ($($name:ident: $elem:ty, $rt:literal, $mt:literal, $nt:literal;)*) => {$(
        /// Dense `Y = X · Wᵀ` (see [`dense::dense_linear`]).
        ///
        /// # Safety
        /// See [`dense::dense_linear`].
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $name(
            w: *const u16, ldw: u32, x: *const u16, ldx: u32, y: *mut u16, ldy: u32,
            partial: *mut f32, counters: *mut u32, m: u32, n: u32, k: u32, full: u32, splits: u32,
        ) {
            dense::dense_linear::<$elem, $rt, $mt, $nt>(w, ldw, x, ldx, y, ldy, partial, counters, m, n, k, full, splits);
        }
    )*};
}

macro_rules! spmm_entries {
    ($($name:ident: $elem:ty, $mt:literal, $nt:literal;)*) => {$(
        /// Sparse `Y = X · Wᵀ` on Tiled-CSL weights (see [`spmm::spmm_linear`]).
        ///
        /// # Safety
        /// See [`spmm::spmm_linear`].
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $name(
            tile_offsets: *const u32, words: *const u32, x: *const u16, ldx: u32,
            y: *mut u16, ldy: u32, partial: *mut f32, m: u32, n: u32, k: u32, blocks: u32,
            ring_words: u32, evict_first: u32, flags: *mut u32, launch: u32,
        ) {
            spmm::spmm_linear::<$elem, $mt, $nt, { crate::layout::block_threads(crate::layout::SPMM_ROW_TILES, $mt) }>(
                tile_offsets, words, x, ldx, y, ldy, partial, m, n, k, blocks, ring_words, evict_first != 0, flags, launch,
            );
        }
    )*};
}

macro_rules! bitmap_entries {
    ($($name:ident: $elem:ty, $mt:literal, $nt:literal;)*) => {$(
        /// Sparse `Y = X · Wᵀ` on bitmap weights (see [`bitmap::bitmap_linear`]).
        ///
        /// # Safety
        /// See [`bitmap::bitmap_linear`].
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $name(
            tile_offsets: *const u32, data: *const u8, x: *const u16, ldx: u32,
            y: *mut u16, ldy: u32, partial: *mut f32, m: u32, n: u32, k: u32, blocks: u32,
            slot_bytes: u32, evict_first: u32, flags: *mut u32, launch: u32,
        ) {
            bitmap::bitmap_linear::<$elem, $mt, $nt, { crate::layout::block_threads(crate::layout::SPMM_ROW_TILES, $mt) }>(
                tile_offsets, data, x, ldx, y, ldy, partial, m, n, k, blocks, slot_bytes, evict_first != 0, flags, launch,
            );
        }
    )*};
}

macro_rules! reduce_entries {
    ($($streamk:ident: $elem:ty;)*) => {$(
        /// Deterministic split-K reduction of the sparse kernel (see [`reduce::streamk_reduce`]).
        ///
        /// # Safety
        /// See [`reduce::streamk_reduce`].
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $streamk(
            partial: *const f32, y: *mut u16, ldy: u32, m: u32, n: u32, k_tiles: u32, blocks: u32, n_tile: u32,
            flags: *const u32, launch: u32,
        ) {
            reduce::streamk_reduce::<$elem>(partial, y, ldy, m, n, k_tiles, blocks, n_tile, flags, launch);
        }
    )*};
}

dense_entries! {
    dense_linear_f16_n8_r1_m1: F16, 1, 1, 1;
    dense_linear_f16_n16_r1_m1: F16, 1, 1, 2;
    dense_linear_f16_n32_r1_m1: F16, 1, 1, 4;
    dense_linear_f16_n64_r1_m1: F16, 1, 1, 8;
    dense_linear_f16_n8_r2_m1: F16, 2, 1, 1;
    dense_linear_f16_n16_r2_m1: F16, 2, 1, 2;
    dense_linear_f16_n32_r2_m1: F16, 2, 1, 4;
    dense_linear_f16_n64_r2_m1: F16, 2, 1, 8;
    dense_linear_f16_n8_r2_m2: F16, 2, 2, 1;
    dense_linear_f16_n16_r2_m2: F16, 2, 2, 2;
    dense_linear_f16_n32_r2_m2: F16, 2, 2, 4;
    dense_linear_f16_n64_r2_m2: F16, 2, 2, 8;
    dense_linear_f16_n8_r4_m2: F16, 4, 2, 1;
    dense_linear_f16_n16_r4_m2: F16, 4, 2, 2;
    dense_linear_f16_n32_r4_m2: F16, 4, 2, 4;
    dense_linear_f16_n64_r4_m2: F16, 4, 2, 8;
    dense_linear_bf16_n8_r1_m1: Bf16, 1, 1, 1;
    dense_linear_bf16_n16_r1_m1: Bf16, 1, 1, 2;
    dense_linear_bf16_n32_r1_m1: Bf16, 1, 1, 4;
    dense_linear_bf16_n64_r1_m1: Bf16, 1, 1, 8;
    dense_linear_bf16_n8_r2_m1: Bf16, 2, 1, 1;
    dense_linear_bf16_n16_r2_m1: Bf16, 2, 1, 2;
    dense_linear_bf16_n32_r2_m1: Bf16, 2, 1, 4;
    dense_linear_bf16_n64_r2_m1: Bf16, 2, 1, 8;
    dense_linear_bf16_n8_r2_m2: Bf16, 2, 2, 1;
    dense_linear_bf16_n16_r2_m2: Bf16, 2, 2, 2;
    dense_linear_bf16_n32_r2_m2: Bf16, 2, 2, 4;
    dense_linear_bf16_n64_r2_m2: Bf16, 2, 2, 8;
    dense_linear_bf16_n8_r4_m2: Bf16, 4, 2, 1;
    dense_linear_bf16_n16_r4_m2: Bf16, 4, 2, 2;
    dense_linear_bf16_n32_r4_m2: Bf16, 4, 2, 4;
    dense_linear_bf16_n64_r4_m2: Bf16, 4, 2, 8;
}

spmm_entries! {
    spmm_linear_f16_n8_m2: F16, 2, 1;
    spmm_linear_f16_n16_m2: F16, 2, 2;
    spmm_linear_f16_n32_m2: F16, 2, 4;
    spmm_linear_f16_n64_m2: F16, 2, 8;
    spmm_linear_f16_n8_m4: F16, 4, 1;
    spmm_linear_f16_n16_m4: F16, 4, 2;
    spmm_linear_f16_n32_m4: F16, 4, 4;
    spmm_linear_bf16_n8_m2: Bf16, 2, 1;
    spmm_linear_bf16_n16_m2: Bf16, 2, 2;
    spmm_linear_bf16_n32_m2: Bf16, 2, 4;
    spmm_linear_bf16_n64_m2: Bf16, 2, 8;
    spmm_linear_bf16_n8_m4: Bf16, 4, 1;
    spmm_linear_bf16_n16_m4: Bf16, 4, 2;
    spmm_linear_bf16_n32_m4: Bf16, 4, 4;
}

bitmap_entries! {
    bitmap_linear_f16_n8_m2: F16, 2, 1;
    bitmap_linear_f16_n16_m2: F16, 2, 2;
    bitmap_linear_f16_n32_m2: F16, 2, 4;
    bitmap_linear_f16_n64_m2: F16, 2, 8;
    bitmap_linear_f16_n8_m4: F16, 4, 1;
    bitmap_linear_f16_n16_m4: F16, 4, 2;
    bitmap_linear_f16_n32_m4: F16, 4, 4;
    bitmap_linear_bf16_n8_m2: Bf16, 2, 1;
    bitmap_linear_bf16_n16_m2: Bf16, 2, 2;
    bitmap_linear_bf16_n32_m2: Bf16, 2, 4;
    bitmap_linear_bf16_n64_m2: Bf16, 2, 8;
    bitmap_linear_bf16_n8_m4: Bf16, 4, 1;
    bitmap_linear_bf16_n16_m4: Bf16, 4, 2;
    bitmap_linear_bf16_n32_m4: Bf16, 4, 4;
}

reduce_entries! {
    streamk_reduce_f16: F16;
    streamk_reduce_bf16: Bf16;
}

/// The model-operation entries of one element type (see the module docs; each kernel's
/// safety contract is that of the function it calls, which the host meets by validating the
/// operands first).
macro_rules! model_op_entries {
    ($elem:ty, $rms:ident, $add_rms:ident, $ln:ident, $add_ln:ident, $add_assign:ident, $add_bias:ident,
     $silu_mul:ident, $relu:ident, $embed:ident, $gather:ident, $rope_half:ident, $rope_inter:ident,
     $argmax:ident, $sample:ident) => {
        /// RMSNorm of each row (see [`norm::row_norm`]).
        ///
        /// # Safety
        /// See [`norm::row_norm`].
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $rms(
            x: *const u16, ldx: u32, weight: *const u16, out: *mut u16, ldo: u32, rows: u32, cols: u32, eps: f32,
        ) {
            crate::griddep::begin_dependent();
            norm::row_norm::<$elem, false, false>(
                x as *mut u16, ldx, ptr::null(), 0, weight, ptr::null(), out, ldo, rows, cols, eps,
            );
        }

        /// `residual += delta`, then RMSNorm of each row (see [`norm::row_norm`]).
        ///
        /// # Safety
        /// See [`norm::row_norm`].
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $add_rms(
            residual: *mut u16, ldx: u32, delta: *const u16, ldd: u32, weight: *const u16, out: *mut u16, ldo: u32,
            rows: u32, cols: u32, eps: f32,
        ) {
            crate::griddep::begin_dependent();
            norm::row_norm::<$elem, false, true>(residual, ldx, delta, ldd, weight, ptr::null(), out, ldo, rows, cols, eps);
        }

        /// LayerNorm of each row (see [`norm::row_norm`]).
        ///
        /// # Safety
        /// See [`norm::row_norm`].
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $ln(
            x: *const u16, ldx: u32, weight: *const u16, bias: *const u16, out: *mut u16, ldo: u32, rows: u32, cols: u32,
            eps: f32,
        ) {
            crate::griddep::begin_dependent();
            norm::row_norm::<$elem, true, false>(x as *mut u16, ldx, ptr::null(), 0, weight, bias, out, ldo, rows, cols, eps);
        }

        /// `residual += delta`, then LayerNorm of each row (see [`norm::row_norm`]).
        ///
        /// # Safety
        /// See [`norm::row_norm`].
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $add_ln(
            residual: *mut u16, ldx: u32, delta: *const u16, ldd: u32, weight: *const u16, bias: *const u16, out: *mut u16,
            ldo: u32, rows: u32, cols: u32, eps: f32,
        ) {
            crate::griddep::begin_dependent();
            norm::row_norm::<$elem, true, true>(residual, ldx, delta, ldd, weight, bias, out, ldo, rows, cols, eps);
        }

        /// `acc += x` (see [`elementwise::elementwise`]).
        ///
        /// # Safety
        /// See [`elementwise::elementwise`].
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $add_assign(acc: *mut u16, lda: u32, x: *const u16, ldx: u32, rows: u32, cols: u32) {
            crate::griddep::begin_dependent();
            elementwise::elementwise::<$elem, { elementwise::ADD_ASSIGN }>(acc, lda, x, ldx, ptr::null_mut(), 0, rows, cols);
        }

        /// `x += bias` per column (see [`elementwise::elementwise`]).
        ///
        /// # Safety
        /// See [`elementwise::elementwise`].
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $add_bias(x: *mut u16, ldx: u32, bias: *const u16, rows: u32, cols: u32) {
            crate::griddep::begin_dependent();
            elementwise::elementwise::<$elem, { elementwise::ADD_BIAS }>(x, ldx, bias, 0, ptr::null_mut(), 0, rows, cols);
        }

        /// `out = silu(gate) · up` (see [`elementwise::elementwise`]).
        ///
        /// # Safety
        /// See [`elementwise::elementwise`].
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $silu_mul(
            gate: *const u16, ldg: u32, up: *const u16, ldu: u32, out: *mut u16, ldo: u32, rows: u32, cols: u32,
        ) {
            crate::griddep::begin_dependent();
            elementwise::elementwise::<$elem, { elementwise::SILU_MUL }>(gate as *mut u16, ldg, up, ldu, out, ldo, rows, cols);
        }

        /// `x = relu(x)` (see [`elementwise::elementwise`]).
        ///
        /// # Safety
        /// See [`elementwise::elementwise`].
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $relu(x: *mut u16, ldx: u32, rows: u32, cols: u32) {
            crate::griddep::begin_dependent();
            elementwise::elementwise::<$elem, { elementwise::RELU }>(x, ldx, ptr::null(), 0, ptr::null_mut(), 0, rows, cols);
        }

        /// `out[i] = table[ids[i] + offset]` (`+=` when `accumulate` ≠ 0; see
        /// [`embed::gather_rows`]).
        ///
        /// # Safety
        /// See [`embed::gather_rows`].
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $embed(
            table: *const u16, table_rows: u32, ldt: u32, ids: *const u32, offset: u32, accumulate: u32, out: *mut u16,
            ldo: u32, rows: u32, cols: u32,
        ) {
            crate::griddep::begin_dependent();
            embed::gather_rows::<$elem>(table, table_rows, ldt, ids, offset, accumulate != 0, out, ldo, rows, cols);
        }

        /// `out[i] = x[rows_[i]]` (see [`embed::gather_rows`]).
        ///
        /// # Safety
        /// See [`embed::gather_rows`].
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $gather(
            x: *const u16, x_rows: u32, ldx: u32, picks: *const u32, out: *mut u16, ldo: u32, rows: u32, cols: u32,
        ) {
            crate::griddep::begin_dependent();
            embed::gather_rows::<$elem>(x, x_rows, ldx, picks, 0, false, out, ldo, rows, cols);
        }

        /// RoPE, pairs `(j, j + head_dim/2)` (see [`rope::rope`]).
        ///
        /// # Safety
        /// See [`rope::rope`].
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $rope_half(
            x: *mut u16, positions: *const u32, rows: u32, ld: u32, heads: u32, head_dim: u32, theta: f32,
        ) {
            crate::griddep::begin_dependent();
            rope::rope::<$elem, false>(x, positions, rows, ld, heads, head_dim, theta);
        }

        /// RoPE, pairs `(2j, 2j + 1)` (see [`rope::rope`]).
        ///
        /// # Safety
        /// See [`rope::rope`].
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $rope_inter(
            x: *mut u16, positions: *const u32, rows: u32, ld: u32, heads: u32, head_dim: u32, theta: f32,
        ) {
            crate::griddep::begin_dependent();
            rope::rope::<$elem, true>(x, positions, rows, ld, heads, head_dim, theta);
        }

        /// Greedy token of each row (see [`sample::argmax`]).
        ///
        /// # Safety
        /// See [`sample::argmax`].
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $argmax(logits: *const u16, rows: u32, cols: u32, ld: u32, out: *mut u32) {
            crate::griddep::begin_dependent();
            sample::argmax::<$elem>(logits, rows, cols, ld, out);
        }

        /// Sampled token of each row (see [`sample::sample`]).
        ///
        /// # Safety
        /// See [`sample::sample`].
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $sample(
            logits: *const u16, rows: u32, cols: u32, ld: u32, out: *mut u32, temperature: f32, top_k: u32,
            top_p: f32, seed: u64, step: u64,
        ) {
            crate::griddep::begin_dependent();
            sample::sample::<$elem>(logits, rows, cols, ld, out, temperature, top_k, top_p, seed, step);
        }
    };
}

model_op_entries!(
    F16, rms_norm_f16, add_rms_norm_f16, layer_norm_f16, add_layer_norm_f16, add_assign_f16, add_bias_f16,
    silu_mul_f16, relu_f16, embed_f16, gather_rows_f16, rope_half_split_f16, rope_interleaved_f16, argmax_f16,
    sample_f16
);
model_op_entries!(
    Bf16, rms_norm_bf16, add_rms_norm_bf16, layer_norm_bf16, add_layer_norm_bf16, add_assign_bf16, add_bias_bf16,
    silu_mul_bf16, relu_bf16, embed_bf16, gather_rows_bf16, rope_half_split_bf16, rope_interleaved_bf16,
    argmax_bf16, sample_bf16
);
