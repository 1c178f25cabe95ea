//! `Y = X · Wᵀ` (the `nn.Linear` convention) for dense and sparse weights: shape checks,
//! kernel choice, split-K planning and launches.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::layout::{
    block_threads, dense_default_config, dense_smem_bytes, spmm_default_mt, spmm_max_nt, spmm_ring_words, spmm_smem_bytes,
    DENSE_CONFIGS, REDUCE_THREADS, SPARSE_TILE_M, SPMM_CONFIGS, SPMM_ROW_TILES, TILE_K, TILE_M,
};
use crate::matrix::{DeviceMatrix, DeviceSparseWeight};
use cust::function::{BlockSize, Function};
use crate::memory::DeviceAlloc;
use std::cell::RefCell;
use std::ffi::c_void;

/// Options of [`Gpu::linear_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinearOptions {
    /// Number of K splits of every row tile; `None` chooses from the shape and the SM count.
    /// Values above the number of 64-wide K tiles are refused.
    pub splits: Option<usize>,
    /// Dense kernel only, with `splits`: the number of row tiles (blocks of output rows,
    /// counted from the top) computed whole, only the rest being split. `None` splits every
    /// row tile. Automatic planning (`splits: None`) uses this form to give every SM the same
    /// share when the row tiles do not divide evenly among the SMs. Refused without `splits`
    /// and for sparse weights (their automatic schedule balances the SMs by `blocks`).
    pub unsplit_row_tiles: Option<usize>,
    /// Block shape; `None` takes the tuned default for the kernel and token count. A tuning
    /// knob for benchmarks: every shape computes the same result.
    pub block: Option<BlockShape>,
    /// Sparse kernel only: the number of blocks sharing the weight's `R × K` tiles (R row
    /// tiles of 256, K tiles of 64 along K), each an equal contiguous range of them in
    /// row-major order (stream-K); `R ≤ blocks ≤ R·K`. `None` chooses from the shape and the
    /// SM count. Refused together with `splits` (which means `blocks = R · splits`) and for
    /// dense weights.
    pub blocks: Option<usize>,
    /// Sparse kernel only: words of its shared-memory word ring, a multiple of 128 of at
    /// least 1024; `None` sizes it per weight and token count (the most blocks per SM whose
    /// ring still holds a typical tile whole). A larger ring keeps more tiles in flight per
    /// block, but fewer blocks fit on an SM. A tuning knob: every size computes the same
    /// result. Refused for dense weights.
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

    /// Thread blocks along grid x.
    pub fn blocks(&self, row_tiles: usize) -> usize {
        self.full + (row_tiles - self.full) * self.splits
    }

    /// Whether some row tiles are split (partials and a reduction are needed).
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
/// `STREAM_MIN_TILES` tiles, one full wave: each block an equal share of the tiles, wherever
/// the row tiles begin and end (no wave quantisation; partial sums only where a range
/// boundary cuts a row tile). Otherwise the uniform split of every row tile into
/// [`sparse_splits`] (`blocks = R · splits`). Either way `blocks ≥ R`, which the kernel needs
/// (a range then meets at most two row tiles).
pub(crate) fn plan_sparse_blocks(row_tiles: usize, n_blocks: usize, k_tiles: usize, slots: usize, cost: SparseCost) -> usize {
    let wave = (slots / n_blocks).max(1);
    if wave > row_tiles && row_tiles * k_tiles >= STREAM_MIN_TILES * wave {
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
    let blocks = row_tiles * n_blocks;
    let cost = |s: usize| {
        let partials = if s > 1 { 2 * 4 * SPARSE_TILE_M * n_tile * blocks * s } else { 0 };
        (weight_bytes * n_blocks) as f64 / wave_fill(blocks * s, slots) + partials as f64
    };
    (1..=max_splits(k_tiles)).min_by(|&a, &b| cost(a).total_cmp(&cost(b))).unwrap_or(1)
}

/// Fewest tiles per block for the one-wave stream-K schedule of the sparse kernel.
const STREAM_MIN_TILES: usize = 16;

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
        self.bind()?;
        let n_tile = n_tile_for(n);
        let nt = n_tile / 8;
        let dt = T::DTYPE.name();
        let mut ring = 0;
        let (name, block, smem) = match w.operand() {
            Operand::Dense(_) => {
                if opts.ring_words.is_some() || opts.l2_evict_first.is_some() || opts.blocks.is_some() {
                    return Err(Error::InvalidArgument("blocks, ring_words and l2_evict_first apply to sparse weights only".into()));
                }
                let (rt, mt) = dense_default_config(m, self.sm_count as usize);
                let b = opts.block.unwrap_or(BlockShape { row_tiles: rt, warp_m_tiles: mt });
                if !DENSE_CONFIGS.contains(&(b.row_tiles, b.warp_m_tiles)) {
                    return Err(Error::InvalidArgument(format!("dense block {b:?}: compiled shapes are {DENSE_CONFIGS:?}")));
                }
                let name = format!("dense_linear_{dt}_n{n_tile}_r{}_m{}", b.row_tiles, b.warp_m_tiles);
                (name, b, dense_smem_bytes(b.row_tiles, nt) as u32)
            }
            Operand::Sparse(ws) => {
                let b = opts.block.unwrap_or(BlockShape { row_tiles: SPMM_ROW_TILES, warp_m_tiles: spmm_default_mt(nt) });
                let mt = b.warp_m_tiles;
                if b.row_tiles != SPMM_ROW_TILES || !SPMM_CONFIGS.contains(&mt) || nt > spmm_max_nt(mt) {
                    return Err(Error::InvalidArgument(format!(
                        "sparse block {b:?} for {n_tile} tokens: row_tiles must be {SPMM_ROW_TILES}, warp_m_tiles one of {SPMM_CONFIGS:?} (4 only up to 32 tokens)"
                    )));
                }
                let name = format!("spmm_linear_{dt}_n{n_tile}_m{mt}");
                let threads = block_threads(SPMM_ROW_TILES, mt) as u32;
                ring = match opts.ring_words {
                    Some(r) => r,
                    None => self.spmm_ring(&name, threads, nt, ws.typical_tile_words)?,
                };
                let smem = spmm_smem_bytes(nt, ring);
                if ring < 1024 || !ring.is_multiple_of(128) || smem > self.smem.per_block {
                    return Err(Error::InvalidArgument(format!(
                        "ring_words = {ring}: must be a multiple of 128, at least 1024, and with {n_tile} tokens at most {} on this device ({} bytes of shared memory per block)",
                        (self.smem.per_block.saturating_sub(spmm_smem_bytes(nt, 0)) / 4) / 128 * 128,
                        self.smem.per_block
                    )));
                }
                (name, b, smem as u32)
            }
        };
        let rt = block.row_tiles;
        let threads = block_threads(rt, block.warp_m_tiles) as u32;
        let (func, slots) = self.kernel(&name, threads, smem)?;
        let k_tiles = k.div_ceil(TILE_K);
        let rows_per_tile = TILE_M * rt;
        let row_tiles = m.div_ceil(rows_per_tile);
        let n_blocks = n.div_ceil(n_tile);
        if let Some(s) = opts.splits.filter(|&s| s == 0 || s > k_tiles) {
            return Err(Error::InvalidArgument(format!("splits = {s}: must be between 1 and the {k_tiles} K tiles of 64")));
        }
        if opts.splits.is_none() && opts.unsplit_row_tiles.is_some() {
            return Err(Error::InvalidArgument("unsplit_row_tiles needs splits".into()));
        }
        let (ldx, ldy, mm, nn, kk) = (x.ld() as u32, y.ld() as u32, m as u32, n as u32, k as u32);
        let (xp, yp) = (x.device_ptr(), y.device_ptr());
        let slot = n_tile * rows_per_tile; // f32 of one block's output tile
        // A reduction block's chunk of `floats`: 4 per thread. Slots are multiples of 512
        // floats (rows: multiples of 64, tokens of 8) = 4 per thread × 128 threads.
        let reduce_chunks = |floats: usize| {
            debug_assert!(floats.is_multiple_of(4 * REDUCE_THREADS));
            (floats / (4 * REDUCE_THREADS)) as u32
        };
        match w.operand() {
            Operand::Dense(wd) => {
                let sched = match opts.splits {
                    Some(s) => Schedule { full: opts.unsplit_row_tiles.unwrap_or(0).min(row_tiles), splits: s },
                    None => plan_schedule(row_tiles, rows_per_tile, n_blocks, k_tiles, self.sm_count as usize, slots),
                };
                // Workspace: per split unit (row tile × token tile) `splits` slots.
                let split = sched.has_splits(row_tiles);
                let units = (row_tiles - sched.full) * n_blocks;
                let partial = self.workspace_ptr(if split { units * sched.splits * slot } else { 0 })?;
                let (full, splits) = (sched.full as u32, sched.splits as u32);
                let (wp, ldw) = (wd.device_ptr(), wd.ld() as u32);
                let grid = (sched.blocks(row_tiles) as u32, n_blocks as u32, 1);
                let mut args = args![wp, ldw, xp, ldx, yp, ldy, partial, mm, nn, kk, full, splits];
                self.launch(&func, grid, threads, smem, &mut args)?;
                if split {
                    let (reduce, _) = self.kernel(&format!("splitk_reduce_{dt}"), REDUCE_THREADS as u32, 0)?;
                    let (rows, tile, token_tiles) = (rows_per_tile as u32, n_tile as u32, n_blocks as u32);
                    let mut args = args![partial, yp, ldy, mm, nn, splits, full, rows, tile, token_tiles];
                    self.launch_dependent(&reduce, (reduce_chunks(units * slot), 1, 1), REDUCE_THREADS as u32, &mut args)?;
                }
            }
            Operand::Sparse(ws) => {
                if opts.unsplit_row_tiles.is_some() {
                    return Err(Error::InvalidArgument("unsplit_row_tiles applies to dense weights only".into()));
                }
                let cost = SparseCost { weight_bytes: ws.stored_bytes(), n_tile };
                let tiles = row_tiles * k_tiles;
                let blocks = match (opts.splits, opts.blocks) {
                    (Some(_), Some(_)) => {
                        return Err(Error::InvalidArgument("give splits or blocks, not both".into()));
                    }
                    (None, Some(b)) if b < row_tiles || b > tiles => {
                        return Err(Error::InvalidArgument(format!(
                            "blocks = {b}: must be between the {row_tiles} row tiles of 256 and the {tiles} tiles of 256×64"
                        )));
                    }
                    (None, Some(b)) => b,
                    (Some(s), None) => row_tiles * s,
                    (None, None) => plan_sparse_blocks(row_tiles, n_blocks, k_tiles, slots, cost),
                };
                debug_assert!(blocks >= row_tiles && blocks <= row_tiles * k_tiles);
                // Workspace: two slots per block and token tile, when some block's range
                // starts inside a row tile (`gpu::kernels::tile::StreamRange`): with
                // `blocks ≥ R`, exactly when `blocks > R` (range length < K).
                let split = blocks > row_tiles;
                let partial = self.workspace_ptr(if split { 2 * blocks * n_blocks * slot } else { 0 })?;
                let (flags, launch) = if split { self.completion_flags(blocks * n_blocks)? } else { (0, 0) };
                let offs = ws.tile_offsets.ptr();
                let words = ws.words.ptr();
                let (nb, ring) = (blocks as u32, ring as u32);
                let evict_first = u32::from(opts.l2_evict_first.unwrap_or(true));
                let mut args = args![offs, words, xp, ldx, yp, ldy, partial, mm, nn, kk, nb, ring, evict_first, flags, launch];
                self.launch(&func, (nb, n_blocks as u32, 1), threads, smem, &mut args)?;
                if split {
                    // At most one wave of resident blocks, each looping over chunks (see
                    // `gpu::kernels::reduce::streamk_reduce`).
                    let (reduce, resident) = self.kernel(&format!("streamk_reduce_{dt}"), REDUCE_THREADS as u32, 0)?;
                    let (kt, tile) = (k_tiles as u32, n_tile as u32);
                    let mut args = args![partial, yp, ldy, mm, nn, kt, nb, tile, flags, launch];
                    let chunks = reduce_chunks(row_tiles * n_blocks * slot);
                    let grid = (chunks.min(resident as u32), 1, 1);
                    self.launch_dependent(&reduce, grid, REDUCE_THREADS as u32, &mut args)?;
                }
            }
        }
        Ok(())
    }

    /// The sparse kernel's word ring for `nt` token tiles and a weight whose tiles (99% of
    /// them) hold at most `tile_words` words. Resident blocks matter most (measured on an
    /// H100, `benches/results/NOTES.md` item 17): four blocks per SM when a ring that lets
    /// four share an SM still holds such a tile whole (≤ 16 tokens from 70–80% sparsity on,
    /// where registers allow four), else three, else two (64 tokens, where registers allow
    /// two); the ring takes all the shared memory the blocks leave. Falls back to
    /// `layout::spmm_ring_words` when none is possible.
    fn spmm_ring(&self, name: &str, threads: u32, nt: usize, tile_words: usize) -> Result<usize> {
        let target = tile_words.next_multiple_of(128).max(1024);
        for blocks in [4, 3, 2] {
            // The largest ring that lets `blocks` blocks share an SM's shared memory.
            let per_block = (self.smem.per_sm / blocks).saturating_sub(self.smem.reserved_per_block).min(self.smem.per_block);
            let ring = per_block.saturating_sub(spmm_smem_bytes(nt, 0)) / 4 / 128 * 128;
            if ring < 1024 || (blocks == 4 && ring < target) {
                continue;
            }
            // Registers may still allow fewer blocks.
            let (_, slots) = self.kernel(name, threads, spmm_smem_bytes(nt, ring) as u32)?;
            if slots >= blocks * self.sm_count as usize {
                return Ok(ring);
            }
        }
        Ok(spmm_ring_words(nt))
    }

    /// Looks a kernel up, with its launch set-up done once per handle, kernel and shared
    /// memory size: the dynamic shared-memory limit raised to `smem`, the block size checked
    /// against what the kernel's register use allows, and the resident-block count
    /// (SMs × occupancy) for split planning.
    pub(crate) fn kernel(&self, name: &str, threads: u32, smem: u32) -> Result<(Function<'_>, usize)> {
        let func = self.module.get_function(name).map_err(|e| Error::driver("kernel lookup", e))?;
        if let Some(&slots) = self.kernels.borrow().get(&(name.to_string(), smem)) {
            return Ok((func, slots));
        }
        // The limit only ever rises, so launches set up earlier with less memory still fit.
        let limit = self.kernels.borrow().iter().filter(|((n, _), _)| n == name).map(|((_, s), _)| *s).max().unwrap_or(0);
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
        self.kernels.borrow_mut().insert((name.to_string(), smem), slots);
        Ok((func, slots))
    }

    /// Device address of a workspace of at least `floats` f32 (0 when none is needed).
    fn workspace_ptr(&self, floats: usize) -> Result<u64> {
        if floats == 0 {
            return Ok(0);
        }
        // Left uninitialised: every element the reduction reads is written by the split
        // kernel first.
        self.grow(&self.workspace, floats, "workspace")?;
        Ok(self.workspace.borrow().as_ref().map_or(0, |b| b.ptr()))
    }

    /// The split SpMM's completion flags for `count` blocks × token tiles (device address)
    /// and the number this launch's blocks publish in them (`gpu::flag`). Every launch gets
    /// the next number, so a flag an earlier launch set never matches it; the flags are
    /// zeroed when allocated and again when the number wraps (0 is never used).
    fn completion_flags(&self, count: usize) -> Result<(u64, u32)> {
        let (launch, wrapped) = next_launch(self.flag_launch.get());
        let grown = self.grow(&self.flags, count, "completion flags")?;
        let flags = self.flags.borrow();
        let (ptr, len) = flags.as_ref().map_or((0, 0), |b| (b.ptr(), b.len()));
        if grown || wrapped {
            // SAFETY: sets `len` u32 of a live allocation, queued on this handle's stream
            // after every kernel that used the flags before and before any that reads them.
            let rc = unsafe { cust::sys::cuMemsetD32Async(ptr, 0, len, self.stream.as_inner()) };
            Error::check_raw("zeroing completion flags", rc)?;
        }
        self.flag_launch.set(launch);
        Ok((ptr, launch))
    }

    /// Makes `buffer` hold at least `len` elements, reallocating (uninitialised) when it is
    /// smaller; returns whether it did. The handle's workspaces grow this way, so a `linear`
    /// call allocates nothing once they are large enough.
    pub(crate) fn grow<T: cust::memory::DeviceCopy>(
        &self,
        buffer: &RefCell<Option<DeviceAlloc<T>>>,
        len: usize,
        what: &'static str,
    ) -> Result<bool> {
        let mut buffer = buffer.borrow_mut();
        if buffer.as_ref().is_some_and(|b| b.len() >= len) {
            return Ok(false);
        }
        // The stream may still use the old buffer: wait before freeing it.
        self.synchronize()?;
        *buffer = None;
        // SAFETY: its callers use it for f32 and u32 only, which have no invalid bit patterns;
        // each says how it initialises what its kernels read.
        *buffer = Some(unsafe { DeviceAlloc::uninitialized(&self.owner, len, what) }?);
        Ok(true)
    }

    /// Launches on this handle's stream.
    pub(crate) fn launch(&self, func: &Function<'_>, grid: (u32, u32, u32), block: u32, smem: u32, args: &mut [*mut c_void]) -> Result<()> {
        // SAFETY: every caller passes the argument list of the kernel's documented signature
        // (pointer-sized device addresses and u32 scalars, in order), built from validated
        // operands whose allocations outlive the queued work: they are borrowed for the call,
        // and buffers are freed only after the stream is synchronised or by their owner.
        unsafe { self.stream.launch(func, grid, block, smem, args) }.map_err(|e| Error::driver("kernel launch", e))
    }

    /// Queues `func` (no dynamic shared memory) as a programmatic dependent of the kernel
    /// queued before it where the driver and the loaded PTX build allow it, else as an
    /// ordinary launch. Only for kernels that wait for their predecessor themselves:
    /// `splitk_reduce` (`griddepcontrol.wait` in every thread first) and `streamk_reduce`
    /// (the completion flags of the SpMM blocks it reads from, then `griddepcontrol.wait`
    /// in every thread before it exits).
    fn launch_dependent(&self, func: &Function<'_>, grid: (u32, u32, u32), block: u32, args: &mut [*mut c_void]) -> Result<()> {
        let Some(launcher) = self.dependent_launch else {
            return self.launch(func, grid, block, 0, args);
        };
        // SAFETY: as in `launch`; the kernel waits for the one before it (see above), and the
        // stream and function handles are live handles of this `Gpu`.
        let rc = unsafe { launcher.launch(func.to_raw(), self.stream.as_inner(), grid, block, 0, args) };
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
    ($($a:ident),*) => { [$(&$a as *const _ as *mut c_void),*] };
}
pub(crate) use args;

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(plan_sparse_blocks(144, 1, 144, 528, cost), 528);
        // Two token tiles share the resident blocks.
        assert_eq!(plan_sparse_blocks(144, 2, 144, 528, cost), 264);
        // More row tiles than a wave, or too few tiles per block: a uniform split, R·s blocks.
        for (r, kt) in [(600, 144), (16, 64)] {
            let blocks = plan_sparse_blocks(r, 1, kt, 528, cost);
            assert!(blocks.is_multiple_of(r) && blocks >= r && blocks <= r * kt);
        }
    }

    #[test]
    fn launch_numbers_never_repeat_without_zeroed_flags() {
        assert_eq!(next_launch(0), (1, false));
        assert_eq!(next_launch(41), (42, false));
        // Wrapping restarts at 1 and zeroes the flags, so no older flag can match.
        assert_eq!(next_launch(u32::MAX), (1, true));
    }

    #[test]
    fn schedule_block_counts() {
        let s = Schedule { full: 528, splits: 5 };
        assert_eq!(s.blocks(576), 528 + 48 * 5);
        assert!(s.has_splits(576));
        assert!(!Schedule::whole(576).has_splits(576));
        assert!(!Schedule { full: 576, splits: 4 }.has_splits(576));
    }
}
