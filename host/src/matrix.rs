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
/// aligned and harmless. The padding is invisible through this API. A matrix over memory the
/// caller owns ([`DeviceMatrix::from_raw_parts`]) may have a larger `ld` (a multiple of 8):
/// its rows are `ld` elements apart, and nothing between them is read as part of it or
/// written.
///
/// It keeps the context of the [`Gpu`] that made it alive (it may outlive the handle) and can
/// only be used with that handle. `Send + Sync`.
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

    /// Whether the memory belongs to the caller ([`DeviceMatrix::from_raw_parts`]).
    pub fn is_borrowed(&self) -> bool {
        self.buf.is_borrowed()
    }

    /// Whether the rows lie back to back with only the zero padding between them (then
    /// the whole span is copied at once; otherwise row by row, leaving the gaps alone).
    fn is_packed(&self) -> bool {
        self.ld == padded_ld(self.cols)
    }

    /// A `rows × cols` matrix over device memory the caller owns: no copy, and dropping it
    /// frees nothing. For memory of other libraries (cudarc's `CudaSlice`, candle's CUDA
    /// storage) on the same device as `gpu`, which works in the device's primary context (see
    /// [`Gpu`]'s interop notes). Usable only with `gpu`, like every object of a handle.
    ///
    /// Element `(r, c)` is at `ptr + 2·(r·ld + c)` bytes.
    ///
    /// Checked here ([`Error::InvalidArgument`] or [`Error::Shape`], naming the value):
    /// `ptr` is not null and 16-byte aligned; `rows` and `cols` in `1..=2³¹−1`; `ld` a
    /// multiple of 8, at least `cols` rounded up to 8, at most `2³¹−1`; the span
    /// `(rows − 1)·ld + ⌈cols/8⌉·8` elements computed without overflow; and, from the driver
    /// (`cuPointerGetAttribute`), that `ptr` is device memory of `gpu`'s device and the span
    /// lies inside one allocation.
    ///
    /// # Safety
    /// The caller guarantees what the host cannot check:
    /// - **lifetime**: the memory stays allocated until this matrix is dropped *and* all work
    ///   queued with it has finished (e.g. [`Gpu::synchronize`] before freeing it; a queued
    ///   `linear` still reads it after the call returns). A [`Recording`](crate::Recording)
    ///   that used it extends this to its last replay.
    /// - **context**: it is usable from `gpu`'s context (same device; cudarc, candle and
    ///   [`Gpu::new`] share the device's primary context).
    /// - **padding**: when `cols` is not a multiple of 8, elements `cols..⌈cols/8⌉·8` of every
    ///   row belong to this matrix: zero whenever it is read (kernels read whole 16-byte
    ///   chunks; a NaN there would spread into results), and may be written with zeros.
    ///   With `cols % 8 == 0` there is no padding.
    /// - **ordering**: other writers of the memory (another library's stream) finish before
    ///   work queued with this matrix reads it, and do not touch it while that work may run
    ///   (queue on the same stream with [`Gpu::from_raw_stream`], or synchronise).
    /// - **aliasing**: no other live matrix of the handle covers memory this one writes as an
    ///   output while it is used (as for `&mut`: an output that aliases an input is a race).
    pub unsafe fn from_raw_parts(gpu: &Gpu, ptr: u64, rows: usize, cols: usize, ld: usize) -> Result<Self> {
        check_dims("from_raw_parts", rows, cols)?;
        let padded = padded_ld(cols);
        if ld < padded || ld % 8 != 0 || ld > MAX_DIM {
            return Err(Error::InvalidArgument(format!(
                "from_raw_parts: ld = {ld} must be a multiple of 8 in {padded}..={MAX_DIM} (cols = {cols} rounded up to 8)"
            )));
        }
        let span = Sizes::SHAPE.add(
            "from_raw_parts: span ((rows − 1)·ld + padded cols)",
            Sizes::SHAPE.mul("from_raw_parts: (rows − 1)·ld", rows - 1, ld)?,
            padded,
        )?;
        let bytes = Sizes::SHAPE.bytes("from_raw_parts: span", span, 2)?;
        let _queue = gpu.bind()?;
        gpu.check_device_span("from_raw_parts", ptr, bytes)?;
        // SAFETY: the span is inside one device allocation of `gpu`'s device (checked above);
        // its lifetime, context and contents are the caller's contract.
        let buf = unsafe { DeviceAlloc::borrowed(&gpu.owner, ptr, span) };
        Ok(DeviceMatrix { rows, cols, ld, buf, _elem: PhantomData })
    }
}

impl Gpu {
    /// Checks that `bytes` bytes at `ptr` are a 16-byte-aligned span of one device
    /// allocation on this handle's device (the context is current). `what` names the caller.
    pub(crate) fn check_device_span(&self, what: &str, ptr: u64, bytes: usize) -> Result<()> {
        if ptr == 0 {
            return Err(Error::InvalidArgument(format!("{what}: the device pointer is null")));
        }
        if ptr % 16 != 0 {
            return Err(Error::InvalidArgument(format!(
                "{what}: the device pointer {ptr:#x} is not 16-byte aligned (the kernels copy 16-byte chunks)"
            )));
        }
        use cust::sys::CUpointer_attribute as P;
        let attribute = |attr: P, out: *mut std::ffi::c_void| {
            // SAFETY: `out` points to a value of the type the attribute writes (an i32 for
            // the ordinal, a u64 for the range start and size).
            let rc = unsafe { cust::sys::cuPointerGetAttribute(out, attr, ptr) };
            Error::check_raw("cuPointerGetAttribute", rc).map_err(|e| {
                Error::InvalidArgument(format!("{what}: {ptr:#x} is not device memory the driver knows ({e})"))
            })
        };
        let mut ordinal: i32 = -1;
        attribute(P::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, (&mut ordinal as *mut i32).cast())?;
        let mut own: cust::sys::CUdevice = 0;
        // SAFETY: the handle's context is current (the caller bound it); writes one device.
        Error::check_raw("the context's device", unsafe { cust::sys::cuCtxGetDevice(&mut own) })?;
        if ordinal != own {
            return Err(Error::InvalidArgument(format!(
                "{what}: {ptr:#x} is memory of device {ordinal}, this handle runs on device {own}"
            )));
        }
        let (mut start, mut size) = (0u64, 0u64);
        attribute(P::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, (&mut start as *mut u64).cast())?;
        attribute(P::CU_POINTER_ATTRIBUTE_RANGE_SIZE, (&mut size as *mut u64).cast())?;
        let end = (ptr as u128) + bytes as u128;
        if end > start as u128 + size as u128 {
            return Err(Error::InvalidArgument(format!(
                "{what}: {bytes} bytes at {ptr:#x} run past the end of its allocation ({size} bytes at {start:#x})"
            )));
        }
        Ok(())
    }
}

/// A 2D copy of `height` rows of `width` bytes (synchronous without a stream).
struct Copy2d {
    src: (cust::sys::CUmemorytype, u64, usize),
    dst: (cust::sys::CUmemorytype, u64, usize),
    width: usize,
    height: usize,
}

impl Copy2d {
    /// Runs the copy (on `stream` when given, else synchronously).
    ///
    /// # Safety
    /// Both sides are live memory of their kind (host addresses as `u64`) holding `height`
    /// rows `pitch` bytes apart, each at least `width` bytes.
    unsafe fn run(&self, stream: Option<cust::sys::CUstream>, what: &'static str) -> Result<()> {
        use cust::sys::CUmemorytype as M;
        let host = |(kind, addr, _): (M, u64, usize)| if kind == M::CU_MEMORYTYPE_HOST { addr as usize } else { 0 };
        let dev = |(kind, addr, _): (M, u64, usize)| if kind == M::CU_MEMORYTYPE_DEVICE { addr } else { 0 };
        let copy = cust::sys::CUDA_MEMCPY2D {
            srcXInBytes: 0,
            srcY: 0,
            srcMemoryType: self.src.0,
            srcHost: host(self.src) as *const std::ffi::c_void,
            srcDevice: dev(self.src),
            srcArray: std::ptr::null_mut(),
            srcPitch: self.src.2,
            dstXInBytes: 0,
            dstY: 0,
            dstMemoryType: self.dst.0,
            dstHost: host(self.dst) as *mut std::ffi::c_void,
            dstDevice: dev(self.dst),
            dstArray: std::ptr::null_mut(),
            dstPitch: self.dst.2,
            WidthInBytes: self.width,
            Height: self.height,
        };
        // SAFETY: forwarded (see above).
        let rc = unsafe {
            match stream {
                Some(s) => cust::sys::cuMemcpy2DAsync_v2(&copy, s),
                None => cust::sys::cuMemcpy2D_v2(&copy),
            }
        };
        Error::check_raw(what, rc)
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
        let _queue = self.bind()?;
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
        let _queue = self.bind()?;
        let ld = padded_ld(cols);
        let buf = DeviceAlloc::zeroed(&self.owner, len, "allocate")?;
        Ok(DeviceMatrix { rows, cols, ld, buf, _elem: PhantomData })
    }

    /// Overwrites every element (padding stays zero), e.g. to poison an output in tests.
    pub fn fill<T: Element>(&self, m: &mut DeviceMatrix<T>, value: T) -> Result<()> {
        self.check_owner("fill: the matrix", &m.buf)?;
        let ld = padded_ld(m.cols);
        let mut host = vec![0u16; m.rows * ld];
        for row in host.chunks_exact_mut(ld) {
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
        let ld = padded_ld(m.cols);
        let mut host = vec![0u16; m.rows * ld];
        for (dst, src) in host.chunks_exact_mut(ld).zip(data.chunks_exact(m.cols)) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.to_bits();
            }
        }
        self.overwrite(m, &host, "write")
    }

    /// Waits for queued work, then copies padded rows (`rows × ⌈cols/8⌉·8` bits) into `m`.
    fn overwrite<T: Element>(&self, m: &mut DeviceMatrix<T>, padded: &[u16], what: &'static str) -> Result<()> {
        let _queue = self.bind()?;
        self.synchronize()?;
        if m.is_packed() {
            return m.buf.copy_from(padded, what);
        }
        let width = padded_ld(m.cols) * 2;
        debug_assert_eq!(padded.len() * 2, width * m.rows);
        use cust::sys::CUmemorytype as M;
        let copy = Copy2d {
            src: (M::CU_MEMORYTYPE_HOST, padded.as_ptr() as u64, width),
            dst: (M::CU_MEMORYTYPE_DEVICE, m.buf.ptr(), m.ld * 2),
            width,
            height: m.rows,
        };
        // SAFETY: `padded` holds `rows` rows of `width` bytes; the matrix's span holds `rows`
        // rows `ld·2` bytes apart, each at least `width` bytes (`from_raw_parts` checked).
        unsafe { copy.run(None, what) }
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
        let _queue = self.bind()?;
        if !src.is_packed() || !dst.is_packed() {
            use cust::sys::CUmemorytype as M;
            let width = padded_ld(src.cols) * 2;
            let copy = Copy2d {
                src: (M::CU_MEMORYTYPE_DEVICE, src.buf.ptr(), src.ld * 2),
                dst: (M::CU_MEMORYTYPE_DEVICE, dst.buf.ptr(), dst.ld * 2),
                width,
                height: src.rows,
            };
            // SAFETY: both spans hold `rows` rows `ld·2` bytes apart of at least `width`
            // bytes; queued on the stream as below.
            return unsafe { copy.run(Some(self.stream.as_inner()), "copy") };
        }
        // Same shape and both packed, so the same length (`rows × ld` elements of 2 bytes).
        let bytes = src.buf.len() * 2;
        // SAFETY: two live allocations of this handle of `bytes` bytes each; queued on its
        // stream, ordered with the work that writes the source or reads the destination.
        let rc = unsafe { cust::sys::cuMemcpyDtoDAsync_v2(dst.buf.ptr(), src.buf.ptr(), bytes, self.stream.as_inner()) };
        Error::check_raw("copy", rc)
    }

    /// Waits for queued work, then copies a device matrix back (row-major, no padding).
    pub fn download<T: Element>(&self, m: &DeviceMatrix<T>) -> Result<Vec<T>> {
        self.check_owner("download: the matrix", &m.buf)?;
        let _queue = self.bind()?;
        self.synchronize()?;
        // The whole span (for a strided borrowed matrix the gaps too: reading them is
        // harmless, they lie inside its allocation).
        let mut host = vec![0u16; m.buf.len()];
        m.buf.copy_to(&mut host, "download")?;
        Ok((0..m.rows).flat_map(|r| host[r * m.ld..r * m.ld + m.cols].iter().map(|&b| T::from_bits(b))).collect())
    }

    /// A copy of a device matrix (queued on the stream).
    pub fn duplicate<T: Element>(&self, m: &DeviceMatrix<T>) -> Result<DeviceMatrix<T>> {
        self.check_owner("duplicate: the matrix", &m.buf)?;
        let _queue = self.bind()?;
        Ok(DeviceMatrix { rows: m.rows, cols: m.cols, ld: m.ld, buf: m.buf.duplicate(&self.stream, "duplicate matrix")?, _elem: PhantomData })
    }

    /// A copy of a device sparse weight (queued on the stream).
    pub fn duplicate_sparse<T: Element>(&self, w: &DeviceSparseWeight<T>) -> Result<DeviceSparseWeight<T>> {
        self.check_owner("duplicate_sparse: the weight", &w.words)?;
        let _queue = self.bind()?;
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
        let _queue = self.bind()?;
        let tile_offsets = DeviceAlloc::from_slice(&self.owner, w.tile_offsets(), "upload offsets")?;
        // An all-empty matrix has no words; keep one word so the pointer is a real allocation.
        let words: &[u32] = if w.words().is_empty() { &[0] } else { w.words() };
        let words = DeviceAlloc::from_slice(&self.owner, words, "upload words")?;
        let typical_tile_words = typical_tile_words(w);
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
        let _queue = self.bind()?;
        let tile_offsets = DeviceAlloc::from_slice(&self.owner, w.tile_offsets(), "upload offsets")?;
        // Every tile has its 800-byte header, so `data` is never empty.
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

/// The Tiled-CSL tile length 99% of tiles do not exceed (the SpMM sizes its word ring by it).
fn typical_tile_words<T: Element>(w: &SparseWeight<T>) -> usize {
    let mut lens: Vec<u32> = w.tile_offsets().windows(2).map(|p| p[1] - p[0]).collect();
    let at = (lens.len() * 99 / 100).min(lens.len().saturating_sub(1));
    if lens.is_empty() { 0 } else { *lens.select_nth_unstable(at).1 as usize }
}

/// Where the arrays of a sparse weight lie in memory the caller owns, for
/// [`DeviceSparseWeight::from_raw_parts`]: the device copies of what
/// [`SparseWeight::tile_offsets`] / [`SparseWeight::words`] (Tiled-CSL) or
/// [`BitmapWeight::tile_offsets`] / [`BitmapWeight::data`] (bitmap) hold on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSparseParts {
    /// The format of the arrays.
    pub format: SparseFormat,
    /// Rows (out_features) and columns (in_features) of the weight.
    pub rows: usize,
    pub cols: usize,
    /// Device address and length (`u32`s) of the tile offsets.
    pub tile_offsets: u64,
    pub tile_offsets_len: usize,
    /// Device address and length (`u32`s) of the tile data (Tiled-CSL words, bitmap data).
    pub data: u64,
    pub data_len: usize,
    /// Tiled-CSL only: whether the words were bank-reordered (as
    /// [`SparseWeight::is_reordered`]); must be `false` for bitmap.
    pub reordered: bool,
}

impl<T: Element> DeviceSparseWeight<T> {
    /// A sparse weight over device arrays the caller owns: no copy kept, and dropping it
    /// frees nothing. Usable only with `gpu`, like every object of a handle.
    ///
    /// Validated in full: both pointers are checked as for
    /// [`DeviceMatrix::from_raw_parts`] (non-null, 16-byte aligned, device memory of
    /// `gpu`'s device, the arrays inside one allocation each); then, after
    /// [`Gpu::synchronize`], both arrays are copied to the host once and checked exactly as
    /// [`SparseWeight::from_parts`] / [`BitmapWeight::from_parts`] check them (their
    /// errors). That costs one read of the weight's stored bytes at construction.
    ///
    /// # Safety
    /// As for [`DeviceMatrix::from_raw_parts`] (lifetime, context, ordering), and: the arrays
    /// are not modified while this weight lives (the kernels trust what was validated here).
    pub unsafe fn from_raw_parts(gpu: &Gpu, parts: RawSparseParts) -> Result<Self> {
        let RawSparseParts { format, rows, cols, tile_offsets, tile_offsets_len, data, data_len, reordered } = parts;
        check_dims("DeviceSparseWeight::from_raw_parts", rows, cols)?;
        if format == SparseFormat::Bitmap && reordered {
            return Err(Error::InvalidArgument("DeviceSparseWeight::from_raw_parts: reordered applies to Tiled-CSL only".into()));
        }
        let nonempty = |what: &str, len: usize| {
            Sizes::SHAPE.in_range(&format!("DeviceSparseWeight::from_raw_parts: {what}"), len, 1..=usize::MAX, "a device array")
        };
        nonempty("tile_offsets_len", tile_offsets_len)?;
        nonempty("data_len", data_len)?;
        let offset_bytes = Sizes::SHAPE.bytes("DeviceSparseWeight::from_raw_parts: tile offsets", tile_offsets_len, 4)?;
        let data_bytes = Sizes::SHAPE.bytes("DeviceSparseWeight::from_raw_parts: data", data_len, 4)?;
        let _queue = gpu.bind()?;
        gpu.check_device_span("DeviceSparseWeight::from_raw_parts: tile_offsets", tile_offsets, offset_bytes)?;
        gpu.check_device_span("DeviceSparseWeight::from_raw_parts: data", data, data_bytes)?;
        // SAFETY: both spans are inside device allocations of `gpu`'s device (checked above);
        // lifetime, context and immutability are the caller's contract.
        let (offsets_dev, data_dev) =
            unsafe { (DeviceAlloc::<u32>::borrowed(&gpu.owner, tile_offsets, tile_offsets_len), DeviceAlloc::<u32>::borrowed(&gpu.owner, data, data_len)) };
        // Work queued on the handle's stream (the caller's, with `from_raw_stream`) may still
        // write them.
        gpu.synchronize()?;
        let mut offsets_host = vec![0u32; tile_offsets_len];
        offsets_dev.copy_to(&mut offsets_host, "from_raw_parts: reading the tile offsets")?;
        let mut data_host = vec![0u32; data_len];
        data_dev.copy_to(&mut data_host, "from_raw_parts: reading the tile data")?;
        let (stored_bytes, stage_hint) = match format {
            SparseFormat::TiledCsl => {
                let w = SparseWeight::<T>::from_parts(rows, cols, offsets_host, data_host, reordered)?;
                (w.stored_bytes(), typical_tile_words(&w))
            }
            SparseFormat::Bitmap => {
                let w = BitmapWeight::<T>::from_parts(rows, cols, offsets_host, data_host)?;
                (w.stored_bytes(), w.max_panel_bytes())
            }
        };
        Ok(DeviceSparseWeight {
            rows,
            cols,
            stored_bytes,
            reordered,
            format,
            stage_hint,
            tile_offsets: offsets_dev,
            words: data_dev,
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
