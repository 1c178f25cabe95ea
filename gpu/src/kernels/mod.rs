//! The kernels, and their exported entry points.
//!
//! Every entry is `#[no_mangle] extern "ptx-kernel"`, monomorphised per element type
//! (`f16`, `bf16`) and per token-tile width `N_TILE = 8·NT` (8, 16, 32, 64). The host picks
//! the entry by name: `{kernel}_{dtype}_n{N_TILE}`.
//!
//! Common launch shape of the GEMM-like kernels: grid `(work items, ceil(N / N_TILE), 1)`,
//! where the dense kernel's work items are `full` whole row tiles followed by the remaining
//! row tiles split `splits` ways along K (`tile::WorkItem`), and the sparse kernel's are
//! equal ranges of the row-major tile sequence (`tile::StreamRange`); dynamic shared memory
//! as given by `layout::{dense,spmm}_smem_bytes` (shared with the host).

pub mod attention;
pub mod dense;
pub mod reduce;
pub mod spmm;
pub mod tile;

use crate::mma::{Bf16, F16};

macro_rules! dense_entries {
    ($($name:ident: $elem:ty, $rt:literal, $mt:literal, $nt:literal;)*) => {$(
        /// Dense `Y = X · Wᵀ` (see [`dense::dense_linear`]).
        ///
        /// # Safety
        /// See [`dense::dense_linear`].
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $name(
            w: *const u16, ldw: u32, x: *const u16, ldx: u32, y: *mut u16, ldy: u32,
            partial: *mut f32, m: u32, n: u32, k: u32, full: u32, splits: u32,
        ) {
            dense::dense_linear::<$elem, $rt, $mt, $nt>(w, ldw, x, ldx, y, ldy, partial, m, n, k, full, splits);
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

macro_rules! reduce_entries {
    ($($name:ident, $streamk:ident: $elem:ty;)*) => {$(
        /// Deterministic split-K reduction of the dense kernel (see [`reduce::splitk_reduce`]).
        ///
        /// # Safety
        /// See [`reduce::splitk_reduce`].
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $name(
            partial: *const f32, y: *mut u16, ldy: u32, m: u32, n: u32, splits: u32, full: u32, rows: u32,
            n_tile: u32, token_tiles: u32,
        ) {
            reduce::splitk_reduce::<$elem>(partial, y, ldy, m, n, splits, full, rows, n_tile, token_tiles);
        }

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

reduce_entries! {
    splitk_reduce_f16, streamk_reduce_f16: F16;
    splitk_reduce_bf16, streamk_reduce_bf16: Bf16;
}
