//! One `Gpu` shared by several threads: the handle and its objects are `Send + Sync` (checked
//! at compile time, runs everywhere), and concurrent calls on one handle give bit for bit the
//! results of the same calls on one thread, also while the handle's workspace and completion
//! flags grow under them and while another thread records and replays. GPU parts skip
//! visibly without a GPU.

mod common;

use common::{gpu, random, Rng};
use half::f16;
use sparse_tc::sparse::{FormatChoice, SparseFormat};
use sparse_tc::{DeviceMatrix, DeviceSparseWeight, Gpu, LinearOptions, Recording, SparseWeight};
use std::sync::{Arc, Barrier};

/// Compile-time: what a server shares between threads is `Send + Sync`.
#[test]
fn handle_and_objects_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Gpu>();
    send_sync::<Arc<Gpu>>();
    send_sync::<DeviceMatrix<f16>>();
    send_sync::<DeviceSparseWeight<half::bf16>>();
    send_sync::<Recording>();
    send_sync::<sparse_tc::Error>();
}

/// The weights every thread uses: dense, Tiled-CSL and bitmap of one 512×2048 matrix.
struct Weights {
    dense: DeviceMatrix<f16>,
    csl: DeviceSparseWeight<f16>,
    bitmap: DeviceSparseWeight<f16>,
}

const M: usize = 512;
const K: usize = 2048;

fn weights(g: &Gpu) -> Weights {
    let mut rng = Rng::new(17);
    let w: Vec<f16> = random(&mut rng, M * K);
    let sw = SparseWeight::prune_magnitude(M, K, &w, 0.7).unwrap();
    Weights {
        dense: g.upload(M, K, &w).unwrap(),
        csl: g.upload_sparse_as(&sw, FormatChoice::Is(SparseFormat::TiledCsl)).unwrap(),
        bitmap: g.upload_sparse_as(&sw, FormatChoice::Is(SparseFormat::Bitmap)).unwrap(),
    }
}

/// The calls of one job: token count, input seed and options. Different splits and token
/// counts make different workspace and flag sizes, so threads grow them under each other.
fn jobs(thread: usize) -> Vec<(usize, u64, LinearOptions, LinearOptions)> {
    (0..6)
        .map(|i| {
            let n = [1, 3, 8, 17, 40, 64][(i + thread) % 6];
            // 2..=64: between the weight's 2 row tiles and its 64 tiles of 256×64.
            let blocks = [2, 16, 48, 64][(i + 3 * thread) % 4];
            let splits = [1, 2, 4, 8][(i + thread) % 4];
            let sparse = LinearOptions { blocks: Some(blocks), ..Default::default() };
            let dense = LinearOptions { splits: Some(splits), ..Default::default() };
            (n, (thread * 100 + i) as u64, sparse, dense)
        })
        .collect()
}

/// Runs one thread's jobs: for each, the three linears, downloaded.
fn run_jobs(g: &Gpu, w: &Weights, thread: usize) -> Vec<[Vec<f16>; 3]> {
    jobs(thread)
        .into_iter()
        .map(|(n, seed, sopts, dopts)| {
            let x: Vec<f16> = random(&mut Rng::new(seed), n * K);
            let x = g.upload(n, K, &x).unwrap();
            let mut y = [g.zeros::<f16>(n, M).unwrap(), g.zeros::<f16>(n, M).unwrap(), g.zeros::<f16>(n, M).unwrap()];
            g.linear_into(&x, &w.csl, &mut y[0], sopts).unwrap();
            g.linear_into(&x, &w.bitmap, &mut y[1], sopts).unwrap();
            g.linear_into(&x, &w.dense, &mut y[2], dopts).unwrap();
            y.map(|y| g.download(&y).unwrap())
        })
        .collect()
}

const THREADS: usize = 4;

#[test]
fn threads_sharing_one_handle_equal_one_thread() {
    let Some(reference_gpu) = gpu("threads_sharing_one_handle_equal_one_thread") else { return };
    // The reference on its own handle, one thread.
    let rw = weights(&reference_gpu);
    let expected: Vec<_> = (0..THREADS).map(|t| run_jobs(&reference_gpu, &rw, t)).collect();
    // A fresh handle (empty workspaces) shared by all threads, started together.
    let g = Arc::new(Gpu::new().unwrap());
    let w = Arc::new(weights(&g));
    for round in 0..3 {
        let start = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (g, w, start) = (Arc::clone(&g), Arc::clone(&w), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    run_jobs(&g, &w, t)
                })
            })
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            let got = h.join().unwrap();
            for (j, (a, b)) in got.iter().zip(&expected[t]).enumerate() {
                for (kind, (ya, yb)) in ["Tiled-CSL", "bitmap", "dense"].iter().zip(a.iter().zip(b)) {
                    assert!(ya == yb, "round {round}, thread {t}, job {j}, {kind}: differs from the single-thread result");
                }
            }
        }
    }
}

/// One thread records a step and replays it with new inputs while the others run eager calls
/// on the same handle: no other thread's work lands in the recording, every replay equals the
/// eager result of its input, and the others' results equal the single-thread ones.
#[test]
fn recording_and_replays_beside_other_threads() {
    let Some(g) = gpu("recording_and_replays_beside_other_threads") else { return };
    let g = Arc::new(g);
    let w = Arc::new(weights(&g));
    let expected: Vec<_> = (0..THREADS).map(|t| run_jobs(&g, &w, t)).collect();
    // The workspace now has its final size for every job (they all ran once).
    let sopts = LinearOptions { blocks: Some(64), ..Default::default() };
    let n = 8;
    let start = Arc::new(Barrier::new(THREADS + 1));
    let recorder = {
        let (g, w, start) = (Arc::clone(&g), Arc::clone(&w), Arc::clone(&start));
        std::thread::spawn(move || {
            let mut x = g.zeros::<f16>(n, K).unwrap();
            let mut y = g.zeros::<f16>(n, M).unwrap();
            start.wait();
            let rec = g.record(|| g.linear_into(&x, &w.csl, &mut y, sopts)).unwrap();
            assert_eq!(rec.nodes(), 3, "the recording holds the flag reset, the SpMM and its reduction only");
            for step in 0..20u64 {
                let xs: Vec<f16> = random(&mut Rng::new(1000 + step), n * K);
                g.write(&mut x, &xs).unwrap();
                // SAFETY: x, y and the weight live until after the download below, which
                // waits for the replay.
                unsafe { g.replay(&rec) }.unwrap();
                let replayed = g.download(&y).unwrap();
                let eager = g.linear_with(&x, &w.csl, sopts).unwrap();
                assert!(replayed == g.download(&eager).unwrap(), "replay {step} differs from the eager call");
            }
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (g, w, start) = (Arc::clone(&g), Arc::clone(&w), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                (0..3).map(|_| run_jobs(&g, &w, t)).collect::<Vec<_>>()
            })
        })
        .collect();
    recorder.join().unwrap();
    for (t, h) in workers.into_iter().enumerate() {
        for got in h.join().unwrap() {
            assert!(got == expected[t], "thread {t}: differs from the single-thread result");
        }
    }
}
