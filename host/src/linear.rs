//! `Y = X · Wᵀ` (the `nn.Linear` convention) for dense and sparse weights: shape checks,
//! kernel choice, split-K planning and launches.

use crate::checked::{grid, Grid, Sizes, MAX_GRID};
use crate::element::{Dtype, Element};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, SharedMemory};
use crate::layout::{
    block_threads, dense_default_config, dense_smem_bytes, spmm_max_nt,
    DENSE_CONFIGS, REDUCE_THREADS, SPARSE_TILE_M, SPMM_CONFIGS, SPMM_ROW_TILES, TILE_K, TILE_M,
};
use crate::matrix::{DeviceMatrix, DeviceSparseWeight};
use crate::sparse::formats::SparseFormat;
use cust::function::{BlockSize, Function};
use crate::gpu::QueueState;
use crate::memory::DeviceAlloc;
use std::ffi::c_void;

/// Options of [`Gpu::linear_with`].
///
/// Every value is validated before anything is allocated or launched (with checked
/// arithmetic: no value can wrap into another); one out of its range is an
/// [`Error::InvalidArgument`] naming the option and the range allowed for this call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinearOptions {
    /// Number of K splits of every row tile, `1..=` the number of 64-wide K tiles; `None`
    /// chooses from the shape and the SM count. The blocks it makes must fit a launch grid
    /// (at most 2³¹ − 1).
    pub splits: Option<usize>,
    /// Dense kernel only, with `splits`: the number of row tiles (blocks of output rows,
    /// counted from the top) computed whole, only the rest being split; values beyond the
    /// number of row tiles mean all of them. `None` splits every
    /// row tile. Automatic planning (`splits: None`) uses this form to give every SM the same
    /// share when the row tiles do not divide evenly among the SMs. Refused without `splits`
    /// and for sparse weights (their automatic schedule balances the SMs by `blocks`).
    pub unsplit_row_tiles: Option<usize>,
    /// Block shape; `None` takes the tuned default for the kernel and token count. A tuning
    /// knob for benchmarks: every shape computes the same result.
    pub block: Option<BlockShape>,
    /// Sparse kernel only: the number of blocks sharing the weight's `R × K` tiles (R row
    /// tiles of 256, K tiles of 64 along K), each an equal contiguous range of them in
    /// row-major order (stream-K); `R ≤ blocks ≤ R·K`, and at most 2³¹ − 1 (a launch grid).
    /// `None` chooses from the shape and the SM count. Refused together with `splits` (which
    /// means `blocks = R · splits`) and for dense weights.
    pub blocks: Option<usize>,
    /// Sparse kernel only: words of its shared-memory word ring, a multiple of 128 from 1024
    /// up to what the device's shared memory per block holds next to the kernel's tiles (on
    /// an H100 47872 up to 32 tokens, 41728 at 64); `None` sizes it per weight and token
    /// count (the most blocks per SM whose ring still holds a typical tile whole). A larger
    /// ring keeps more tiles in flight per block, but fewer blocks fit on an SM. A tuning
    /// knob: every size computes the same result. Refused for dense weights.
    pub ring_words: Option<usize>,
    /// Sparse kernel only: whether its weight reads are marked evict-first in L2 (`None`:
    /// yes), which keeps the split-K partial sums in L2 for the reduction. A tuning knob:
    /// the result is the same either way. Refused for dense weights.
    pub l2_evict_first: Option<bool>,
}

/// The shape of a thread block: `64·row_tiles` rows of W, warps of `16·warp_m_tiles` rows
/// (`128·row_tiles/warp_m_tiles` threads). The dense kernel is compiled for
/// `layout::DENSE_CONFIGS`; the sparse one has `row_tiles = 4` (the format's 256-row tiles)
/// and `warp_m_tiles` in `layout::SPMM_CONFIGS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockShape {
    /// Rows of W per block, in units of 64.
    pub row_tiles: usize,
    /// Rows of W per warp, in units of 16.
    pub warp_m_tiles: usize,
}

/// A weight `W[out_features × in_features]` that [`Gpu::linear`] accepts: a dense
/// [`DeviceMatrix`] or a [`DeviceSparseWeight`]. Swapping one for the other is a one-line
/// change for the caller.
pub trait LinearWeight<T: Element>: sealed::Sealed {
    /// Rows of W (columns of Y).
    fn out_features(&self) -> usize;
    /// Columns of W (columns of X).
    fn in_features(&self) -> usize;
    #[doc(hidden)]
    fn operand(&self) -> Operand<'_, T>;
}

#[doc(hidden)]
pub enum Operand<'a, T: Element> {
    Dense(&'a DeviceMatrix<T>),
    Sparse(&'a DeviceSparseWeight<T>),
}

impl<T: Element> LinearWeight<T> for DeviceMatrix<T> {
    fn out_features(&self) -> usize {
        self.rows()
    }
    fn in_features(&self) -> usize {
        self.cols()
    }
    fn operand(&self) -> Operand<'_, T> {
        Operand::Dense(self)
    }
}

impl<T: Element> LinearWeight<T> for DeviceSparseWeight<T> {
    fn out_features(&self) -> usize {
        self.rows()
    }
    fn in_features(&self) -> usize {
        self.cols()
    }
    fn operand(&self) -> Operand<'_, T> {
        Operand::Sparse(self)
    }
}

mod sealed {
    pub trait Sealed {}
    impl<T: crate::Element> Sealed for crate::DeviceMatrix<T> {}
    impl<T: crate::Element> Sealed for crate::DeviceSparseWeight<T> {}
}

/// Token-tile widths the kernels are compiled for (8·NT).
const N_TILES: [usize; 4] = [8, 16, 32, 64];

/// The token tile for `n` tokens: the smallest compiled width ≥ n, else 64 (the grid then
/// covers N in several 64-wide slices).
pub(crate) fn n_tile_for(n: usize) -> usize {
    N_TILES.into_iter().find(|&t| t >= n).unwrap_or(64)
}

/// How a launch covers the row tiles (blocks of `64·row_tiles` output rows): the first `full`
/// whole, each of the others split `splits` ways along K (`gpu::kernels::tile::WorkItem`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    pub full: usize,
    pub splits: usize,
}

impl Schedule {
    /// Every row tile whole.
    pub fn whole(row_tiles: usize) -> Self {
        Schedule { full: row_tiles, splits: 1 }
    }

    /// Thread blocks along grid x, `full + (row_tiles − full) · splits` (`full ≤ row_tiles`),
    /// checked: a `splits` option can make it larger than any grid.
    pub fn blocks(&self, row_tiles: usize) -> Result<usize> {
        let split = Sizes::ARG.mul("split row tiles × splits", row_tiles - self.full, self.splits)?;
        Sizes::ARG.add("blocks (whole row tiles + split row tiles × splits)", self.full, split)
    }

    /// Whether some row tiles are split (partials, summed by each unit's last block, and
    /// arrival counters are needed).
    pub fn has_splits(&self, row_tiles: usize) -> bool {
        self.splits > 1 && self.full < row_tiles
    }
}

/// What the sparse schedule weighs: the weight's stored bytes (read once per token tile) and
/// the token-tile width (the partial sums of a split block are `rows × n_tile` f32).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SparseCost {
    pub weight_bytes: usize,
    pub n_tile: usize,
}

/// Most K splits of a row tile: each keeps at least 4 K tiles for the pipeline to stream.
fn max_splits(k_tiles: usize) -> usize {
    (k_tiles / 4).clamp(1, 32)
}

/// Share of the last wave that is busy when `blocks` equal blocks run on `slots` places.
fn wave_fill(blocks: usize, slots: usize) -> f64 {
    blocks as f64 / (blocks.div_ceil(slots) * slots) as f64
}

/// The schedule from the row tiles (of `rows_per_tile` rows), token blocks, K tiles, SM
/// count and resident blocks (`slots` = SMs × occupancy). Measured on an H100
/// (`benches/linear.rs --tune all`, `benches/results/NOTES.md` item 10):
/// - the dense kernel is bandwidth-bound and the memory system serves the SMs about
///   equally, so what matters is that every SM gets the same number of bytes. When the
///   `⌊R / SMs⌋` rounds of whole row tiles keep at least 128 rows streaming per SM (two
///   64-row blocks, or one of 256 rows), those stay whole and the remaining few are split
///   finely enough to spread over all SMs (fewest splits that fill ≥ 95% of a round). With
///   at least one row tile per SM otherwise, rows are split in two only when each half still
///   streams ≥ 128 K tiles (shorter layers lose more to partial sums and the second launch
///   than to the imbalance). With fewer row tiles than SMs, every tile is split: the fewest
///   splits that give every SM two blocks, unless that leaves a short last wave (< 80% full).
///
/// Each split keeps at least 4 K tiles for the pipeline to stream ([`max_splits`]).
pub(crate) fn plan_schedule(
    row_tiles: usize,
    rows_per_tile: usize,
    n_blocks: usize,
    k_tiles: usize,
    sms: usize,
    slots: usize,
) -> Schedule {
    let max_splits = max_splits(k_tiles);
    let fewest = |good: &dyn Fn(usize) -> bool, fill: &dyn Fn(usize) -> f64| {
        (1..=max_splits)
            .find(|&s| good(s))
            .unwrap_or_else(|| (1..=max_splits).max_by(|&a, &b| fill(a).total_cmp(&fill(b)).then(b.cmp(&a))).unwrap_or(1))
    };
    if n_blocks == 1 && row_tiles >= sms {
        let full = row_tiles / sms * sms;
        let rest = row_tiles - full;
        if (full / sms) * rows_per_tile >= 2 * TILE_M {
            let fill = |s: usize| wave_fill(rest * s, sms);
            let splits = if rest == 0 { 1 } else { fewest(&|s| fill(s) >= 0.95, &fill) };
            return if splits == 1 { Schedule::whole(row_tiles) } else { Schedule { full, splits } };
        }
        return if k_tiles / 2 >= 128 { Schedule { full: 0, splits: 2 } } else { Schedule::whole(row_tiles) };
    }
    let blocks = row_tiles * n_blocks;
    let fill = |s: usize| wave_fill(blocks * s, slots);
    let good = |s: usize| blocks * s >= 2 * sms && (blocks * s <= slots || fill(s) >= 0.8);
    let splits = fewest(&good, &fill);
    if splits == 1 { Schedule::whole(row_tiles) } else { Schedule { full: 0, splits } }
}

/// Blocks of the sparse kernel's stream-K schedule (`gpu::kernels::tile::StreamRange`) for
/// `row_tiles × k_tiles` tiles, `n_blocks` token tiles and `slots` resident blocks. When a
/// wave of resident blocks outnumbers the row tiles and still gives every block at least
/// `min_tiles` tiles (the format's [`LaunchPlan::stream_min_tiles`]), one full wave: each
/// block an equal share of the tiles, wherever the row tiles begin and end (no wave
/// quantisation; partial sums only where a range boundary cuts a row tile). Otherwise the
/// uniform split of every row tile into [`sparse_splits`] (`blocks = R · splits`). Either
/// way `blocks ≥ R`, which the kernel needs (a range then meets at most two row tiles).
pub(crate) fn plan_sparse_blocks(
    row_tiles: usize,
    n_blocks: usize,
    k_tiles: usize,
    slots: usize,
    min_tiles: usize,
    cost: SparseCost,
) -> usize {
    let wave = (slots / n_blocks).max(1);
    // A count for a heuristic: saturating, never a size.
    if wave > row_tiles && row_tiles.saturating_mul(k_tiles) >= min_tiles.saturating_mul(wave) {
        return wave;
    }
    row_tiles * sparse_splits(row_tiles, n_blocks, k_tiles, slots, cost)
}

/// K splits of every row tile for the sparse kernel's uniform split. The kernel is
/// latency-bound (a block's steps are serial), so an idle slot in the last wave costs its
/// full share, while every split adds its f32 partial sums (written, then read back by the
/// reduction) to the bytes moved: the number of splits minimising
/// `weight bytes / last-wave fill + partial bytes` (NOTES item 18).
pub(crate) fn sparse_splits(row_tiles: usize, n_blocks: usize, k_tiles: usize, slots: usize, cost: SparseCost) -> usize {
    let SparseCost { weight_bytes, n_tile } = cost;
    // A cost model, not a size: in f64, so no product of large inputs can wrap.
    let blocks = row_tiles as f64 * n_blocks as f64;
    let cost = |s: usize| {
        let partials = if s > 1 { (2 * 4 * SPARSE_TILE_M * n_tile) as f64 * blocks * s as f64 } else { 0.0 };
        weight_bytes as f64 * n_blocks as f64 / wave_fill(row_tiles.saturating_mul(n_blocks).saturating_mul(s), slots) + partials
    };
    (1..=max_splits(k_tiles)).min_by(|&a, &b| cost(a).total_cmp(&cost(b))).unwrap_or(1)
}

/// Token tiles one launch covers at most: grid y is the token tile, and the driver allows
/// at most 65535 there. Larger token counts are cut into slices of this many tiles of 64
/// ([`plan`]), each its own launch (and reduction).
pub(crate) const MAX_TOKEN_TILES: usize = MAX_GRID[1];

/// Tokens of one launch at most: [`MAX_TOKEN_TILES`] tiles of 64.
pub(crate) const MAX_SLICE_TOKENS: usize = MAX_TOKEN_TILES * 64;

/// What [`plan`] needs to know about the weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WeightInfo {
    /// A dense [`DeviceMatrix`] with leading dimension `ld`.
    Dense { ld: usize },
    /// A [`DeviceSparseWeight`]: its format, stored bytes and the format's stage hint (the
    /// 99th-percentile Tiled-CSL tile in words, the largest bitmap panel in bytes).
    Sparse { format: SparseFormat, stored_bytes: usize, stage_hint: usize },
}

/// A `linear` call's shapes: `Y[n × m] = X[n × k] · Wᵀ` (`W` is `m × k`), the leading
/// dimensions of X and Y, and the weight (already checked to match each other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub n: usize,
    pub k: usize,
    pub m: usize,
    pub ldx: usize,
    pub ldy: usize,
    pub weight: WeightInfo,
    pub dtype: Dtype,
}

/// The device limits a plan depends on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceLimits {
    pub sm_count: usize,
    pub smem: SharedMemory,
}

/// Resident blocks on the whole GPU (SMs × blocks per SM) of kernel `name` launched with
/// `threads` threads and `smem` bytes of dynamic shared memory. [`Gpu::linear_into`] asks
/// the driver (which also raises the kernel's shared-memory limit); host-only tests pass a
/// model. Called only with validated sizes.
pub(crate) type Occupancy<'a> = dyn FnMut(&str, u32, u32) -> Result<usize> + 'a;

/// The schedule arguments of one launch of the main kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LaunchKind {
    /// `dense_linear`: the first `full` row tiles whole, the others split `splits` ways.
    Dense { full: u32, splits: u32 },
    /// A sparse format's kernel: `blocks` stream-K ranges and the format's stage parameter
    /// (`spmm_linear`: its word ring in words; `bitmap_linear`: its panel slot in bytes).
    Sparse { blocks: u32, stage: u32, evict_first: u32 },
}

/// The split-K reduction kernel after a sparse launch: kernel and grid (its arguments are
/// the slice's). A split dense launch sums its partials itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reduction {
    pub kernel: String,
    pub grid: Grid,
}

/// One launch of [`Gpu::linear_into`] (and its reduction): tokens `first_token ..
/// first_token + tokens` of X and Y. Every number in it was computed with checked
/// arithmetic from the problem, the options and the device limits, and every 32-bit one
/// was checked to fit, so executing it casts nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Slice {
    pub first_token: usize,
    pub tokens: usize,
    /// Byte offsets of the slice's first row in X and Y.
    pub x_offset: usize,
    pub y_offset: usize,
    pub kernel: String,
    pub threads: u32,
    pub smem: u32,
    pub grid: Grid,
    pub kind: LaunchKind,
    /// Kernel arguments: `m`, the slice's `n`, `k`, the leading dimensions of X, Y and (dense)
    /// W, the token tile and the K tiles of 64, rows per row tile, token tiles of the slice.
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub ldx: u32,
    pub ldy: u32,
    pub ldw: u32,
    pub n_tile: u32,
    pub k_tiles: u32,
    pub rows_per_tile: u32,
    pub token_tiles: u32,
    /// f32 of split-K workspace the launch needs (0: none).
    pub workspace: usize,
    /// Completion flags (u32) of a split sparse launch (0: none).
    pub flags: usize,
    /// Arrival counters (u32, zero between launches) of a split dense launch (0: none).
    pub counters: usize,
    pub reduce: Option<Reduction>,
}

/// Checks the options against the weight kind and each other, then plans every launch of
/// `Y = X · Wᵀ`: one [`Slice`] per [`MAX_SLICE_TOKENS`] tokens. Pure but for `occupancy`
/// (see [`Occupancy`]), so everything a caller can pass is validated here, host-only tests
/// included, before any allocation or launch. Errors: [`Error::InvalidArgument`] for an
/// option (or a shape together with an option) out of its range, naming it and the range;
/// [`Error::Shape`] for shapes the kernels cannot take.
pub(crate) fn plan(p: &Problem, opts: &LinearOptions, dev: &DeviceLimits, occupancy: &mut Occupancy<'_>) -> Result<Vec<Slice>> {
    let sparse = matches!(p.weight, WeightInfo::Sparse { .. });
    if !sparse && (opts.ring_words.is_some() || opts.l2_evict_first.is_some() || opts.blocks.is_some()) {
        return Err(Error::InvalidArgument("blocks, ring_words and l2_evict_first apply to sparse weights only".into()));
    }
    if sparse && opts.unsplit_row_tiles.is_some() {
        return Err(Error::InvalidArgument("unsplit_row_tiles applies to dense weights only".into()));
    }
    if opts.splits.is_none() && opts.unsplit_row_tiles.is_some() {
        return Err(Error::InvalidArgument("unsplit_row_tiles needs splits".into()));
    }
    if opts.splits.is_some() && opts.blocks.is_some() {
        return Err(Error::InvalidArgument("give splits or blocks, not both".into()));
    }
    if p.n == 0 || p.k == 0 || p.m == 0 {
        return Err(Error::Shape(format!("X is {}×{} and W has {} rows: every dimension must be at least 1", p.n, p.k, p.m)));
    }
    let mut slices: Vec<Slice> = Vec::with_capacity(p.n.div_ceil(MAX_SLICE_TOKENS));
    let mut first = 0;
    while first < p.n {
        let tokens = (p.n - first).min(MAX_SLICE_TOKENS);
        let (x_offset, y_offset) = (
            Sizes::SHAPE.product("X slice offset (first token × ldx × 2 bytes)", &[first, p.ldx, 2])?,
            Sizes::SHAPE.product("Y slice offset (first token × ldy × 2 bytes)", &[first, p.ldy, 2])?,
        );
        // Full slices are all alike: plan one, copy it for the others.
        let slice = match slices.last() {
            Some(prev) if prev.tokens == tokens => {
                Slice { first_token: first, x_offset, y_offset, ..prev.clone() }
            }
            _ => {
                let mut s = plan_slice(p, tokens, opts, dev, occupancy)?;
                (s.first_token, s.x_offset, s.y_offset) = (first, x_offset, y_offset);
                s
            }
        };
        slices.push(slice);
        first += tokens;
    }
    Ok(slices)
}

/// Plans one launch for `tokens ≤ MAX_SLICE_TOKENS` tokens (see [`plan`]).
fn plan_slice(
    p: &Problem,
    tokens: usize,
    opts: &LinearOptions,
    dev: &DeviceLimits,
    occupancy: &mut Occupancy<'_>,
) -> Result<Slice> {
    debug_assert!((1..=MAX_SLICE_TOKENS).contains(&tokens));
    let (k, m) = (p.k, p.m);
    let n_tile = n_tile_for(tokens);
    let nt = n_tile / 8;
    let dt = p.dtype.name();
    // The shapes as the kernels' 32-bit arguments (uploads already keep them below 2³¹).
    let shape_u32 = |what, v| Sizes::SHAPE.to_u32(what, v);
    let (mm, nn, kk) = (shape_u32("out_features (m)", m)?, shape_u32("tokens (n)", tokens)?, shape_u32("in_features (k)", k)?);
    let (ldx, ldy) = (shape_u32("leading dimension of X", p.ldx)?, shape_u32("leading dimension of Y", p.ldy)?);
    let mut stage = 0;
    let (name, block, smem) = match p.weight {
        WeightInfo::Dense { .. } => {
            let (rt, mt) = dense_default_config(m, dev.sm_count);
            let b = opts.block.unwrap_or(BlockShape { row_tiles: rt, warp_m_tiles: mt });
            if !DENSE_CONFIGS.contains(&(b.row_tiles, b.warp_m_tiles)) {
                return Err(Error::InvalidArgument(format!("dense block {b:?}: compiled shapes are {DENSE_CONFIGS:?}")));
            }
            let name = format!("dense_linear_{dt}_n{n_tile}_r{}_m{}", b.row_tiles, b.warp_m_tiles);
            // A compiled shape and token tile: at most 4 · (4·8 KiB + 8·1 KiB).
            (name, b, dense_smem_bytes(b.row_tiles, nt))
        }
        WeightInfo::Sparse { format, stage_hint, stored_bytes } => {
            // The format's kernel, stage parameter and shared memory (`sparse::formats`).
            let launch = format.plan();
            let b = opts.block.unwrap_or_else(|| {
                // A count of tiles for a heuristic: saturating, never a size.
                let tiles = m.div_ceil(SPARSE_TILE_M).saturating_mul(k.div_ceil(TILE_K));
                let mt = launch.warp_m_tiles(nt, tiles, stored_bytes, dev.sm_count);
                BlockShape { row_tiles: SPMM_ROW_TILES, warp_m_tiles: mt }
            });
            let mt = b.warp_m_tiles;
            if b.row_tiles != SPMM_ROW_TILES || !SPMM_CONFIGS.contains(&mt) || nt > spmm_max_nt(mt) {
                return Err(Error::InvalidArgument(format!(
                    "sparse block {b:?} for {n_tile} tokens: row_tiles must be {SPMM_ROW_TILES}, warp_m_tiles one of {SPMM_CONFIGS:?} (4 only up to 32 tokens)"
                )));
            }
            let name = launch.kernel(dt, n_tile, mt);
            let threads = block_threads(SPMM_ROW_TILES, mt) as u32;
            let smem;
            (stage, smem) = launch.stage(stage_hint, dev, &name, threads, nt, opts, occupancy)?;
            (name, b, smem)
        }
    };
    // At most the device's shared memory per block (a few hundred KiB).
    let smem = Sizes::ARG.to_u32("dynamic shared memory bytes", smem)?;
    let rt = block.row_tiles;
    let threads = block_threads(rt, block.warp_m_tiles) as u32;
    let k_tiles = k.div_ceil(TILE_K);
    let rows_per_tile = TILE_M * rt;
    let row_tiles = m.div_ceil(rows_per_tile);
    let n_blocks = tokens.div_ceil(n_tile);
    if let Some(s) = opts.splits {
        Sizes::ARG.in_range("splits", s, 1..=k_tiles, &format!("at most the {k_tiles} K tiles of 64 of in_features = {k}"))?;
    }
    if let (WeightInfo::Sparse { .. }, Some(b)) = (p.weight, opts.blocks) {
        let tiles = Sizes::ARG.mul("row tiles × K tiles", row_tiles, k_tiles)?;
        Sizes::ARG.in_range(
            "blocks",
            b,
            row_tiles..=tiles,
            &format!("between the {row_tiles} row tiles of 256 and the {tiles} tiles of 256×64 of this {m}×{k} weight"),
        )?;
    }
    let slots = occupancy(&name, threads, smem)?;
    // f32 of one block's output tile: at most 64 tokens × 256 rows.
    let slot = n_tile * rows_per_tile;
    // A reduction block's chunk of `floats`: 4 per thread. Slots are multiples of 512
    // floats (rows: multiples of 64, tokens of 8) = 4 per thread × 128 threads.
    let reduce_chunks = |floats: usize| {
        debug_assert!(floats.is_multiple_of(4 * REDUCE_THREADS));
        floats / (4 * REDUCE_THREADS)
    };
    let token_cause = |axis: usize| match axis {
        1 => format!("{n_blocks} token tiles of {n_tile} for {tokens} tokens"),
        _ => "(unused)".to_string(),
    };
    let mut slice = Slice {
        first_token: 0,
        tokens,
        x_offset: 0,
        y_offset: 0,
        kernel: name,
        threads,
        smem,
        grid: grid(Sizes::ARG, [1, 1, 1], |_| String::new())?,
        kind: LaunchKind::Dense { full: 0, splits: 1 },
        m: mm,
        n: nn,
        k: kk,
        ldx,
        ldy,
        ldw: 0,
        n_tile: n_tile as u32,
        // At most 2²⁶: k fits u32 (checked above).
        k_tiles: k_tiles as u32,
        rows_per_tile: rows_per_tile as u32,
        token_tiles: Sizes::ARG.to_u32("token tiles", n_blocks)?,
        workspace: 0,
        flags: 0,
        counters: 0,
        reduce: None,
    };
    match p.weight {
        WeightInfo::Dense { ld } => {
            slice.ldw = shape_u32("leading dimension of W", ld)?;
            let sched = match opts.splits {
                // Whole row tiles beyond the last mean all of them: nothing is split.
                Some(s) => Schedule { full: opts.unsplit_row_tiles.unwrap_or(0).min(row_tiles), splits: s },
                None => plan_schedule(row_tiles, rows_per_tile, n_blocks, k_tiles, dev.sm_count, slots),
            };
            let split = sched.has_splits(row_tiles);
            let split_tiles = row_tiles - sched.full;
            let blocks = sched.blocks(row_tiles)?;
            slice.grid = grid(Sizes::ARG, [blocks, n_blocks, 1], |axis| match axis {
                0 => format!(
                    "{} whole row tiles + {split_tiles} row tiles of {rows_per_tile} rows × splits = {} \
                     (fewer splits, or more unsplit_row_tiles, make fewer blocks)",
                    sched.full, sched.splits
                ),
                a => token_cause(a),
            })?;
            slice.kind = LaunchKind::Dense {
                full: Sizes::ARG.to_u32("unsplit_row_tiles", sched.full)?,
                splits: Sizes::ARG.to_u32("splits", sched.splits)?,
            };
            if split {
                // Per split unit (row tile × token tile) `splits` slots and one arrival
                // counter: the unit's last block sums its slots (`gpu::kernels::reduce::reduce_tile`).
                let units = Sizes::ARG.mul("split row tiles × token tiles", split_tiles, n_blocks)?;
                slice.workspace = Sizes::ARG.product(
                    "split-K workspace floats (split row tiles × token tiles × splits × slot)",
                    &[units, sched.splits, slot],
                )?;
                Sizes::ARG.bytes("split-K workspace", slice.workspace, 4)?;
                slice.counters = units;
                Sizes::ARG.bytes("split-K arrival counters", units, 4)?;
            }
        }
        WeightInfo::Sparse { format, stored_bytes, .. } => {
            let cost = SparseCost { weight_bytes: stored_bytes, n_tile };
            let tiles = Sizes::ARG.mul("row tiles × K tiles", row_tiles, k_tiles)?;
            let blocks = match (opts.splits, opts.blocks) {
                (Some(_), Some(_)) => unreachable!("refused in plan"),
                (None, Some(b)) => b, // in row_tiles..=tiles, checked above
                (Some(s), None) => Sizes::ARG.mul("blocks (row tiles × splits)", row_tiles, s)?,
                (None, None) => plan_sparse_blocks(row_tiles, n_blocks, k_tiles, slots, format.plan().stream_min_tiles(), cost),
            };
            debug_assert!(blocks >= row_tiles && blocks <= tiles);
            // The kernels compute block b's first tile as `b · tiles / blocks` in 64 bits.
            Sizes::ARG.mul("blocks × tiles (stream-K range arithmetic)", blocks, tiles)?;
            slice.grid = grid(Sizes::ARG, [blocks, n_blocks, 1], |axis| match axis {
                0 => format!("blocks = {blocks} stream-K ranges of the {tiles} tiles (pass fewer blocks or splits)"),
                a => token_cause(a),
            })?;
            slice.kind = LaunchKind::Sparse {
                blocks: Sizes::ARG.to_u32("blocks", blocks)?,
                stage: Sizes::ARG.to_u32("stage parameter (ring words or slot bytes)", stage)?,
                evict_first: u32::from(opts.l2_evict_first.unwrap_or(true)),
            };
            // Workspace: two slots per block and token tile, when some block's range starts
            // inside a row tile (`gpu::kernels::tile::StreamRange`): with `blocks ≥ R`,
            // exactly when `blocks > R` (range length < K).
            if blocks > row_tiles {
                slice.workspace = Sizes::ARG.product(
                    "split-K workspace floats (2 · blocks · token tiles · slot)",
                    &[2, blocks, n_blocks, slot],
                )?;
                Sizes::ARG.bytes("split-K workspace", slice.workspace, 4)?;
                slice.flags = Sizes::ARG.mul("completion flags (blocks × token tiles)", blocks, n_blocks)?;
                Sizes::ARG.bytes("completion flags", slice.flags, 4)?;
                // At most one wave of resident blocks, each looping over chunks (see
                // `gpu::kernels::reduce::streamk_reduce`).
                let kernel = format!("streamk_reduce_{dt}");
                let resident = occupancy(&kernel, REDUCE_THREADS as u32, 0)?;
                let chunks = reduce_chunks(Sizes::ARG.product("reduced floats (row tiles × token tiles × slot)", &[
                    row_tiles, n_blocks, slot,
                ])?);
                let blocks = chunks.min(resident).max(1);
                slice.reduce = Some(Reduction {
                    kernel,
                    grid: grid(Sizes::ARG, [blocks, 1, 1], |_| format!("{blocks} reduction blocks"))?,
                });
            }
        }
    }
    Ok(slice)
}

impl Gpu {
    /// `Y[n × out] = X[n × in] · Wᵀ`, allocating Y. Splits K automatically.
    pub fn linear<T: Element, W: LinearWeight<T>>(&self, x: &DeviceMatrix<T>, w: &W) -> Result<DeviceMatrix<T>> {
        let mut y = self.zeros(x.rows(), w.out_features())?;
        self.linear_into(x, w, &mut y, LinearOptions::default())?;
        Ok(y)
    }

    /// As [`Gpu::linear`] with options (e.g. a fixed split count).
    pub fn linear_with<T: Element, W: LinearWeight<T>>(
        &self,
        x: &DeviceMatrix<T>,
        w: &W,
        opts: LinearOptions,
    ) -> Result<DeviceMatrix<T>> {
        let mut y = self.zeros(x.rows(), w.out_features())?;
        self.linear_into(x, w, &mut y, opts)?;
        Ok(y)
    }

    /// `Y = X · Wᵀ` into an existing `y` (no allocation once the split-K workspace is large
    /// enough): the form for hot loops and benchmarks. Queued on [`Gpu::stream`]; returns
    /// before the GPU finishes.
    ///
    /// Every option and shape is validated (with checked arithmetic, in `linear::plan`) before
    /// anything is allocated or launched; more than 4,194,240 tokens (65535 token tiles of 64,
    /// the launch grid's limit) are computed in several launches of at most that many.
    pub fn linear_into<T: Element, W: LinearWeight<T>>(
        &self,
        x: &DeviceMatrix<T>,
        w: &W,
        y: &mut DeviceMatrix<T>,
        opts: LinearOptions,
    ) -> Result<()> {
        let (n, k, m) = (x.rows(), x.cols(), w.out_features());
        if w.in_features() != k {
            return Err(Error::Shape(format!(
                "X is {n}×{k} but W is {m}×{}: in_features must equal X's columns",
                w.in_features()
            )));
        }
        if y.rows() != n || y.cols() != m {
            return Err(Error::Shape(format!("Y must be {n}×{m}, got {}×{}", y.rows(), y.cols())));
        }
        self.check_owner("linear: X", &x.buf)?;
        self.check_owner("linear: Y", &y.buf)?;
        match w.operand() {
            Operand::Dense(wd) => self.check_owner("linear: the dense weight W", &wd.buf)?,
            Operand::Sparse(ws) => self.check_owner("linear: the sparse weight W", &ws.words)?,
        }
        // Held until every launch is queued: the workspace and flag addresses below stay
        // those the kernels use (no other thread grows them in between).
        let _queue = self.bind()?;
        let weight = match w.operand() {
            Operand::Dense(wd) => WeightInfo::Dense { ld: wd.ld() },
            Operand::Sparse(ws) => {
                WeightInfo::Sparse { format: ws.format(), stored_bytes: ws.stored_bytes(), stage_hint: ws.stage_hint }
            }
        };
        let problem = Problem { n, k, m, ldx: x.ld(), ldy: y.ld(), weight, dtype: T::DTYPE };
        let dev = DeviceLimits { sm_count: self.sm_count as usize, smem: self.smem };
        let slices = plan(&problem, &opts, &dev, &mut |name, threads, smem| Ok(self.kernel(name, threads, smem)?.1))?;
        // Slices run one after the other on the stream and share the workspace (each
        // reduction is done before the next slice's kernel starts).
        let partial = self.workspace_ptr(slices.iter().map(|s| s.workspace).max().unwrap_or(0))?;
        for s in &slices {
            let (func, _) = self.kernel(&s.kernel, s.threads, s.smem)?;
            // In bounds: `first_token < n`, and the offsets are `first_token · ld · 2` bytes.
            let (xp, yp) = (x.device_ptr() + s.x_offset as u64, y.device_ptr() + s.y_offset as u64);
            let Slice { m: mm, n: nn, k: kk, ldx, ldy, n_tile: tile, k_tiles: kt, .. } = *s;
            let partial = if s.workspace > 0 { partial } else { 0 };
            match (s.kind, w.operand()) {
                (LaunchKind::Dense { full, splits }, Operand::Dense(wd)) => {
                    let (wp, ldw) = (wd.device_ptr(), s.ldw);
                    let counters = self.arrival_counters(s.counters)?;
                    let mut args = args![wp, ldw, xp, ldx, yp, ldy, partial, counters, mm, nn, kk, full, splits];
                    self.launch(&func, s.grid, s.threads, s.smem, &mut args)?;
                }
                // Every sparse format's kernel takes the same arguments (`sparse::formats`).
                (LaunchKind::Sparse { blocks: nb, stage, evict_first }, Operand::Sparse(ws)) => {
                    let (flags, launch) = if s.flags > 0 { self.completion_flags(s.flags)? } else { (0, 0) };
                    let offs = ws.tile_offsets.ptr();
                    let words = ws.words.ptr();
                    let mut args =
                        args![offs, words, xp, ldx, yp, ldy, partial, mm, nn, kk, nb, stage, evict_first, flags, launch];
                    self.launch(&func, s.grid, s.threads, s.smem, &mut args)?;
                    if let Some(r) = &s.reduce {
                        let (reduce, _) = self.kernel(&r.kernel, REDUCE_THREADS as u32, 0)?;
                        let mut args = args![partial, yp, ldy, mm, nn, kt, nb, tile, flags, launch];
                        self.launch_dependent(&reduce, r.grid, REDUCE_THREADS as u32, &mut args)?;
                    }
                }
                _ => unreachable!("the plan's launch kind follows the weight"),
            }
        }
        Ok(())
    }

    /// Looks a kernel up, with its launch set-up done once per handle, kernel and shared
    /// memory size: the dynamic shared-memory limit raised to `smem`, the block size checked
    /// against what the kernel's register use allows, and the resident-block count
    /// (SMs × occupancy) for split planning.
    pub(crate) fn kernel(&self, name: &str, threads: u32, smem: u32) -> Result<(Function<'_>, usize)> {
        let func = self.module.get_function(name).map_err(|e| Error::driver("kernel lookup", e))?;
        // Held through the set-up, so the limit below is raised by one thread at a time. A
        // panic while held leaves only finished entries (inserted last): usable.
        let mut kernels = self.kernels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(&slots) = kernels.get(&(name.to_string(), smem)) {
            return Ok((func, slots));
        }
        // The limit only ever rises, so launches set up earlier with less memory still fit.
        let limit = kernels.iter().filter(|((n, _), _)| n == name).map(|((_, s), _)| *s).max().unwrap_or(0);
        if smem > limit {
            // SAFETY: a plain attribute set on a valid function handle of our loaded module.
            let rc = unsafe {
                cust::sys::cuFuncSetAttribute(
                    func.to_raw(),
                    cust::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
            };
            Error::check_raw("setting max dynamic shared memory", rc)?;
        }
        // Registers per thread × threads must fit the SM; every compiled shape does (at most
        // 256 threads), this keeps a future one from failing at launch instead of here.
        let max_threads = func
            .get_attribute(cust::function::FunctionAttribute::MaxThreadsPerBlock)
            .map_err(|e| Error::driver("kernel attributes", e))?;
        if threads as i32 > max_threads {
            return Err(Error::UnsupportedDevice(format!(
                "{name} needs {threads} threads per block, the device allows {max_threads} with its register use"
            )));
        }
        let per_sm = func
            .max_active_blocks_per_multiprocessor(BlockSize::x(threads), smem as usize)
            .map_err(|e| Error::driver("occupancy query", e))?
            .max(1) as usize;
        let slots = per_sm * self.sm_count as usize;
        kernels.insert((name.to_string(), smem), slots);
        Ok((func, slots))
    }

    /// Device address of a workspace of at least `floats` f32 (0 when none is needed). The
    /// caller holds the queue lock until the kernels that use it are queued.
    pub(crate) fn workspace_ptr(&self, floats: usize) -> Result<u64> {
        if floats == 0 {
            return Ok(0);
        }
        // Left uninitialised: every element the reduction reads is written by the split
        // kernel first.
        let mut state = self.state();
        self.grow(&mut state, |s| &mut s.workspace, floats, "workspace")?;
        Ok(state.workspace.as_ref().map_or(0, |b| b.ptr()))
    }

    /// Device address of the dense kernel's split-K arrival counters, at least `count` u32
    /// (0 when none is needed). Zeroed when allocated; every launch leaves them at 0 (each
    /// unit's last block wraps its counter back, `gpu::flag::arrive`), so they are 0 at the
    /// start of every launch, recorded or not. The caller holds the queue lock until the
    /// kernels that use them are queued.
    fn arrival_counters(&self, count: usize) -> Result<u64> {
        if count == 0 {
            return Ok(0);
        }
        let mut state = self.state();
        if self.grow(&mut state, |s| &mut s.counters, count, "split-K arrival counters")? {
            let counters = state.counters.as_ref().map_or((0, 0), |b| (b.ptr(), b.len()));
            self.zero_u32_queued(counters, "zeroing split-K arrival counters")?;
        }
        Ok(state.counters.as_ref().map_or(0, |b| b.ptr()))
    }

    /// The split SpMM's completion flags for `count` blocks × token tiles (device address)
    /// and the number this launch's blocks publish in them (`gpu::flag`). Every launch gets
    /// the next number, so a flag an earlier launch set never matches it; the flags are
    /// zeroed when allocated and again when the number wraps (0 is never used).
    fn completion_flags(&self, count: usize) -> Result<(u64, u32)> {
        let mut state = self.state();
        let (launch, wrapped) = next_launch(state.flag_launch);
        let grown = self.grow(&mut state, |s| &mut s.flags, count, "completion flags")?;
        let span = state.flags.as_ref().map_or((0, 0), |b| (b.ptr(), b.len()));
        // After a replay of a recording the flags hold the recorded launches' numbers, which
        // an ordinary launch may reach again (`graph.rs`): zero them as after a wrap.
        if grown || wrapped || std::mem::take(&mut state.flags_stale) {
            self.zero_u32_queued(span, "zeroing completion flags")?;
        }
        state.flag_launch = launch;
        Ok((span.0, launch))
    }

    /// Queues the zeroing of the u32 buffer `(address, length)` (nothing when empty): the
    /// completion flags or the arrival counters; `what` names the operation in the error.
    pub(crate) fn zero_u32_queued(&self, (ptr, len): (u64, usize), what: &'static str) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: sets `len` u32 of a live allocation of this handle (the flags or counters
        // buffer, address and length taken from it under the queue lock), queued on this
        // handle's stream after every kernel that used it before and before any that reads it.
        let rc = unsafe { cust::sys::cuMemsetD32Async(ptr, 0, len, self.stream.as_inner()) };
        Error::check_raw(what, rc)
    }

    /// Makes the state's buffer `which` hold at least `len` elements, reallocating
    /// (uninitialised) when it is smaller; returns whether it did. The handle's workspaces
    /// grow this way, so a `linear` call allocates nothing once they are large enough. The
    /// caller holds the queue lock (a reallocation frees the old buffer, so nothing may take
    /// its address between this and queueing the kernels that use it).
    pub(crate) fn grow<T: cust::memory::DeviceCopy>(
        &self,
        state: &mut QueueState,
        which: impl FnOnce(&mut QueueState) -> &mut Option<DeviceAlloc<T>>,
        len: usize,
        what: &'static str,
    ) -> Result<bool> {
        let recording = state.recording;
        let buffer = which(state);
        if buffer.as_ref().is_some_and(|b| b.len() >= len) {
            return Ok(false);
        }
        if recording {
            return Err(Error::InvalidArgument(format!(
                "record: the work needs a larger {what} than the handle has; run it once without recording first"
            )));
        }
        // The stream may still use the old buffer: wait before freeing it.
        self.wait_stream()?;
        *buffer = None;
        // SAFETY: its callers use it for f32 and u32 only, which have no invalid bit patterns;
        // each says how it initialises what its kernels read.
        *buffer = Some(unsafe { DeviceAlloc::uninitialized(&self.owner, len, what) }?);
        Ok(true)
    }

    /// Launches on this handle's stream; the grid was checked against the device's limits
    /// ([`grid`]). On Hopper with the sm_90 build, as a programmatic dependent of the kernel
    /// before it (unless `SPARSE_TC_DEPENDENT_LAUNCH=0`): every kernel entry waits for its
    /// predecessor before it touches memory (device module `griddep`).
    pub(crate) fn launch(&self, func: &Function<'_>, grid: Grid, block: u32, smem: u32, args: &mut [*mut c_void]) -> Result<()> {
        // SAFETY (both launches): every caller passes the argument list of the kernel's
        // documented signature (pointer-sized device addresses and u32 scalars, in order),
        // built from validated operands whose allocations outlive the queued work: they are
        // borrowed for the call, and buffers are freed only after the stream is synchronised
        // or by their owner. A dependent launch also needs the kernel to wait for the one
        // before it: every entry point of the module begins with `griddep::wait_prior_grids`
        // in every thread, or (`streamk_reduce`) synchronises through the completion flags
        // and waits before it exits.
        if let (Some(launcher), true) = (self.dependent_launch, self.dependent_everywhere) {
            let rc = unsafe { launcher.launch(func.to_raw(), self.stream.as_inner(), grid.dims(), block, smem, args) };
            return Error::check_raw("kernel launch", rc);
        }
        unsafe { self.stream.launch(func, grid.dims(), block, smem, args) }.map_err(|e| Error::driver("kernel launch", e))
    }

    /// Queues `func` (no dynamic shared memory) as a programmatic dependent of the kernel
    /// queued before it where the driver and the loaded PTX build allow it, else as an
    /// ordinary launch. Only for kernels that wait for their predecessor themselves:
    /// `streamk_reduce` (the completion flags of the SpMM blocks it reads from, then
    /// `griddepcontrol.wait` in every thread before it exits).
    fn launch_dependent(&self, func: &Function<'_>, grid: Grid, block: u32, args: &mut [*mut c_void]) -> Result<()> {
        let Some(launcher) = self.dependent_launch else {
            return self.launch(func, grid, block, 0, args);
        };
        // SAFETY: as in `launch`; the kernel waits for the one before it (see above), and the
        // stream and function handles are live handles of this `Gpu`.
        let rc = unsafe { launcher.launch(func.to_raw(), self.stream.as_inner(), grid.dims(), block, 0, args) };
        Error::check_raw("dependent kernel launch", rc)
    }
}

/// The number a split SpMM launch publishes in its completion flags after one that published
/// `prev` (0: none yet), and whether the flags must be zeroed first: when the count wraps, a
/// flag set 2³² launches ago could hold the next number (0 is never published).
fn next_launch(prev: u32) -> (u32, bool) {
    match prev.checked_add(1) {
        Some(next) => (next, false),
        None => (1, true),
    }
}

/// Kernel argument list: the address of each local, as `cuLaunchKernel` expects.
macro_rules! args {
    ($($a:ident),*) => { [$(&$a as *const _ as *mut ::std::ffi::c_void),*] };
}
pub(crate) use args;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::spmm_smem_bytes;
    use crate::sparse::tiled_csl_launch::max_ring_words;

    #[test]
    fn n_tile_covers_n() {
        assert_eq!(n_tile_for(1), 8);
        assert_eq!(n_tile_for(8), 8);
        assert_eq!(n_tile_for(9), 16);
        assert_eq!(n_tile_for(33), 64);
        assert_eq!(n_tile_for(1000), 64);
    }

    #[test]
    fn dense_schedule_balances_sms() {
        let p = |r, rows, nb, kt, slots| plan_schedule(r, rows, nb, kt, 132, slots);
        // 576 row tiles of 64 on 132 SMs: 528 whole, the other 48 split 8 ways (384 blocks
        // fill 97% of three rounds of 132).
        assert_eq!(p(576, 64, 1, 144, 660), Schedule { full: 528, splits: 8 });
        // 144 tiles of 256 rows: one round whole, 12 tiles split 11 ways (132 blocks).
        assert_eq!(p(144, 256, 1, 144, 264), Schedule { full: 132, splits: 11 });
        // A multiple of the SM count, or a remainder that nearly fills a round: no split.
        assert_eq!(p(528, 64, 1, 144, 528), Schedule::whole(528));
        assert_eq!(p(390, 64, 1, 144, 528), Schedule::whole(390));
        // One round of 64-row tiles: split in two only for long rows.
        assert_eq!(p(172, 64, 1, 64, 528), Schedule::whole(172));
        assert_eq!(p(144, 64, 1, 576, 528), Schedule { full: 0, splits: 2 });
        // Fewer tiles than SMs: every tile split, each SM two blocks.
        assert_eq!(p(100, 64, 1, 576, 792), Schedule { full: 0, splits: 3 });
        assert_eq!(p(72, 64, 2, 144, 264), Schedule { full: 0, splits: 3 });
        // Several token blocks: the whole-tile form is not used.
        assert_eq!(p(144, 64, 2, 576, 792), Schedule::whole(144));
        // Too few K tiles to split.
        assert_eq!(p(1, 64, 1, 3, 264), Schedule::whole(1));
    }

    #[test]
    fn sparse_schedule_fills_waves() {
        let sparse = |m: usize, k: usize, density: f64, n_tile| SparseCost {
            weight_bytes: (m as f64 * k as f64 * density * 4.0) as usize,
            n_tile,
        };
        // 36864×9216 at 80%, 8 tokens, 3 blocks per SM: 11 splits fill all 1584 slots of
        // four waves; the partials (37 MB) cost less than a 3% emptier last wave.
        assert_eq!(sparse_splits(144, 1, 144, 396, sparse(36864, 9216, 0.2, 8)), 11);
        // 27648×9216 at 90%, 32 tokens, 4 blocks per SM: 14 splits would fill 95% of three
        // waves but move 99 MB of partials for a 110 MB weight; 4 splits fill 82% of one.
        assert_eq!(sparse_splits(108, 1, 144, 528, sparse(27648, 9216, 0.1, 32)), 4);
        for (tiles, kt) in [(1, 1000), (7, 8), (300, 64)] {
            let s = sparse_splits(tiles, 1, kt, 264, sparse(tiles * 256, kt * 64, 0.2, 16));
            assert!(s >= 1 && s <= (kt / 4).clamp(1, 32));
        }
    }

    #[test]
    fn sparse_blocks_stream_one_wave_on_large_layers() {
        let cost = SparseCost { weight_bytes: 100 << 20, n_tile: 16 };
        // 36864×9216: 20736 tiles, one wave of 528 blocks (39 tiles each).
        assert_eq!(plan_sparse_blocks(144, 1, 144, 528, 16, cost), 528);
        // Two token tiles share the resident blocks.
        assert_eq!(plan_sparse_blocks(144, 2, 144, 528, 16, cost), 264);
        // More row tiles than a wave, or too few tiles per block: a uniform split, R·s blocks.
        for (r, kt, min) in [(600, 144, 16), (16, 64, 16), (43, 64, 16), (16, 64, 4)] {
            let blocks = plan_sparse_blocks(r, 1, kt, 528, min, cost);
            assert!(blocks.is_multiple_of(r) && blocks >= r && blocks <= r * kt, "{r}×{kt}: {blocks}");
        }
        // 11008×4096 (43 × 64 tiles): one wave of 396 when 4 tiles per block suffice (the
        // bitmap kernel's minimum), whatever the token tiles share.
        assert_eq!(plan_sparse_blocks(43, 1, 64, 396, 4, cost), 396);
        assert_eq!(plan_sparse_blocks(43, 2, 64, 528, 4, cost), 264);
        // Saturating: no product wraps into a wave.
        assert!(plan_sparse_blocks(2, 1, usize::MAX / 2, 528, usize::MAX, cost) >= 2);
    }

    #[test]
    fn launch_numbers_never_repeat_without_zeroed_flags() {
        assert_eq!(next_launch(0), (1, false));
        assert_eq!(next_launch(41), (42, false));
        // Wrapping restarts at 1 and zeroes the flags, so no older flag can match.
        assert_eq!(next_launch(u32::MAX), (1, true));
    }

    // ---- The plan, host-only: an H100-like device and an occupancy model. ----

    /// H100 limits: 132 SMs, 227 KiB of shared memory per block, 228 KiB per SM.
    fn h100() -> DeviceLimits {
        DeviceLimits { sm_count: 132, smem: SharedMemory { per_block: 232448, per_sm: 233472, reserved_per_block: 1024 } }
    }

    /// Resident blocks on the GPU as the driver would count them from shared memory and
    /// threads alone; records every query, so a test can see what reached the "driver".
    fn occupancy_model(calls: &mut Vec<(String, u32, u32)>) -> impl FnMut(&str, u32, u32) -> Result<usize> + '_ {
        move |name, threads, smem| {
            calls.push((name.to_string(), threads, smem));
            let dev = h100();
            let by_smem = dev.smem.per_sm / (smem as usize + dev.smem.reserved_per_block);
            Ok(by_smem.min(2048 / threads as usize).clamp(1, 32) * dev.sm_count)
        }
    }

    fn sparse_problem(n: usize, m: usize, k: usize) -> Problem {
        let tiles = m.div_ceil(256) * k.div_ceil(64);
        let weight = WeightInfo::Sparse { format: SparseFormat::TiledCsl, stored_bytes: 4 * tiles * 2048, stage_hint: 2048 };
        Problem { n, k, m, ldx: padded_ld(k), ldy: padded_ld(m), weight, dtype: Dtype::F16 }
    }

    fn dense_problem(n: usize, m: usize, k: usize) -> Problem {
        Problem { n, k, m, ldx: padded_ld(k), ldy: padded_ld(m), weight: WeightInfo::Dense { ld: padded_ld(k) }, dtype: Dtype::F16 }
    }

    fn padded_ld(cols: usize) -> usize {
        crate::matrix::padded_ld(cols)
    }

    /// The kernel queries a plan made: (kernel, dynamic shared memory, threads).
    type Queries = Vec<(String, u32, u32)>;

    /// The plan, and the kernel queries it made.
    fn plan_of(p: &Problem, opts: LinearOptions) -> (Result<Vec<Slice>>, Queries) {
        let mut calls = Vec::new();
        let r = plan(p, &opts, &h100(), &mut occupancy_model(&mut calls));
        (r, calls)
    }

    /// The InvalidArgument message of a refused plan.
    fn refused(p: &Problem, opts: LinearOptions) -> String {
        match plan_of(p, opts).0 {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument for {opts:?}, got {other:?}"),
        }
    }

    #[test]
    fn bitmap_warp_height_follows_tiles_per_sm_at_8_tokens() {
        let bitmap = |n: usize, m: usize, k: usize| {
            let tiles = m.div_ceil(256) * k.div_ceil(64);
            let weight = WeightInfo::Sparse { format: SparseFormat::Bitmap, stored_bytes: tiles * 20_000, stage_hint: 40_000 };
            Problem { n, k, m, ldx: padded_ld(k), ldy: padded_ld(m), weight, dtype: Dtype::F16 }
        };
        let kernel = |p: &Problem, opts: LinearOptions| plan_of(p, opts).0.unwrap()[0].kernel.clone();
        // 4096×4096, 11008×4096 and 22016×4096 (61% of the dense bytes: 50% sparse): 1024,
        // 2752 and 5504 tiles, ≤ 48 per SM of 132 → 8 warps of 2.
        assert_eq!(kernel(&bitmap(8, 4096, 4096), LinearOptions::default()), "bitmap_linear_f16_n8_m2");
        assert_eq!(kernel(&bitmap(1, 11008, 4096), LinearOptions::default()), "bitmap_linear_f16_n8_m2");
        assert_eq!(kernel(&bitmap(8, 22016, 4096), LinearOptions::default()), "bitmap_linear_f16_n8_m2");
        // At 60% sparsity (50% of the dense bytes) only up to 24 per SM: 4096×11008 → 2,
        // 22016×4096 → 4.
        let sparser = |m: usize, k: usize| {
            let weight = WeightInfo::Sparse { format: SparseFormat::Bitmap, stored_bytes: m * k, stage_hint: 40_000 };
            Problem { weight, ..bitmap(8, m, k) }
        };
        assert_eq!(kernel(&sparser(4096, 11008), LinearOptions::default()), "bitmap_linear_f16_n8_m2");
        assert_eq!(kernel(&sparser(22016, 4096), LinearOptions::default()), "bitmap_linear_f16_n8_m4");
        // 27648×5120 and 27648×9216: 8640 and 15552 tiles, 65 and 118 per SM → 4 warps of 4;
        // 16 tokens: always 4.
        assert_eq!(kernel(&bitmap(8, 27648, 5120), LinearOptions::default()), "bitmap_linear_f16_n8_m4");
        assert_eq!(kernel(&bitmap(8, 27648, 9216), LinearOptions::default()), "bitmap_linear_f16_n8_m4");
        assert_eq!(kernel(&bitmap(16, 4096, 4096), LinearOptions::default()), "bitmap_linear_f16_n16_m4");
        // A named block wins; Tiled-CSL keeps its own default.
        let m4 = LinearOptions { block: Some(BlockShape { row_tiles: 4, warp_m_tiles: 4 }), ..LinearOptions::default() };
        assert_eq!(kernel(&bitmap(8, 4096, 4096), m4), "bitmap_linear_f16_n8_m4");
        assert_eq!(kernel(&sparse_problem(8, 4096, 4096), LinearOptions::default()), "spmm_linear_f16_n8_m4");
    }

    #[test]
    fn bitmap_runs_one_wave_down_to_4_tiles_per_block() {
        // The blocks of the occupancy model's one wave, or a uniform split (a multiple of R).
        let blocks = |m: usize, k: usize, format: SparseFormat| {
            let weight = WeightInfo::Sparse { format, stored_bytes: m * k, stage_hint: 20_000 };
            let s = &plan_of(&Problem { weight, ..sparse_problem(8, m, k) }, LinearOptions::default()).0.unwrap()[0];
            let LaunchKind::Sparse { blocks, .. } = s.kind else { panic!() };
            (blocks as usize, occupancy_model(&mut Vec::new())(&s.kernel, s.threads, s.smem).unwrap())
        };
        // 11008×4096: 2752 tiles of 256×64, at least 4 per block in one wave.
        let (b, wave) = blocks(11008, 4096, SparseFormat::Bitmap);
        assert_eq!(b, wave);
        // Tiled-CSL keeps 16 per block: a uniform split of the 43 row tiles.
        let (b, wave) = blocks(11008, 4096, SparseFormat::TiledCsl);
        assert!(b != wave && b.is_multiple_of(43), "{b} {wave}");
        // 4096×4096: 1024 tiles, under 4 per block in a wave → the split (16 row tiles).
        let (b, _) = blocks(4096, 4096, SparseFormat::Bitmap);
        assert!(b.is_multiple_of(16), "{b}");
    }

    #[test]
    fn plan_refuses_ring_words_that_used_to_wrap() {
        // Before: 2⁶² made `spmm_smem_bytes` wrap to 41 KiB and the kernel got a ring of 0
        // words (endless loop); 2⁶² − 8192 wrapped the shared memory to 8 KiB for a ring of
        // 2³² − 8192 words (IllegalAddress); 2⁶² + 1024 silently became 1024.
        let p = sparse_problem(16, 512, 1024);
        let max = max_ring_words(2, h100().smem.per_block);
        assert_eq!(max, (232448 - spmm_smem_bytes(2, 0)) / 4 / 128 * 128);
        for r in [
            1 << 62,
            (1 << 62) - 8192,
            (1 << 62) + 1024,
            (1 << 32) + 1024,
            usize::MAX,
            usize::MAX / 4,
            usize::MAX / 4 / 128 * 128,
            usize::MAX / 128 * 128,
            (usize::MAX / 4 + 1) + 1024,
            max + 128,
            0,
            128,
            1000,
            1025,
        ] {
            let (res, calls) = plan_of(&p, LinearOptions { ring_words: Some(r), ..Default::default() });
            let Err(Error::InvalidArgument(m)) = res else { panic!("ring_words = {r}: {res:?}") };
            assert!(m.contains(&format!("ring_words = {r}")) && m.contains(&format!("1024..={max}")), "{m}");
            assert!(calls.is_empty(), "ring_words = {r} reached the driver: {calls:?}");
        }
    }

    #[test]
    fn plan_keeps_valid_ring_words_exactly() {
        for n in [1, 16, 32, 64] {
            let p = sparse_problem(n, 512, 1024);
            let nt = n_tile_for(n) / 8;
            for r in [1024, 4096, max_ring_words(nt, h100().smem.per_block)] {
                let slices = plan_of(&p, LinearOptions { ring_words: Some(r), ..Default::default() }).0.unwrap();
                let LaunchKind::Sparse { stage: ring, .. } = slices[0].kind else { panic!() };
                assert_eq!(ring as usize, r);
                assert_eq!(slices[0].smem as usize, spmm_smem_bytes(nt, r));
                assert!(slices[0].smem as usize <= h100().smem.per_block);
            }
        }
    }

    #[test]
    fn plan_refuses_blocks_and_splits_out_of_range() {
        // 512×1024: R = 2 row tiles of 256, K = 16 tiles of 64, 32 tiles.
        let p = sparse_problem(16, 512, 1024);
        for b in [0, 1, 33, u32::MAX as usize, u32::MAX as usize + 1, (1 << 32) + 2, 1 << 31, usize::MAX, usize::MAX / 2] {
            let m = refused(&p, LinearOptions { blocks: Some(b), ..Default::default() });
            assert!(m.contains(&format!("blocks = {b}")) && m.contains("2..=32"), "{m}");
        }
        for (p, k_tiles) in [(sparse_problem(16, 512, 1024), 16), (dense_problem(16, 512, 1000), 16)] {
            for s in [0, 17, u32::MAX as usize, (1 << 32) + 1, usize::MAX] {
                let m = refused(&p, LinearOptions { splits: Some(s), ..Default::default() });
                assert!(m.contains(&format!("splits = {s}")) && m.contains(&format!("1..={k_tiles}")), "{m}");
            }
        }
        // Combinations and options of the other kernel.
        let sparse = sparse_problem(16, 512, 1024);
        let dense = dense_problem(16, 512, 1024);
        assert!(refused(&sparse, LinearOptions { blocks: Some(4), splits: Some(2), ..Default::default() }).contains("not both"));
        assert!(refused(&sparse, LinearOptions { splits: Some(2), unsplit_row_tiles: Some(1), ..Default::default() })
            .contains("dense weights only"));
        assert!(refused(&dense, LinearOptions { unsplit_row_tiles: Some(1), ..Default::default() }).contains("needs splits"));
        for opts in [
            LinearOptions { blocks: Some(usize::MAX), ..Default::default() },
            LinearOptions { ring_words: Some(1 << 62), ..Default::default() },
            LinearOptions { l2_evict_first: Some(false), ..Default::default() },
        ] {
            assert!(refused(&dense, opts).contains("sparse weights only"));
        }
    }

    #[test]
    fn plan_clamps_unsplit_row_tiles_to_the_row_tiles() {
        // 300 rows = 5 row tiles of 64: any count of whole row tiles ≥ 5 means no split.
        let p = dense_problem(8, 300, 1024);
        for u in [5, 6, u32::MAX as usize + 1, usize::MAX] {
            let s = &plan_of(&p, LinearOptions { splits: Some(4), unsplit_row_tiles: Some(u), ..Default::default() }).0.unwrap()[0];
            assert_eq!(s.kind, LaunchKind::Dense { full: 5, splits: 4 });
            assert_eq!((s.grid.dims(), s.workspace, s.reduce.is_none()), ((5, 1, 1), 0, true));
        }
        let s = &plan_of(&p, LinearOptions { splits: Some(4), unsplit_row_tiles: Some(3), ..Default::default() }).0.unwrap()[0];
        assert_eq!((s.kind, s.grid.dims()), (LaunchKind::Dense { full: 3, splits: 4 }, (3 + 2 * 4, 1, 1)));
        assert_eq!(s.workspace, 2 * 4 * 8 * 64);
    }

    #[test]
    fn plan_refuses_grids_beyond_the_device_limits() {
        let max = i32::MAX as usize;
        // Sparse: 2³¹ − 1 rows (2²³ row tiles of 256) × 32768 columns (512 K tiles): 2³² tiles,
        // so blocks = 2³¹ is in range but one more than grid x allows.
        let p = sparse_problem(1, max, 32768);
        let m = refused(&p, LinearOptions { blocks: Some(1 << 31), ..Default::default() });
        assert!(m.contains("grid.x = 2147483648") && m.contains("1..=2147483647") && m.contains("blocks"), "{m}");
        // The kernels compute `b · tiles` in 64 bits: 2³¹ − 1 rows × 2³¹ − 1 columns has 2⁴⁸
        // tiles, so 2²⁴ blocks (in range: at least the 2²³ row tiles) would overflow it.
        let p = sparse_problem(1, max, max);
        let m = refused(&p, LinearOptions { blocks: Some(1 << 24), ..Default::default() });
        assert!(m.contains("blocks × tiles"), "{m}");
        // Dense: 2²³ row tiles of 256 split 2¹⁰ ways.
        let p = dense_problem(1, max, 1 << 20);
        let m = refused(&p, LinearOptions { splits: Some(1 << 10), ..Default::default() });
        assert!(m.contains("grid.x = 8589934592") && m.contains("splits = 1024"), "{m}");
    }

    #[test]
    fn plan_sizes_split_k_reductions_in_checked_arithmetic() {
        let max = i32::MAX as usize;
        // Dense: 2²³ row tiles × 255 splits fits grid x, and with 65535 token tiles of 64 a
        // reduction kernel would have needed 2⁴⁴ blocks. The split units' last blocks sum
        // them now, so no second grid exists; the workspace (2⁶¹ floats, just under the
        // largest allocation) and one counter per unit are sized in checked arithmetic, and
        // the allocation is what fails on a real device.
        let p = dense_problem(MAX_SLICE_TOKENS, max, 1 << 14);
        let s = &plan_of(&p, LinearOptions { splits: Some(255), ..Default::default() }).0.unwrap()[0];
        let units = max.div_ceil(256) * 65535;
        assert_eq!((s.reduce.is_none(), s.counters, s.workspace), (true, units, units * 255 * 64 * 256));
        // Sparse: 2³¹ − 1 blocks (in range for 2³² tiles) × 65535 token tiles.
        let p = sparse_problem(MAX_SLICE_TOKENS, max, 32768);
        let m = refused(&p, LinearOptions { blocks: Some(max), ..Default::default() });
        assert!(m.contains("split-K workspace"), "{m}");
    }

    #[test]
    fn plan_slices_token_counts_beyond_one_grid() {
        for p in [dense_problem(0, 100, 200), sparse_problem(0, 300, 200)] {
            for n in [1, 64, MAX_SLICE_TOKENS, MAX_SLICE_TOKENS + 1, 3 * MAX_SLICE_TOKENS - 7, i32::MAX as usize] {
                let p = Problem { n, ..p };
                let slices = plan_of(&p, LinearOptions::default()).0.unwrap();
                assert_eq!(slices.len(), n.div_ceil(MAX_SLICE_TOKENS), "n = {n}");
                let mut next = 0;
                for s in &slices {
                    assert_eq!(s.first_token, next);
                    assert!(s.tokens >= 1 && s.tokens <= MAX_SLICE_TOKENS);
                    assert_eq!((s.x_offset, s.y_offset), (next * p.ldx * 2, next * p.ldy * 2));
                    assert_eq!(s.n as usize, s.tokens);
                    assert_eq!(s.n_tile as usize, n_tile_for(s.tokens));
                    let (_, y, z) = s.grid.dims();
                    assert_eq!((y as usize, z), (s.tokens.div_ceil(s.n_tile as usize), 1));
                    assert!(y as usize <= MAX_TOKEN_TILES);
                    assert_eq!(s.token_tiles, y);
                    next += s.tokens;
                }
                assert_eq!(next, n);
            }
        }
        // One token past a full grid: a full slice, then one token with the 8-token kernel.
        let slices = plan_of(&sparse_problem(MAX_SLICE_TOKENS + 1, 300, 200), LinearOptions::default()).0.unwrap();
        assert_eq!(slices[0].grid.dims().1, 65535);
        assert_eq!((slices[1].tokens, slices[1].n_tile, slices[1].kernel.as_str()), (1, 8, "spmm_linear_f16_n8_m4"));
    }

    #[test]
    fn plan_of_a_typical_layer() {
        // 36864×9216 at 80% sparsity, 16 tokens: the automatic ring, the stream-K wave and the
        // reduction, all in 32-bit range and consistent with each other.
        let (m, k) = (36864, 9216);
        let weight = WeightInfo::Sparse { format: SparseFormat::TiledCsl, stored_bytes: m * k / 5 * 4, stage_hint: 3392 };
        let p = Problem { weight, ..sparse_problem(16, m, k) };
        let (slices, calls) = plan_of(&p, LinearOptions::default());
        let s = &slices.unwrap()[0];
        assert_eq!(s.kernel, "spmm_linear_f16_n16_m4");
        let LaunchKind::Sparse { blocks, stage: ring, evict_first } = s.kind else { panic!() };
        assert!(ring >= 3456 && ring % 128 == 0 && evict_first == 1, "{ring}");
        assert_eq!(s.smem as usize, spmm_smem_bytes(2, ring as usize));
        assert_eq!((blocks as usize, s.grid.dims()), (4 * 132, (528, 1, 1)));
        assert_eq!(s.workspace, 2 * 528 * 16 * 256);
        assert_eq!(s.flags, 528);
        assert_eq!(s.reduce.as_ref().map(|r| r.kernel.as_str()), Some("streamk_reduce_f16"));
        assert!(calls.iter().any(|c| c.0 == "streamk_reduce_f16"));
    }

    #[test]
    fn plan_of_a_bitmap_weight() {
        // The same schedule as Tiled-CSL, the bitmap kernel, its panel slots as the stage.
        let (m, k) = (36864, 9216);
        let weight = WeightInfo::Sparse { format: SparseFormat::Bitmap, stored_bytes: m * k, stage_hint: 9000 };
        let p = Problem { weight, ..sparse_problem(16, m, k) };
        let s = &plan_of(&p, LinearOptions::default()).0.unwrap()[0];
        assert_eq!(s.kernel, "bitmap_linear_f16_n16_m4");
        let LaunchKind::Sparse { blocks, stage, .. } = s.kind else { panic!() };
        assert_eq!(stage, 9088);
        assert_eq!(s.smem as usize, crate::layout::bitmap_smem_bytes(2, 9088));
        assert_eq!(s.reduce.as_ref().map(|r| r.kernel.as_str()), Some("streamk_reduce_f16"));
        assert_eq!(s.workspace, 2 * blocks as usize * 16 * 256);
        // The word ring is the Tiled-CSL kernel's knob.
        let m = refused(&p, LinearOptions { ring_words: Some(4096), ..Default::default() });
        assert!(m.contains("ring_words") && m.contains("bitmap"), "{m}");
        let p = Problem { n: 64, ..p };
        assert_eq!(plan_of(&p, LinearOptions::default()).0.unwrap()[0].kernel, "bitmap_linear_f16_n64_m2");
    }

    #[test]
    fn schedule_block_counts() {
        let s = Schedule { full: 528, splits: 5 };
        assert_eq!(s.blocks(576).unwrap(), 528 + 48 * 5);
        assert!(s.has_splits(576));
        assert!(!Schedule::whole(576).has_splits(576));
        assert!(!Schedule { full: 576, splits: 4 }.has_splits(576));
    }
}
