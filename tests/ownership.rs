//! The ownership rule of device objects (`host/src/memory.rs`), tried as a careless or hostile
//! caller would: objects outliving their handle, dropped on other threads, used with another
//! handle. Each test skips visibly without a GPU.

mod common;

use common::{gpu, random, Rng};
use half::f16;
use sparse_tc::{Error, Gpu, SparseWeight};

/// A matrix outliving its handle must neither free nor disturb memory that a later handle
/// allocated. Before the ownership model, dropping the last handle released the primary
/// context (freeing its memory); a new handle's allocations then reused those addresses, and
/// dropping the stale matrix freed one of them under the new handle's feet.
#[test]
fn objects_outliving_their_handle_free_nothing_of_another() {
    let Some(first) = gpu("objects_outliving_their_handle_free_nothing_of_another") else { return };
    let (rows, cols) = (256, 1024);
    let mut rng = Rng::new(1);
    let stale_data: Vec<f16> = random(&mut rng, rows * cols);
    let stale = first.upload(rows, cols, &stale_data).unwrap();
    let stale_sparse = first.upload_sparse(&SparseWeight::prune_magnitude(rows, cols, &stale_data, 0.5).unwrap()).unwrap();
    drop(first);

    // The objects are still usable data-wise: their context is alive. A new handle fills the
    // device with same-sized allocations (the addresses a freed context would hand out again).
    let second = Gpu::new().unwrap();
    let mut live = Vec::new();
    for i in 0..16 {
        let data: Vec<f16> = (0..rows * cols).map(|j| f16::from_f32(((i * 7 + j) % 13) as f32)).collect();
        live.push((second.upload(rows, cols, &data).unwrap(), data));
    }
    drop(stale);
    drop(stale_sparse);
    // Fresh allocations after the stale drops, written with other data: if a stale drop freed
    // one of `live`, one of these would now share its address and overwrite it.
    let fresh: Vec<_> = (0..16)
        .map(|_| second.upload(rows, cols, &vec![f16::from_f32(-1.0); rows * cols]).unwrap())
        .collect();
    for (m, data) in &live {
        assert_eq!(&second.download(m).unwrap(), data, "a live allocation was freed or overwritten");
    }
    for m in &fresh {
        assert!(live.iter().all(|(l, _)| l.device_ptr() != m.device_ptr()), "two live allocations share an address");
    }
}

/// A device object dropped on another thread (where no context is current) is freed in its own
/// context without disturbing the handle's.
#[test]
fn objects_dropped_on_other_threads() {
    let Some(gpu) = gpu("objects_dropped_on_other_threads") else { return };
    let mut rng = Rng::new(2);
    let data: Vec<f16> = random(&mut rng, 64 * 64);
    let keep = gpu.upload(64, 64, &data).unwrap();
    let moved = gpu.upload(64, 64, &data).unwrap();
    std::thread::spawn(move || drop(moved)).join().unwrap();
    assert_eq!(gpu.download(&keep).unwrap(), data);
    // The handle itself may be dropped elsewhere, with objects still alive here.
    let other = Gpu::new().unwrap();
    let survivor = other.upload(64, 64, &data).unwrap();
    std::thread::spawn(move || drop(other)).join().unwrap();
    drop(survivor);
    assert_eq!(gpu.download(&keep).unwrap(), data);
}

/// Using an object with a handle other than its own is refused by every method that takes
/// device objects, naming the operand; nothing is launched.
#[test]
fn objects_of_another_handle_are_refused() {
    let Some(a) = gpu("objects_of_another_handle_are_refused") else { return };
    let b = Gpu::new().unwrap();
    let mut rng = Rng::new(3);
    let (m, k, n) = (256, 128, 8);
    let wd: Vec<f16> = random(&mut rng, m * k);
    let xd: Vec<f16> = random(&mut rng, n * k);
    let (xa, wa) = (a.upload(n, k, &xd).unwrap(), a.upload(m, k, &wd).unwrap());
    let sa = a.upload_sparse(&SparseWeight::prune_magnitude(m, k, &wd, 0.7).unwrap()).unwrap();
    let (xb, wb) = (b.upload(n, k, &xd).unwrap(), b.upload(m, k, &wd).unwrap());
    let refused = |r: sparse_tc::Result<_>, operand: &str| match r {
        Err(Error::InvalidArgument(msg)) => {
            assert!(msg.contains(operand) && msg.contains("another Gpu handle"), "message {msg:?} should name {operand}")
        }
        Err(e) => panic!("expected InvalidArgument naming {operand}, got {e}"),
        Ok(_) => panic!("an object of another handle was accepted ({operand})"),
    };
    refused(b.linear(&xa, &wb).map(|_| ()), "X");
    refused(b.linear(&xb, &wa).map(|_| ()), "dense weight");
    refused(b.linear(&xb, &sa).map(|_| ()), "sparse weight");
    let mut ya = a.zeros::<f16>(n, m).unwrap();
    refused(b.linear_into(&xb, &wb, &mut ya, Default::default()), "Y");
    refused(b.download(&xa).map(|_| ()), "matrix");
    refused(b.fill(&mut ya, f16::ZERO), "matrix");
    // Each handle still works with its own objects.
    let ya = a.linear(&xa, &sa).unwrap();
    let yb = b.linear(&xb, &wb).unwrap();
    assert_eq!(a.download(&ya).unwrap().len(), n * m);
    assert_eq!(b.download(&yb).unwrap().len(), n * m);
}
