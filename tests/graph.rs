//! Recorded work (`Gpu::record` / `Gpu::replay`, CUDA graphs): a replay computes what the
//! eager calls compute, with the operands' contents at replay time; the split SpMM's
//! completion flags stay correct across replays and ordinary launches in between; and a
//! replay is refused with another handle or after the handle's workspace moved. Skips visibly
//! without a GPU.

mod common;

use common::{gpu, random, Rng};
use half::f16;
use sparse_tc::{Error, Gpu, LinearOptions, SparseWeight};

/// Split SpMM (stream-K with completion flags and a dependent reduction) and a split dense
/// linear, recorded once, replayed many times with new inputs written between replays and
/// eager calls interleaved: every replay bit-equal to the eager result of the same input.
#[test]
fn replays_equal_eager_calls_with_new_inputs() {
    let Some(g) = gpu("replays_equal_eager_calls_with_new_inputs") else { return };
    let (m, k, n) = (512, 2048, 3);
    let mut rng = Rng::new(5);
    let wd: Vec<f16> = random(&mut rng, m * k);
    let sparse = g.upload_sparse(&SparseWeight::prune_magnitude(m, k, &wd, 0.7).unwrap()).unwrap();
    let dense = g.upload(m, k, &wd).unwrap();
    let mut x = g.zeros::<f16>(n, k).unwrap();
    let (mut ys, mut yd) = (g.zeros::<f16>(n, m).unwrap(), g.zeros::<f16>(n, m).unwrap());
    // Splits force the workspace, flags and reductions into the recording.
    let sopts = LinearOptions { blocks: Some(64), ..Default::default() };
    let dopts = LinearOptions { splits: Some(4), ..Default::default() };
    let eager = |x: &sparse_tc::DeviceMatrix<f16>| {
        let (mut a, mut b) = (g.zeros::<f16>(n, m).unwrap(), g.zeros::<f16>(n, m).unwrap());
        g.linear_into(x, &sparse, &mut a, sopts).unwrap();
        g.linear_into(x, &dense, &mut b, dopts).unwrap();
        (g.download(&a).unwrap(), g.download(&b).unwrap())
    };
    // Warm-up: the workspace and flags reach their size.
    eager(&x);
    // The recording captures X's address: new inputs are written into it between replays.
    let rec = g
        .record(|| {
            g.linear_into(&x, &sparse, &mut ys, sopts)?;
            g.linear_into(&x, &dense, &mut yd, dopts)
        })
        .unwrap();
    assert!(rec.nodes() >= 4, "recorded {} nodes", rec.nodes());
    for round in 0..6 {
        let xs: Vec<f16> = random(&mut rng, n * k);
        g.write(&mut x, &xs).unwrap();
        // SAFETY: `x`, the weights and the outputs are alive and untouched by the host
        // until the downloads below, which wait for the replay.
        unsafe { g.replay(&rec) }.unwrap();
        let (got_s, got_d) = (g.download(&ys).unwrap(), g.download(&yd).unwrap());
        let (want_s, want_d) = eager(&x);
        assert_eq!(got_s, want_s, "round {round}: sparse replay differs from the eager call");
        assert_eq!(got_d, want_d, "round {round}: dense replay differs from the eager call");
    }
}

/// A recording is tied to its handle and to the handle's workspace as captured.
#[test]
fn replay_is_refused_elsewhere_or_after_the_workspace_moved() {
    let Some(g) = gpu("replay_is_refused_elsewhere_or_after_the_workspace_moved") else { return };
    let (m, k) = (256, 1024);
    let mut rng = Rng::new(9);
    let w = g.upload::<f16>(m, k, &random(&mut rng, m * k)).unwrap();
    let x = g.upload::<f16>(1, k, &random(&mut rng, k)).unwrap();
    let mut y = g.zeros::<f16>(1, m).unwrap();
    let opts = LinearOptions { splits: Some(2), ..Default::default() };
    g.linear_into(&x, &w, &mut y, opts).unwrap();
    let rec = g.record(|| g.linear_into(&x, &w, &mut y, opts)).unwrap();

    let other = Gpu::new().unwrap();
    // SAFETY: refused before anything is queued.
    let e = unsafe { other.replay(&rec) }.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");

    // A larger split needs a larger workspace: the recorded address is freed.
    let (big_m, big_k) = (4096, 8192);
    let wb = g.upload::<f16>(big_m, big_k, &random(&mut rng, big_m * big_k)).unwrap();
    let xb = g.upload::<f16>(64, big_k, &random(&mut rng, 64 * big_k)).unwrap();
    let mut yb = g.zeros::<f16>(64, big_m).unwrap();
    g.linear_into(&xb, &wb, &mut yb, LinearOptions { splits: Some(16), ..Default::default() }).unwrap();
    // SAFETY: refused before anything is queued (the workspace moved).
    let e = unsafe { g.replay(&rec) }.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("record again"), "{e}");
}

/// Work that would allocate or wait cannot be recorded: the error comes back, the stream is
/// usable afterwards.
#[test]
fn recording_what_cannot_be_recorded_fails_cleanly() {
    let Some(g) = gpu("recording_what_cannot_be_recorded_fails_cleanly") else { return };
    let (m, k) = (256, 1024);
    let mut rng = Rng::new(3);
    let (wh, xh): (Vec<f16>, Vec<f16>) = (random(&mut rng, m * k), random(&mut rng, 2 * k));
    let w = g.upload::<f16>(m, k, &wh).unwrap();
    let x = g.upload::<f16>(2, k, &xh).unwrap();
    let mut y = g.zeros::<f16>(2, m).unwrap();
    let split = LinearOptions { splits: Some(4), ..Default::default() };
    // The reference bits from a second handle: this one must not run a linear before the
    // recording (any split it ran would leave a workspace the recording could use).
    let h = Gpu::new().unwrap();
    let before = h.download(&h.linear(&h.upload::<f16>(2, k, &xh).unwrap(), &h.upload::<f16>(m, k, &wh).unwrap()).unwrap()).unwrap();
    // First use of a split workspace inside the recording: it would have to allocate. Both
    // refusals come from the library before any driver call (compute-sanitizer reports none).
    let e = g.record(|| g.linear_into(&x, &w, &mut y, split)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("without recording first"), "{e}");
    let e = g.record(|| g.synchronize()).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("recording"), "{e}");
    // The stream works normally afterwards: the same calls give the same bits, and the split
    // that could not be recorded runs (and records) once it has run unrecorded.
    assert_eq!(g.download(&g.linear(&x, &w).unwrap()).unwrap(), before, "after failed recordings");
    g.linear_into(&x, &w, &mut y, split).unwrap();
    let eager = g.download(&y).unwrap();
    let rec = g.record(|| g.linear_into(&x, &w, &mut y, split)).unwrap();
    g.fill(&mut y, f16::ZERO).unwrap();
    // SAFETY: x, w and y are alive and unchanged in size.
    unsafe { g.replay(&rec) }.unwrap();
    assert_eq!(g.download(&y).unwrap(), eager, "replay after failed recordings");
}
