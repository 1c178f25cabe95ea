//! Dense skinny GEMM `Y[N×M] = X[N×K] · W[M×K]ᵀ` on Tensor Cores: our in-house baseline and
//! the proving ground of the DSL.
//!
//! # Tiling
//! A block owns `64·RT` rows of W and `N_TILE = 8·NT` tokens, and walks its share of
//! K in `TILE_K = 64` steps. Each step's W tile (64·RT × 64) and X tile (N_TILE × 64) stream
//! into shared memory with `cp.async` through a `STAGES`-deep [`Pipeline`]; warps then run
//! `ldmatrix` + `mma.sync.m16n8k16` on them.
//!
//! # Thread mapping
//! `4·RT/MT` warps; warp w computes W rows `16·MT·w .. 16·MT·(w+1)` of the block against all
//! N_TILE tokens (`MT × NT` accumulator fragments of 16×8).
//!
//! # Schedule and split-K
//! Grid x enumerates work items ([`WorkItem`]): the first `full` row tiles whole, then every
//! remaining row tile split `splits` ways along K (contiguous ranges). Split blocks write f32
//! partials ([`Epilogue`]) and arrive at their unit's counter; the last to arrive sums the
//! unit's slots in slot order ([`super::reduce::reduce_tile`]: deterministic whichever block
//! it is), so no second kernel runs after a split launch.

use super::reduce::{last_to_arrive, reduce_tile};
use super::tile::{split_unit, warp_mma_tile, Epilogue, TileStream, WorkItem};
use crate::cache::prefetch_l2;
use crate::cp_async;
use crate::griddep::begin_dependent;
use crate::layout::{block_threads, ROW_BYTES, STAGES, TILE_BYTES, TILE_K, TILE_M};
use crate::mma::{FragC, MmaElement};
use crate::pipeline::Pipeline;
use crate::shared::dynamic_smem_base;
use crate::thread::{block_idx_x, block_idx_y, thread_idx_x};


/// # Safety
/// Launched with `128·RT/MT` threads, grid `(full + (R - full)·splits, ceil(n/(8·NT)), 1)`
/// where `R = ceil(m/(64·RT))` and `full ≤ R`, `splits ≥ 1`;
/// `layout::dense_smem_bytes(RT, NT)` bytes of dynamic shared memory. `w` is `m × ldw`, `x` is `n × ldx`
/// (16-byte aligned, `ld % 8 == 0`, `ld ≥ k`, columns `k..ld` zero), `y` is `n × ldy`
/// (`ldy ≥ m`), `partial` has `(R - full)·ceil(n/(8·NT))·splits·8·NT·64·RT` f32 (128-byte
/// aligned) and `counters` `(R - full)·ceil(n/(8·NT))` u32, all 0, when `splits > 1` and
/// `full < R` (the split-K workspace, `tile::Epilogue`, and the arrival counters, which are
/// 0 again when the launch ends); `m, n, k ≥ 1`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn dense_linear<E: MmaElement, const RT: usize, const MT: usize, const NT: usize>(
    w: *const u16, ldw: u32, x: *const u16, ldx: u32, y: *mut u16, ldy: u32,
    partial: *mut f32, counters: *mut u32, m: u32, n: u32, k: u32, full: u32, splits: u32,
) {
    let (m, n, k) = (m as usize, n as usize, k as usize);
    let (ldw, ldx) = (ldw as usize, ldx as usize);
    let work = WorkItem::decode(block_idx_x() as usize, full as usize, splits as usize, k.div_ceil(TILE_K));
    let m0 = work.row_tile * RT * TILE_M;
    let threads = block_threads(RT, MT);
    let n0 = block_idx_y() as usize * NT * 8;
    let kt_begin = work.kt_begin;
    let steps = work.kt_end - kt_begin;

    // While the kernel before this one may still run (this one may be its programmatic
    // dependent, `griddep`): the rows of the first `STAGES - 1` W tiles into L2, a hint
    // that reads no value (`cache::prefetch_l2`). Then wait for that kernel.
    let mut r = thread_idx_x() as usize;
    while r < (RT * TILE_M).min(m - m0) {
        // In bounds: row `m0 + r < m`, columns `(kt_begin + s)·64 < k ≤ ldw` for `s < steps`.
        let row = w.add((m0 + r) * ldw + kt_begin * TILE_K) as *const u8;
        let mut s = 0;
        while s < steps.min(STAGES - 1) {
            prefetch_l2(row.add(s * ROW_BYTES));
            s += 1;
        }
        r += threads;
    }
    begin_dependent();

    // Stage s: W tile (64·RT × 64) then X tile (N_TILE × 64), both swizzled.
    let smem = dynamic_smem_base();
    let stage_bytes = RT * TILE_BYTES + NT * 8 * ROW_BYTES;
    let w_tile = |s: usize| smem.offset(s * stage_bytes);
    let x_tile = |s: usize| smem.offset(s * stage_bytes + RT * TILE_BYTES);
    let w_stream = TileStream::new(RT * TILE_M, threads, w, ldw, m, m0, k);
    let x_stream = TileStream::new(NT * 8, threads, x, ldx, n, n0, k);
    let load_step = |step: usize| {
        let s = Pipeline::<STAGES>::stage(step);
        let k0 = (kt_begin + step) * TILE_K;
        w_stream.load(w_tile(s), k0);
        x_stream.load(x_tile(s), k0);
    };

    // Prologue: STAGES-1 steps in flight.
    let mut step = 0;
    while step < STAGES - 1 {
        if step < steps {
            load_step(step);
        }
        Pipeline::<STAGES>::producer_commit();
        step += 1;
    }

    let mut acc = [[FragC::default(); NT]; MT]; // MT × NT × (16×8 f32)
    let mut i = 0;
    while i < steps {
        Pipeline::<STAGES>::consumer_wait();
        if i + STAGES - 1 < steps {
            load_step(i + STAGES - 1);
        }
        Pipeline::<STAGES>::producer_commit();
        let s = Pipeline::<STAGES>::stage(i);
        warp_mma_tile::<E, MT, NT>(w_tile(s), x_tile(s), &mut acc);
        i += 1;
    }
    cp_async::wait_group::<0>();

    let out = Epilogue { y, ldy: ldy as usize, m, n, rows: RT * TILE_M, w_as_b: false };
    if work.splits == 1 {
        out.store_y::<E, MT, NT>(&acc, m0, n0);
        return;
    }
    // A split: this block's slot of its unit, then the unit's last block sums them all.
    let unit = split_unit(&work, full as usize);
    let slot = NT * 8 * RT * TILE_M;
    let slots = partial.wrapping_add(unit * work.splits * slot);
    out.store_slot::<MT, NT>(&acc, slots.wrapping_add(work.split * slot));
    if last_to_arrive(counters.add(unit), work.splits) {
        reduce_tile::<E>(slots, work.splits, RT * TILE_M, NT * 8, y, ldy as usize, m, n, m0, n0);
    }
}
