//! The seam between sparse formats and the rest of the library.
//!
//! Each format is one module behind two traits:
//! - [`SparseFormatWeight`] (public, host side): pack from dense, validate, decode, files,
//!   stored bytes, upload;
//! - `LaunchPlan` (crate-internal, device side): which kernel, how much shared memory and
//!   what per-launch stage parameter (the Tiled-CSL word ring, the bitmap panel slot).
//!
//! Both sparse kernels share the rest of the launch: 256-row blocks of `16/MT` warps, the
//! stream-K schedule over 256×64 tiles, the split-K slots, completion flags and
//! `streamk_reduce`, and one argument list (`offsets, data, x, ldx, y, ldy, partial, m, n,
//! k, blocks, stage, evict_first, flags, launch`). So `Gpu::linear` dispatches through
//! `SparseFormat::plan` and adding a format adds a module (and a variant here), not a
//! branch in `linear_into`.

use std::io::{Read, Write};

use super::bitmap::{self, BitmapWeight};
use super::tiled_csl_launch::TILED_CSL;
use super::SparseWeight;
use crate::element::Element;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::layout::spmm_default_mt;
use crate::linear::{DeviceLimits, LinearOptions, Occupancy};
use crate::matrix::DeviceSparseWeight;

/// A sparse weight format the kernels read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SparseFormat {
    /// Flash-LLM's Tiled-CSL ([`SparseWeight`]): a `u32` word (position, value) per nonzero.
    TiledCsl,
    /// Bitmap ([`BitmapWeight`]): a bit per element (lane-major `u64` masks) plus the
    /// nonzero values.
    Bitmap,
}

impl SparseFormat {
    /// The format's name.
    pub fn name(self) -> &'static str {
        match self {
            SparseFormat::TiledCsl => "Tiled-CSL",
            SparseFormat::Bitmap => "bitmap",
        }
    }

    /// The format's launch plan.
    pub(crate) fn plan(self) -> &'static dyn LaunchPlan {
        match self {
            SparseFormat::TiledCsl => &TILED_CSL,
            SparseFormat::Bitmap => &bitmap::launch::BITMAP,
        }
    }
}

/// Density (stored entries per element) from which the bitmap kernel is taken over the
/// Tiled-CSL one. Measured on an H100 (f16, 8 and 16 tokens, four layer shapes from
/// 11008×4096 to 36864×9216; `benches/results/NOTES.md` items 68–69): at 30% density the two
/// are within 4% of each other, at 10% Tiled-CSL is 1.2–1.5× faster (its decode costs per
/// nonzero, the bitmap's per element), at 50% the bitmap is 1.2–1.5× faster.
pub const BITMAP_MIN_DENSITY: f64 = 0.25;
/// Density above which the weight stays dense: the highest density at which the bitmap
/// kernel was measured faster than cuBLAS on every shape (50%: 1.12–1.61×; same
/// measurement). Between 50% and about 75% its bytes (`0.195 + 2·density` per element)
/// would still be fewer than dense, but it was not measured there. (0.505, not 0.5: a
/// weight pruned to 50% may keep a few entries more, e.g. ties or rounding per row.)
pub const SPARSE_MAX_DENSITY: f64 = 0.505;

/// The storage predicted fastest for a weight with `density` stored entries per element:
/// `None` for dense (above [`SPARSE_MAX_DENSITY`]), else the faster sparse format
/// ([`BITMAP_MIN_DENSITY`]).
pub fn fastest_for_density(density: f64) -> Option<SparseFormat> {
    if density > SPARSE_MAX_DENSITY {
        None
    } else if density >= BITMAP_MIN_DENSITY {
        Some(SparseFormat::Bitmap)
    } else {
        Some(SparseFormat::TiledCsl)
    }
}

/// Which format [`Gpu::upload_sparse_as`] uploads a weight in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FormatChoice {
    /// The sparse format predicted fastest for the weight's density: bitmap from
    /// [`BITMAP_MIN_DENSITY`] on, Tiled-CSL below (see [`fastest_for_density`]).
    #[default]
    Auto,
    /// This format, whatever the density.
    Is(SparseFormat),
}

impl FormatChoice {
    /// The format chosen for a Tiled-CSL weight (see [`FormatChoice::Auto`]).
    pub fn resolve<T: Element>(self, w: &SparseWeight<T>) -> SparseFormat {
        match self {
            FormatChoice::Is(f) => f,
            // Where dense would be fastest, the sparse format nearest to it.
            FormatChoice::Auto => fastest_for_density(w.density()).unwrap_or(SparseFormat::Bitmap),
        }
    }
}

/// What every sparse format offers on the host: packing, validation, decoding, files and the
/// upload to a [`DeviceSparseWeight`] (which then goes to [`Gpu::linear`] like any weight).
pub trait SparseFormatWeight<T: Element>: Sized {
    /// The format.
    const FORMAT: SparseFormat;
    /// Packs the nonzero entries of a dense row-major `rows × cols` matrix.
    fn from_dense(rows: usize, cols: usize, dense: &[T]) -> Result<Self>;
    /// Keeps the `round((1 − sparsity)·rows·cols)` largest magnitudes, then packs.
    fn prune_magnitude(rows: usize, cols: usize, dense: &[T], sparsity: f64) -> Result<Self>;
    /// Decodes to a dense row-major matrix.
    fn to_dense(&self) -> Vec<T>;
    /// Bytes a kernel reads for the weight.
    fn stored_bytes(&self) -> usize;
    /// Writes the weight's file (the container of [`crate::sparse::file`] with its format).
    fn save<W: Write>(&self, w: W) -> Result<()>;
    /// Reads and fully validates a file written by [`save`](Self::save).
    fn load<R: Read>(r: R) -> Result<Self>;
    /// Copies the (validated) weight to the device.
    fn upload(&self, gpu: &Gpu) -> Result<DeviceSparseWeight<T>>;
}

impl<T: Element> SparseFormatWeight<T> for SparseWeight<T> {
    const FORMAT: SparseFormat = SparseFormat::TiledCsl;
    fn from_dense(rows: usize, cols: usize, dense: &[T]) -> Result<Self> {
        SparseWeight::from_dense(rows, cols, dense)
    }
    fn prune_magnitude(rows: usize, cols: usize, dense: &[T], sparsity: f64) -> Result<Self> {
        SparseWeight::prune_magnitude(rows, cols, dense, sparsity)
    }
    fn to_dense(&self) -> Vec<T> {
        SparseWeight::to_dense(self)
    }
    fn stored_bytes(&self) -> usize {
        SparseWeight::stored_bytes(self)
    }
    fn save<W: Write>(&self, w: W) -> Result<()> {
        SparseWeight::save(self, w)
    }
    fn load<R: Read>(r: R) -> Result<Self> {
        SparseWeight::load(r)
    }
    fn upload(&self, gpu: &Gpu) -> Result<DeviceSparseWeight<T>> {
        gpu.upload_sparse_as(self, FormatChoice::Is(SparseFormat::TiledCsl))
    }
}

impl<T: Element> SparseFormatWeight<T> for BitmapWeight<T> {
    const FORMAT: SparseFormat = SparseFormat::Bitmap;
    fn from_dense(rows: usize, cols: usize, dense: &[T]) -> Result<Self> {
        BitmapWeight::from_dense(rows, cols, dense)
    }
    fn prune_magnitude(rows: usize, cols: usize, dense: &[T], sparsity: f64) -> Result<Self> {
        BitmapWeight::prune_magnitude(rows, cols, dense, sparsity)
    }
    fn to_dense(&self) -> Vec<T> {
        BitmapWeight::to_dense(self)
    }
    fn stored_bytes(&self) -> usize {
        BitmapWeight::stored_bytes(self)
    }
    fn save<W: Write>(&self, w: W) -> Result<()> {
        BitmapWeight::save(self, w)
    }
    fn load<R: Read>(r: R) -> Result<Self> {
        BitmapWeight::load(r)
    }
    fn upload(&self, gpu: &Gpu) -> Result<DeviceSparseWeight<T>> {
        gpu.upload_bitmap(self)
    }
}

/// The device half of a format: how `Gpu::linear` launches its kernel.
pub(crate) trait LaunchPlan: Sync {
    /// Entry name of the kernel for dtype `dt`, token tile `n_tile` and warp height `mt`.
    fn kernel(&self, dt: &str, n_tile: usize, mt: usize) -> String;
    /// Warp height (m16 tiles per warp) when the options name no block, for `nt` token
    /// tiles of 8 on a weight of `tiles` tiles of 256×64 stored in `stored_bytes`, and a
    /// device of `sms` SMs.
    fn warp_m_tiles(&self, nt: usize, _tiles: usize, _stored_bytes: usize, _sms: usize) -> usize {
        spmm_default_mt(nt)
    }
    /// Fewest 256×64 tiles per block for which `linear::plan_sparse_blocks` runs one full
    /// wave of stream-K blocks rather than splitting every row tile uniformly.
    fn stream_min_tiles(&self) -> usize;
    /// The kernel's stage parameter (its last-but-two argument) and dynamic shared memory for
    /// `nt` token tiles, from the weight's `stage_hint` (set by the format at upload) and the
    /// options (each format refuses the knobs that are not its own, naming them). `occupancy`
    /// as in `linear::plan`.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &self,
        stage_hint: usize,
        dev: &DeviceLimits,
        kernel: &str,
        threads: u32,
        nt: usize,
        opts: &LinearOptions,
        occupancy: &mut Occupancy<'_>,
    ) -> Result<(usize, usize)>;
}
