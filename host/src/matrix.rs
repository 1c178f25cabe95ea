//! Device-resident operands: dense matrices and sparse weights (Tiled-CSL or bitmap).

use crate::checked::Sizes;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::memory::DeviceAlloc;
use crate::sparse::{BitmapWeight, FormatChoice, SparseFormat, SparseWeight};
use std::marker::PhantomData;

/// Largest row or column count the kernels index with 32-bit parameters.
pub(crate) const MAX_DIM: usize = i32::MAX as usize;

/// A row-major `rows × cols` matrix of `T` in device memory.
///
/// Rows are padded to a leading dimension `ld = cols` rounded up to 8 elements (16 bytes),
/// and the padding is always zero: kernels copy whole 16-byte chunks, which is then both
/// aligned and harmless. The padding is invisible through this API.
///
/// It keeps the context of the [`Gpu`] that made it alive (it may outlive the handle) and can
/// only be used with that handle.
pub struct DeviceMatrix<T: Element> {
    rows: usize,
    cols: usize,
    ld: usize,
    pub(crate) buf: DeviceAlloc<u16>,
    _elem: PhantomData<T>,
}

impl<T: Element> DeviceMatrix<T> {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Leading dimension in elements (`cols` rounded up to 8).
    pub fn ld(&self) -> usize {
        self.ld
    }
    /// Bytes of the stored values (`rows·cols·2`, padding not counted).
    pub fn bytes(&self) -> usize {
        self.rows * self.cols * 2
    }
    /// Raw device address (for other libraries, e.g. cuBLAS in the benchmarks).
    pub fn device_ptr(&self) -> u64 {
        self.buf.ptr()
    }
}

/// `cols` rounded up to a 16-byte multiple of 16-bit elements.
pub(crate) fn padded_ld(cols: usize) -> usize {
    cols.div_ceil(8) * 8
}

/// Checks a `rows × cols` shape for the device (each dimension in `1..=MAX_DIM`, the padded
/// matrix addressable) and returns `(rows · cols, padded elements rows · ld)`, computed with
/// checked arithmetic ([`Sizes`]); an error names `what` and the dimension.
pub(crate) fn check_dims(what: &str, rows: usize, cols: usize) -> Result<(usize, usize)> {
    Sizes::SHAPE.in_range(&format!("{what}: rows"), rows, 1..=MAX_DIM, "the kernels index with 32-bit parameters")?;
    Sizes::SHAPE.in_range(&format!("{what}: cols"), cols, 1..=MAX_DIM, "the kernels index with 32-bit parameters")?;
    let elems = Sizes::SHAPE.mul(&format!("{what}: rows × cols"), rows, cols)?;
    let padded = Sizes::SHAPE.mul(&format!("{what}: rows × padded cols"), rows, padded_ld(cols))?;
    Sizes::SHAPE.bytes(&format!("{what}: {rows}×{cols} matrix"), padded, 2)?;
    Ok((elems, padded))
}

impl Gpu {
    /// Copies a row-major `rows × cols` host matrix to the device.
    pub fn upload<T: Element>(&self, rows: usize, cols: usize, data: &[T]) -> Result<DeviceMatrix<T>> {
        let (elems, len) = check_dims("upload", rows, cols)?;
        if data.len() != elems {
            return Err(Error::Shape(format!("upload: {rows}×{cols} needs {elems} elements, got {}", data.len())));
        }
        self.bind()?;
        let ld = padded_ld(cols);
        let mut padded = vec![0u16; len];
        for (dst, src) in padded.chunks_exact_mut(ld).zip(data.chunks_exact(cols)) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.to_bits();
            }
        }
        let buf = DeviceAlloc::from_slice(&self.owner, &padded, "upload")?;
        Ok(DeviceMatrix { rows, cols, ld, buf, _elem: PhantomData })
    }

    /// A zero-filled `rows × cols` device matrix.
    pub fn zeros<T: Element>(&self, rows: usize, cols: usize) -> Result<DeviceMatrix<T>> {
        let (_, len) = check_dims("zeros", rows, cols)?;
        self.bind()?;
        let ld = padded_ld(cols);
        let buf = DeviceAlloc::zeroed(&self.owner, len, "allocate")?;
        Ok(DeviceMatrix { rows, cols, ld, buf, _elem: PhantomData })
    }

    /// Overwrites every element (padding stays zero), e.g. to poison an output in tests.
    pub fn fill<T: Element>(&self, m: &mut DeviceMatrix<T>, value: T) -> Result<()> {
        self.check_owner("fill: the matrix", &m.buf)?;
        let mut host = vec![0u16; m.rows * m.ld];
        for row in host.chunks_exact_mut(m.ld) {
            row[..m.cols].fill(value.to_bits());
        }
        self.overwrite(m, &host, "fill")
    }

    /// Overwrites a device matrix with row-major `rows × cols` host values, after the work
    /// queued before (e.g. new inputs of a recorded step, see [`Gpu::replay`]).
    pub fn write<T: Element>(&self, m: &mut DeviceMatrix<T>, data: &[T]) -> Result<()> {
        self.check_owner("write: the matrix", &m.buf)?;
        if data.len() != m.rows * m.cols {
            return Err(Error::Shape(format!(
                "write: a {}×{} matrix needs {} elements, got {}",
                m.rows,
                m.cols,
                m.rows * m.cols,
                data.len()
            )));
        }
        let mut host = vec![0u16; m.rows * m.ld];
        for (dst, src) in host.chunks_exact_mut(m.ld).zip(data.chunks_exact(m.cols)) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.to_bits();
            }
        }
        self.overwrite(m, &host, "write")
    }

    /// Waits for queued work, then copies padded rows (`rows × ld` bits) into `m`.
    fn overwrite<T: Element>(&self, m: &mut DeviceMatrix<T>, padded: &[u16], what: &'static str) -> Result<()> {
        self.bind()?;
        self.synchronize()?;
        m.buf.copy_from(padded, what)
    }

    /// `dst = src` on the device, queued on the stream (both the same shape).
    pub fn copy<T: Element>(&self, src: &DeviceMatrix<T>, dst: &mut DeviceMatrix<T>) -> Result<()> {
        self.check_owner("copy: the source", &src.buf)?;
        self.check_owner("copy: the destination", &dst.buf)?;
        if (src.rows, src.cols) != (dst.rows, dst.cols) {
            return Err(Error::Shape(format!(
                "copy: the source is {}×{}, the destination {}×{}",
                src.rows, src.cols, dst.rows, dst.cols
            )));
        }
        self.bind()?;
        // Same shape, so the same padded length (`rows × ld` elements of 2 bytes).
        let bytes = src.buf.len() * 2;
        // SAFETY: two live allocations of this handle of `bytes` bytes each; queued on its
        // stream, ordered with the work that writes the source or reads the destination.
        let rc = unsafe { cust::sys::cuMemcpyDtoDAsync_v2(dst.buf.ptr(), src.buf.ptr(), bytes, self.stream.as_inner()) };
        Error::check_raw("copy", rc)
    }

    /// Waits for queued work, then copies a device matrix back (row-major, no padding).
    pub fn download<T: Element>(&self, m: &DeviceMatrix<T>) -> Result<Vec<T>> {
        self.check_owner("download: the matrix", &m.buf)?;
        self.bind()?;
        self.synchronize()?;
        let mut host = vec![0u16; m.rows * m.ld];
        m.buf.copy_to(&mut host, "download")?;
        Ok(host
            .chunks_exact(m.ld)
            .flat_map(|row| row[..m.cols].iter().map(|&b| T::from_bits(b)))
            .collect())
    }

    /// A copy of a device matrix (queued on the stream).
    pub fn duplicate<T: Element>(&self, m: &DeviceMatrix<T>) -> Result<DeviceMatrix<T>> {
        self.check_owner("duplicate: the matrix", &m.buf)?;
        self.bind()?;
        Ok(DeviceMatrix { rows: m.rows, cols: m.cols, ld: m.ld, buf: m.buf.duplicate(&self.stream, "duplicate matrix")?, _elem: PhantomData })
    }

    /// A copy of a device sparse weight (queued on the stream).
    pub fn duplicate_sparse<T: Element>(&self, w: &DeviceSparseWeight<T>) -> Result<DeviceSparseWeight<T>> {
        self.check_owner("duplicate_sparse: the weight", &w.words)?;
        self.bind()?;
        Ok(DeviceSparseWeight {
            tile_offsets: w.tile_offsets.duplicate(&self.stream, "duplicate tile offsets")?,
            words: w.words.duplicate(&self.stream, "duplicate words")?,
            ..*w
        })
    }

    /// Copies a (validated) Tiled-CSL weight to the device, as a Tiled-CSL weight (the same as
    /// [`upload_sparse_as`](Self::upload_sparse_as) with `FormatChoice::Is(SparseFormat::TiledCsl)`).
    pub fn upload_sparse<T: Element>(&self, w: &SparseWeight<T>) -> Result<DeviceSparseWeight<T>> {
        self.upload_sparse_as(w, FormatChoice::Is(SparseFormat::TiledCsl))
    }

    /// Copies a (validated) Tiled-CSL weight to the device in the format `choice` names
    /// (`FormatChoice::Auto`: the one predicted fastest for its density, see
    /// [`FormatChoice`]); a bitmap upload packs the weight on the host first.
    pub fn upload_sparse_as<T: Element>(&self, w: &SparseWeight<T>, choice: FormatChoice) -> Result<DeviceSparseWeight<T>> {
        match choice.resolve(w) {
            SparseFormat::Bitmap => return self.upload_bitmap(&BitmapWeight::from_tiled_csl(w)?),
            SparseFormat::TiledCsl => {}
        }
        check_dims("upload_sparse", w.rows(), w.cols())?;
        self.bind()?;
        let tile_offsets = DeviceAlloc::from_slice(&self.owner, w.tile_offsets(), "upload offsets")?;
        // An all-empty matrix has no words; keep one word so the pointer is a real allocation.
        let words: &[u32] = if w.words().is_empty() { &[0] } else { w.words() };
        let words = DeviceAlloc::from_slice(&self.owner, words, "upload words")?;
        // The tile length 99% of tiles do not exceed (the SpMM sizes its word ring by it).
        let mut lens: Vec<u32> = w.tile_offsets().windows(2).map(|p| p[1] - p[0]).collect();
        let at = (lens.len() * 99 / 100).min(lens.len().saturating_sub(1));
        let typical_tile_words = if lens.is_empty() { 0 } else { *lens.select_nth_unstable(at).1 as usize };
        Ok(DeviceSparseWeight {
            rows: w.rows(),
            cols: w.cols(),
            stored_bytes: w.stored_bytes(),
            reordered: w.is_reordered(),
            format: SparseFormat::TiledCsl,
            stage_hint: typical_tile_words,
            tile_offsets,
            words,
            _elem: PhantomData,
        })
    }

    /// Copies a (validated) bitmap weight to the device.
    pub fn upload_bitmap<T: Element>(&self, w: &BitmapWeight<T>) -> Result<DeviceSparseWeight<T>> {
        check_dims("upload_bitmap", w.rows(), w.cols())?;
        self.bind()?;
        let tile_offsets = DeviceAlloc::from_slice(&self.owner, w.tile_offsets(), "upload offsets")?;
        // Every tile has its 544-byte header, so `data` is never empty.
        let words = DeviceAlloc::from_slice(&self.owner, w.data(), "upload bitmap tiles")?;
        Ok(DeviceSparseWeight {
            rows: w.rows(),
            cols: w.cols(),
            stored_bytes: w.stored_bytes(),
            reordered: false,
            format: SparseFormat::Bitmap,
            stage_hint: w.max_panel_bytes(),
            tile_offsets,
            words,
            _elem: PhantomData,
        })
    }
}

/// A sparse weight (`rows` = out_features × `cols` = in_features) in device memory, in one of
/// the [`SparseFormat`]s. Built only from a validated [`SparseWeight`] or [`BitmapWeight`],
/// so kernels never see inconsistent arrays.
/// Owned like a [`DeviceMatrix`]: usable only with the [`Gpu`] that uploaded it.
pub struct DeviceSparseWeight<T: Element> {
    rows: usize,
    cols: usize,
    stored_bytes: usize,
    reordered: bool,
    format: SparseFormat,
    /// The format's stage hint (`sparse::formats::LaunchPlan::stage`): Tiled-CSL, the words of
    /// the 99th-percentile tile list; bitmap, the bytes of the largest panel.
    pub(crate) stage_hint: usize,
    /// The format's tile offsets and tile data (Tiled-CSL words, bitmap tiles).
    pub(crate) tile_offsets: DeviceAlloc<u32>,
    pub(crate) words: DeviceAlloc<u32>,
    _elem: PhantomData<T>,
}

impl<T: Element> DeviceSparseWeight<T> {
    /// Rows (out_features).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns (in_features).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes a kernel reads for the weight: words plus tile offsets.
    pub fn stored_bytes(&self) -> usize {
        self.stored_bytes
    }
    /// Whether the words were bank-reordered on the host (Tiled-CSL only).
    pub fn is_reordered(&self) -> bool {
        self.reordered
    }
    /// The format the weight is stored in on the device.
    pub fn format(&self) -> SparseFormat {
        self.format
    }
}
