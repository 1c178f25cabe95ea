//! `Y = X · Wᵀ` (the `nn.Linear` convention) for dense and sparse weights: shape checks,
//! kernel choice, split-K planning and launches.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::layout::{
    block_threads, dense_default_config, dense_smem_bytes, spmm_default_mt, spmm_max_nt, spmm_smem_bytes, DENSE_CONFIGS, SPMM_CONFIGS,
    REDUCE_THREADS, SPMM_ROW_TILES, TILE_K, TILE_M,
};
use crate::matrix::{DeviceMatrix, DeviceSparseWeight};
use cust::function::{BlockSize, Function};
use cust::memory::DeviceBuffer;
use std::ffi::c_void;

/// Options of [`Gpu::linear_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinearOptions {
    /// Number of K splits; `None` chooses from the shape and the SM count. Values above the
    /// number of 64-wide K tiles are refused.
    pub splits: Option<usize>,
    /// Block shape; `None` takes the tuned default for the kernel and token count. A tuning
    /// knob for benchmarks: every shape computes the same result.
    pub block: Option<BlockShape>,
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

/// Split-K choice from the number of output blocks, the K tiles, the SM count and the
/// resident blocks per SM (`slots` = SMs × occupancy). Measured on an H100
/// (`benches/linear.rs --tune all`):
/// - the dense kernel is bandwidth-bound: two resident blocks per SM already saturate HBM,
///   and extra splits cost partial-sum traffic and pipeline warm-up, so it takes the fewest
///   splits that give every SM two blocks, unless that leaves a short last wave (< 80% full);
/// - the sparse kernel is latency-bound (a block's steps are serial), so an idle SM in the
///   last wave costs its full share: it takes the fewest splits that fill waves ≥ 90%.
///
/// Each split keeps at least 4 K tiles for the pipeline to stream.
pub(crate) fn plan_splits(blocks: usize, k_tiles: usize, sms: usize, slots: usize, latency_bound: bool) -> usize {
    let max_splits = (k_tiles / 4).clamp(1, 32);
    let fill = |s: usize| {
        let b = blocks * s;
        b as f64 / (b.div_ceil(slots) * slots) as f64
    };
    let good = |s: usize| {
        if latency_bound {
            fill(s) >= 0.9
        } else {
            blocks * s >= 2 * sms && (blocks * s <= slots || fill(s) >= 0.8)
        }
    };
    (1..=max_splits)
        .find(|&s| good(s))
        .unwrap_or_else(|| (1..=max_splits).max_by(|&a, &b| fill(a).total_cmp(&fill(b)).then(b.cmp(&a))).unwrap_or(1))
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
        self.bind()?;
        let n_tile = n_tile_for(n);
        let nt = n_tile / 8;
        let dt = T::DTYPE.name();
        let (name, block, smem) = match w.operand() {
            Operand::Dense(_) => {
                let (rt, mt) = dense_default_config(nt);
                let b = opts.block.unwrap_or(BlockShape { row_tiles: rt, warp_m_tiles: mt });
                if !DENSE_CONFIGS.contains(&(b.row_tiles, b.warp_m_tiles)) {
                    return Err(Error::InvalidArgument(format!("dense block {b:?}: compiled shapes are {DENSE_CONFIGS:?}")));
                }
                let name = format!("dense_linear_{dt}_n{n_tile}_r{}_m{}", b.row_tiles, b.warp_m_tiles);
                (name, b, dense_smem_bytes(b.row_tiles, nt) as u32)
            }
            Operand::Sparse(_) => {
                let b = opts.block.unwrap_or(BlockShape { row_tiles: SPMM_ROW_TILES, warp_m_tiles: spmm_default_mt(nt) });
                let mt = b.warp_m_tiles;
                if b.row_tiles != SPMM_ROW_TILES || !SPMM_CONFIGS.contains(&mt) || nt > spmm_max_nt(mt) {
                    return Err(Error::InvalidArgument(format!(
                        "sparse block {b:?} for {n_tile} tokens: row_tiles must be {SPMM_ROW_TILES}, warp_m_tiles one of {SPMM_CONFIGS:?} (4 only up to 32 tokens)"
                    )));
                }
                (format!("spmm_linear_{dt}_n{n_tile}_m{mt}"), b, spmm_smem_bytes(nt) as u32)
            }
        };
        let rt = block.row_tiles;
        let threads = block_threads(rt, block.warp_m_tiles) as u32;
        let (func, slots) = self.kernel(&name, threads, smem)?;
        let k_tiles = k.div_ceil(TILE_K);
        let grid = (m.div_ceil(TILE_M * rt), n.div_ceil(n_tile));
        let splits = match opts.splits {
            Some(s) if s == 0 || s > k_tiles => {
                return Err(Error::InvalidArgument(format!(
                    "splits = {s}: must be between 1 and the {k_tiles} K tiles of 64"
                )))
            }
            Some(s) => s,
            None => {
                let latency_bound = matches!(w.operand(), Operand::Sparse(_));
                plan_splits(grid.0 * grid.1, k_tiles, self.sm_count as usize, slots, latency_bound)
            }
        };
        let partial = self.workspace_ptr(if splits > 1 { splits * n * m } else { 0 })?;

        let (ldx, ldy, mm, nn, kk) = (x.ld() as u32, y.ld() as u32, m as u32, n as u32, k as u32);
        let xp = x.device_ptr();
        let yp = y.device_ptr();
        let grid3 = (grid.0 as u32, grid.1 as u32, splits as u32);
        match w.operand() {
            Operand::Dense(wd) => {
                let (wp, ldw) = (wd.device_ptr(), wd.ld() as u32);
                let mut args = args![wp, ldw, xp, ldx, yp, ldy, partial, mm, nn, kk];
                self.launch(&func, grid3, threads, smem, &mut args)?;
            }
            Operand::Sparse(ws) => {
                let offs = ws.tile_offsets.as_device_ptr().as_raw();
                let words = ws.words.as_device_ptr().as_raw();
                let mut args = args![offs, words, xp, ldx, yp, ldy, partial, mm, nn, kk];
                self.launch(&func, grid3, threads, smem, &mut args)?;
            }
        }
        if splits > 1 {
            let threads = REDUCE_THREADS as u32;
            let (reduce, _) = self.kernel(&format!("splitk_reduce_{dt}"), threads, 0)?;
            let blocks = (n * m).div_ceil(REDUCE_THREADS) as u32;
            let s = splits as u32;
            let mut args = args![partial, yp, ldy, mm, nn, s];
            self.launch(&reduce, (blocks, 1, 1), threads, 0, &mut args)?;
        }
        Ok(())
    }

    /// Looks a kernel up, with its launch set-up done once per handle and kernel: the dynamic
    /// shared-memory limit raised to `smem`, the block size checked against what the kernel's
    /// register use allows, and the resident-block count (SMs × occupancy) for split planning.
    fn kernel(&self, name: &str, threads: u32, smem: u32) -> Result<(Function<'_>, usize)> {
        let func = self.module.get_function(name).map_err(|e| Error::driver("kernel lookup", e))?;
        if let Some(&slots) = self.kernels.borrow().get(name) {
            return Ok((func, slots));
        }
        // SAFETY: a plain attribute set on a valid function handle of our loaded module.
        let rc = unsafe {
            cust::sys::cuFuncSetAttribute(
                func.to_raw(),
                cust::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
        };
        if rc != cust::sys::cudaError_enum::CUDA_SUCCESS {
            return Err(Error::Driver { context: "setting max dynamic shared memory", name: format!("{rc:?}") });
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
        self.kernels.borrow_mut().insert(name.to_string(), slots);
        Ok((func, slots))
    }

    /// Device address of a workspace of at least `floats` f32 (0 when none is needed).
    fn workspace_ptr(&self, floats: usize) -> Result<u64> {
        if floats == 0 {
            return Ok(0);
        }
        let mut ws = self.workspace.borrow_mut();
        if ws.as_ref().is_none_or(|b| b.len() < floats) {
            // The stream may still use the old buffer: wait before freeing it.
            self.synchronize()?;
            *ws = None;
            // SAFETY: f32 has no invalid bit patterns, and every element the reduction reads
            // is written by the split kernel first.
            *ws = Some(unsafe { DeviceBuffer::uninitialized(floats) }.map_err(|e| Error::driver("workspace", e))?);
        }
        Ok(ws.as_ref().map_or(0, |b| b.as_device_ptr().as_raw()))
    }

    /// Launches on this handle's stream.
    fn launch(&self, func: &Function<'_>, grid: (u32, u32, u32), block: u32, smem: u32, args: &mut [*mut c_void]) -> Result<()> {
        // SAFETY: every caller passes the argument list of the kernel's documented signature
        // (pointer-sized device addresses and u32 scalars, in order), built from validated
        // operands whose allocations outlive the queued work: they are borrowed for the call,
        // and buffers are freed only after the stream is synchronised or by their owner.
        unsafe { self.stream.launch(func, grid, block, smem, args) }.map_err(|e| Error::driver("kernel launch", e))
    }
}

/// Kernel argument list: the address of each local, as `cuLaunchKernel` expects.
macro_rules! args {
    ($($a:ident),*) => { [$(&$a as *const _ as *mut c_void),*] };
}
use args;

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
    fn dense_splits_give_each_sm_two_blocks_without_a_short_last_wave() {
        // 576 blocks fit the 660 slots at once and cover 132 SMs twice: no split.
        assert_eq!(plan_splits(576, 144, 132, 660, false), 1);
        // 144 blocks: two splits.
        assert_eq!(plan_splits(144, 576, 132, 792, false), 2);
        // 288 blocks on 264 slots leave a 9% last wave; 3 splits fill 82%.
        assert_eq!(plan_splits(288, 144, 132, 264, false), 3);
        // Too few K tiles to split.
        assert_eq!(plan_splits(1, 3, 132, 264, false), 1);
    }

    #[test]
    fn sparse_splits_fill_waves() {
        // 144 blocks on 264 slots: 5 splits fill 720/792 = 91%.
        assert_eq!(plan_splits(144, 144, 132, 264, true), 5);
        for (blocks, kt) in [(1, 1000), (7, 8), (300, 64)] {
            let s = plan_splits(blocks, kt, 132, 264, true);
            assert!(s >= 1 && s <= (kt / 4).clamp(1, 32));
        }
    }
}
