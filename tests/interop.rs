//! Borrowed device memory, streams and contexts (`DeviceMatrix::from_raw_parts`,
//! `DeviceSparseWeight::from_raw_parts`, `Gpu::from_raw_context`, `Gpu::from_raw_stream`):
//! results equal those of uploaded copies, strided views leave the memory between their rows
//! alone, dropping a borrowed object frees nothing, and every bad pointer, shape or layout is
//! refused on the host. The memory is allocated here with cust (what cudarc or candle would
//! hand over). Skips visibly without a GPU.

mod common;

use common::{gpu, random, Rng};
use cust::memory::{CopyDestination, DeviceBuffer};
use half::f16;
use sparse_tc::sparse::{BitmapWeight, SparseFormat};
use sparse_tc::{DeviceMatrix, DeviceSparseWeight, Error, Gpu, RawSparseParts, RopeStyle, SparseWeight};

const M: usize = 320;
const K: usize = 1000;
const N: usize = 5;

fn bits(v: &[f16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A device buffer of `len` u16 in `g`'s context (the primary context, current after any call).
fn device_u16(g: &Gpu, host: &[u16]) -> DeviceBuffer<u16> {
    g.memory_info().unwrap(); // makes the handle's context current on this thread
    DeviceBuffer::from_slice(host).unwrap()
}

#[test]
fn borrowed_matrices_compute_as_uploaded_ones() {
    let Some(g) = gpu("borrowed_matrices_compute_as_uploaded_ones") else { return };
    let mut rng = Rng::new(3);
    let (x, w): (Vec<f16>, Vec<f16>) = (random(&mut rng, N * K), random(&mut rng, M * K));
    let (xu, wu) = (g.upload(N, K, &x).unwrap(), g.upload(M, K, &w).unwrap());
    let expected = g.download(&g.linear(&xu, &wu).unwrap()).unwrap();
    // X as a strided view: rows 1048 elements apart (K = 1000 padded to 1000, ld 1048), the
    // gaps filled with a sentinel that must survive every operation.
    let ld = 1048;
    let sentinel = f16::from_f32(-7.5).to_bits();
    let mut host = vec![sentinel; N * ld];
    for r in 0..N {
        host[r * ld..r * ld + K].copy_from_slice(&bits(&x[r * K..(r + 1) * K]));
    }
    let xbuf = device_u16(&g, &host);
    let wbuf = device_u16(&g, &bits(&w));
    let ybuf = device_u16(&g, &vec![0; N * M]);
    {
        // SAFETY: the buffers outlive the views and the work (downloads synchronise).
        let (xv, wv, mut yv) = unsafe {
            (
                DeviceMatrix::<f16>::from_raw_parts(&g, xbuf.as_device_ptr().as_raw(), N, K, ld).unwrap(),
                DeviceMatrix::<f16>::from_raw_parts(&g, wbuf.as_device_ptr().as_raw(), M, K, K).unwrap(),
                DeviceMatrix::<f16>::from_raw_parts(&g, ybuf.as_device_ptr().as_raw(), N, M, M).unwrap(),
            )
        };
        assert!(xv.is_borrowed() && xv.ld() == ld);
        assert_eq!(g.download(&xv).unwrap(), x);
        g.linear_into(&xv, &wv, &mut yv, Default::default()).unwrap();
        assert_eq!(g.download(&yv).unwrap(), expected);
        // Into an uploaded output, and the borrowed output read back by the caller's buffer.
        let y2 = g.linear(&xv, &wu).unwrap();
        assert_eq!(g.download(&y2).unwrap(), expected);
        // write / fill / copy / duplicate on the strided view keep the gaps.
        let x2: Vec<f16> = random(&mut rng, N * K);
        let mut xv = xv;
        g.write(&mut xv, &x2).unwrap();
        assert_eq!(g.download(&xv).unwrap(), x2);
        let dup = g.duplicate(&xv).unwrap();
        assert!(!dup.is_borrowed());
        assert_eq!(g.download(&dup).unwrap(), x2);
        g.copy(&xu, &mut xv).unwrap();
        assert_eq!(g.download(&xv).unwrap(), x);
        g.fill(&mut xv, f16::from_f32(0.25)).unwrap();
        assert!(g.download(&xv).unwrap().iter().all(|&v| v == f16::from_f32(0.25)));
        g.synchronize().unwrap();
    }
    // The views are dropped: the memory is still the caller's, and the gaps untouched.
    let mut back = vec![0u16; N * ld];
    xbuf.copy_to(&mut back).unwrap();
    for r in 0..N {
        assert!(back[r * ld + K..(r + 1) * ld].iter().all(|&b| b == sentinel), "row {r}: a gap was written");
    }
    let mut y = vec![0u16; N * M];
    ybuf.copy_to(&mut y).unwrap();
    assert_eq!(y, bits(&expected));
}

/// Caller-owned memory for a `rows × cols` view with rows `ld` apart: the values, zero
/// padding up to the next multiple of 8, and the sentinel in the rest of each row.
fn strided(g: &Gpu, rows: usize, cols: usize, ld: usize, values: &[f16], sentinel: u16) -> DeviceBuffer<u16> {
    let mut host = vec![sentinel; rows * ld];
    for r in 0..rows {
        host[r * ld..r * ld + cols.div_ceil(8) * 8].fill(0);
        host[r * ld..r * ld + cols].copy_from_slice(&bits(&values[r * cols..(r + 1) * cols]));
    }
    device_u16(g, &host)
}

/// The model operations (norms, element-wise, gathers, RoPE, argmax) take every operand with
/// its own leading dimension: views whose rows are wider apart than the uploaded copies'
/// give the same bits, and the memory between their rows (a sentinel) is neither read nor
/// written. Each view's `ld` differs from the others' and from the uploaded `ld`, so an
/// operation that used one operand's `ld` for another would read or write the wrong rows.
#[test]
fn model_operations_on_strided_views() {
    let Some(g) = gpu("model_operations_on_strided_views") else { return };
    let mut rng = Rng::new(17);
    // 20 columns: uploaded rows are 24 apart (20 rounded up to 8, zero padding).
    let (rows, cols, eps) = (6, 20, 1e-5);
    let sentinel = f16::NAN.to_bits();
    let data = |rng: &mut Rng, r: usize| -> Vec<f16> { random(rng, r * cols) };
    let (a, b, w, bias) = (data(&mut rng, rows), data(&mut rng, rows), data(&mut rng, 1), data(&mut rng, 1));
    let up = |v: &[f16], r: usize| g.upload(r, cols, v).unwrap();
    let (au, bu, wu, biasu) = (up(&a, rows), up(&b, rows), up(&w, 1), up(&bias, 1));
    let lds = [32usize, 40, 48, 56, 64];
    let bufs: Vec<DeviceBuffer<u16>> = [&a, &b, &a, &b, &a].iter().zip(lds).map(|(v, ld)| strided(&g, rows, cols, ld, v, sentinel)).collect();
    // SAFETY: `bufs` outlives the views, and the work on them finishes before the end of
    // the block (downloads and `synchronize`); no two views share memory.
    let mut v: Vec<DeviceMatrix<f16>> = unsafe {
        bufs.iter().zip(lds).map(|(buf, ld)| DeviceMatrix::<f16>::from_raw_parts(&g, buf.as_device_ptr().as_raw(), rows, cols, ld).unwrap()).collect()
    };
    {
        let dl = |m: &DeviceMatrix<f16>| g.download(m).unwrap();
        let mut out = g.zeros::<f16>(rows, cols).unwrap();
        // Norms, views in every operand position (the weight and bias are 1 × cols rows).
        g.rms_norm(&au, &wu, eps, &mut out).unwrap();
        let [v0, v1, v2, v3, v4] = &mut v[..] else { unreachable!() };
        g.rms_norm(v0, &wu, eps, v4).unwrap();
        assert_eq!(dl(v4), dl(&out), "rms_norm");
        g.layer_norm(&au, &wu, &biasu, eps, &mut out).unwrap();
        g.layer_norm(v0, &wu, &biasu, eps, v4).unwrap();
        assert_eq!(dl(v4), dl(&out), "layer_norm");
        let mut res = g.duplicate(&au).unwrap();
        g.add_rms_norm(&mut res, &bu, &wu, eps, &mut out).unwrap();
        g.add_rms_norm(v2, v1, &wu, eps, v4).unwrap();
        assert_eq!((dl(v2), dl(v4)), (dl(&res), dl(&out)), "add_rms_norm");
        g.add_layer_norm(&mut res, &bu, &wu, &biasu, eps, &mut out).unwrap();
        g.add_layer_norm(v2, v1, &wu, &biasu, eps, v4).unwrap();
        assert_eq!((dl(v2), dl(v4)), (dl(&res), dl(&out)), "add_layer_norm");
        // Element-wise.
        g.silu_mul(&au, &bu, &mut out).unwrap();
        g.silu_mul(v0, v3, v4).unwrap();
        assert_eq!(dl(v4), dl(&out), "silu_mul");
        g.add_assign(&mut res, &bu).unwrap();
        g.add_assign(v2, v1).unwrap();
        assert_eq!(dl(v2), dl(&res), "add_assign");
        g.add_bias(&mut res, &biasu).unwrap();
        g.add_bias(v2, &biasu).unwrap();
        assert_eq!(dl(v2), dl(&res), "add_bias");
        g.relu(&mut res).unwrap();
        g.relu(v2).unwrap();
        assert_eq!(dl(v2), dl(&res), "relu");
        // Gathers: a view as the table and as the output.
        let ids = g.upload_indices(&[5, 0, 3, 3, 1, 2]).unwrap();
        g.embed(&bu, &ids, 0, false, &mut out).unwrap();
        g.embed(v1, &ids, 0, false, v4).unwrap();
        assert_eq!(dl(v4), dl(&out), "embed");
        g.embed(&au, &ids, 0, true, &mut out).unwrap();
        g.embed(v0, &ids, 0, true, v4).unwrap();
        assert_eq!(dl(v4), dl(&out), "embed (accumulate)");
        g.gather_rows(&au, &ids, &mut out).unwrap();
        g.gather_rows(v0, &ids, v4).unwrap();
        assert_eq!(dl(v4), dl(&out), "gather_rows");
        // RoPE in place (5 heads of 4) and argmax, reading a view.
        let pos = g.upload_indices(&[0, 1, 2, 7, 100, 5]).unwrap();
        let mut r = g.duplicate(&au).unwrap();
        g.rope(&mut r, &pos, 4, 10000.0, RopeStyle::HalfSplit).unwrap();
        g.rope(v0, &pos, 4, 10000.0, RopeStyle::HalfSplit).unwrap();
        assert_eq!(dl(v0), dl(&r), "rope");
        let mut picks = g.indices_with_capacity(rows).unwrap();
        g.argmax(v0, &mut picks).unwrap();
        let mut expected = g.indices_with_capacity(rows).unwrap();
        g.argmax(&r, &mut expected).unwrap();
        assert_eq!(g.download_indices(&picks).unwrap(), g.download_indices(&expected).unwrap(), "argmax");
        let _ = v3;
        g.synchronize().unwrap();
    }
    drop(v);
    for (i, (buf, ld)) in bufs.iter().zip(lds).enumerate() {
        let mut back = vec![0u16; rows * ld];
        buf.copy_to(&mut back).unwrap();
        for r in 0..rows {
            let row = &back[r * ld..(r + 1) * ld];
            assert!(row[cols..24].iter().all(|&x| x == 0), "view {i}, row {r}: padding not zero");
            assert!(row[24..].iter().all(|&x| x == sentinel), "view {i}, row {r}: the memory between rows was written");
        }
    }
}

#[test]
fn borrowed_matrices_are_validated() {
    let Some(g) = gpu("borrowed_matrices_are_validated") else { return };
    let buf = device_u16(&g, &vec![0; 64 * 64]);
    let p = buf.as_device_ptr().as_raw();
    let refused = |ptr: u64, rows: usize, cols: usize, ld: usize, needle: &str| {
        // SAFETY: every call is refused before anything uses the memory.
        match unsafe { DeviceMatrix::<f16>::from_raw_parts(&g, ptr, rows, cols, ld) } {
            Err(Error::InvalidArgument(m) | Error::Shape(m)) => assert!(m.contains(needle), "{needle}: {m}"),
            Err(e) => panic!("{needle}: unexpected error {e}"),
            Ok(_) => panic!("{needle}: accepted"),
        }
    };
    refused(0, 4, 8, 8, "null");
    refused(p + 2, 4, 8, 8, "aligned");
    refused(p, 4, 10, 12, "multiple of 8");
    refused(p, 4, 20, 16, "ld = 16");
    refused(p, 0, 8, 8, "rows");
    refused(p, 4, 0, 8, "cols");
    // 64 rows of 72 run past the 8 KiB allocation; so does a view starting near its end.
    refused(p, 64, 64, 72, "past the end");
    refused(p + 8192 - 16, 2, 8, 8, "past the end");
    // A host address is not device memory of the GPU (the driver says so, or, with
    // heterogeneous memory management, names the CPU as its device). compute-sanitizer
    // reports the driver's answer (an error status of `cuPointerGetAttribute`) as an API
    // error, so the sanitizer runs leave this case out.
    let host = [0u16; 64];
    if std::env::var_os("SPARSE_TC_SANITIZER").is_none() {
        refused((host.as_ptr() as u64 + 15) & !15, 1, 8, 8, "from_raw_parts");
    }
    // The whole allocation, exactly, is fine.
    // SAFETY: `buf` outlives the view; nothing is queued.
    assert!(unsafe { DeviceMatrix::<f16>::from_raw_parts(&g, p, 64, 64, 64) }.is_ok());
}

#[test]
fn borrowed_sparse_weights_compute_as_uploaded_ones() {
    let Some(g) = gpu("borrowed_sparse_weights_compute_as_uploaded_ones") else { return };
    let mut rng = Rng::new(9);
    let (x, w): (Vec<f16>, Vec<f16>) = (random(&mut rng, N * K), random(&mut rng, M * K));
    let xu = g.upload(N, K, &x).unwrap();
    let sw = SparseWeight::prune_magnitude(M, K, &w, 0.75).unwrap();
    let bw = BitmapWeight::from_tiled_csl(&sw).unwrap();
    g.memory_info().unwrap();
    for (format, offsets, data, reordered) in [
        (SparseFormat::TiledCsl, sw.tile_offsets(), sw.words(), sw.is_reordered()),
        (SparseFormat::Bitmap, bw.tile_offsets(), bw.data(), false),
    ] {
        let expected = match format {
            SparseFormat::TiledCsl => g.download(&g.linear(&xu, &g.upload_sparse(&sw).unwrap()).unwrap()).unwrap(),
            SparseFormat::Bitmap => g.download(&g.linear(&xu, &g.upload_bitmap(&bw).unwrap()).unwrap()).unwrap(),
        };
        let (ob, db) = (DeviceBuffer::from_slice(offsets).unwrap(), DeviceBuffer::from_slice(data).unwrap());
        let parts = RawSparseParts {
            format,
            rows: M,
            cols: K,
            tile_offsets: ob.as_device_ptr().as_raw(),
            tile_offsets_len: offsets.len(),
            data: db.as_device_ptr().as_raw(),
            data_len: data.len(),
            reordered,
        };
        // SAFETY: the buffers outlive the weight and its work (the download synchronises).
        let ws = unsafe { DeviceSparseWeight::<f16>::from_raw_parts(&g, parts) }.unwrap();
        assert_eq!((ws.format(), ws.rows(), ws.cols()), (format, M, K));
        assert_eq!(g.download(&g.linear(&xu, &ws).unwrap()).unwrap(), expected, "{format:?}");
        drop(ws);
        // Refused: a shape the arrays do not describe, a length past the allocation, and
        // corrupted offsets (read back and validated).
        for bad in [
            RawSparseParts { rows: M + 256, ..parts },
            RawSparseParts { data_len: data.len() + 64, ..parts },
            RawSparseParts { tile_offsets: 0, ..parts },
        ] {
            // SAFETY: refused before use.
            assert!(unsafe { DeviceSparseWeight::<f16>::from_raw_parts(&g, bad) }.is_err(), "{bad:?} accepted");
        }
        let mut corrupt = offsets.to_vec();
        corrupt[1] = corrupt[2] + 4;
        let cb = DeviceBuffer::from_slice(&corrupt).unwrap();
        let bad = RawSparseParts { tile_offsets: cb.as_device_ptr().as_raw(), ..parts };
        // SAFETY: refused before use.
        assert!(unsafe { DeviceSparseWeight::<f16>::from_raw_parts(&g, bad) }.is_err(), "{format:?}: corrupt offsets accepted");
    }
}

#[test]
fn handles_on_a_borrowed_context_and_stream() {
    let Some(g) = gpu("handles_on_a_borrowed_context_and_stream") else { return };
    let mut rng = Rng::new(11);
    let (x, w): (Vec<f16>, Vec<f16>) = (random(&mut rng, N * K), random(&mut rng, M * K));
    let expected = g.download(&g.linear(&g.upload(N, K, &x).unwrap(), &g.upload(M, K, &w).unwrap()).unwrap()).unwrap();
    // SAFETY: g's context is the primary context (retained by the new handle too); g's
    // stream outlives `on_stream` (dropped first, after a synchronisation).
    let (on_ctx, on_stream) = unsafe {
        (
            Gpu::from_raw_context(g.raw_context()).unwrap(),
            Gpu::from_raw_stream(g.raw_context(), g.stream().as_inner()).unwrap(),
        )
    };
    assert_eq!(on_ctx.raw_context(), g.raw_context());
    assert_eq!(on_stream.stream().as_inner(), g.stream().as_inner());
    for h in [&on_ctx, &on_stream] {
        let y = h.linear(&h.upload(N, K, &x).unwrap(), &h.upload(M, K, &w).unwrap()).unwrap();
        assert_eq!(h.download(&y).unwrap(), expected);
        // Objects stay bound to their handle, even on a shared stream and context.
        let xg = g.upload(N, K, &x).unwrap();
        assert!(matches!(h.linear(&xg, &h.upload(M, K, &w).unwrap()), Err(Error::InvalidArgument(_))));
    }
    on_stream.synchronize().unwrap();
    drop(on_stream);
    // The borrowed stream is not destroyed: g still works on it.
    let y = g.linear(&g.upload(N, K, &x).unwrap(), &g.upload(M, K, &w).unwrap()).unwrap();
    assert_eq!(g.download(&y).unwrap(), expected);
    // The primary context is retained by `on_ctx`: it outlives g.
    drop(g);
    let y = on_ctx.linear(&on_ctx.upload(N, K, &x).unwrap(), &on_ctx.upload(M, K, &w).unwrap()).unwrap();
    assert_eq!(on_ctx.download(&y).unwrap(), expected);
    // SAFETY: refused before use.
    assert!(matches!(unsafe { Gpu::from_raw_context(std::ptr::null_mut()) }, Err(Error::InvalidArgument(_))));
}
