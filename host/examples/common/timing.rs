//! Kernel timing shared by the demos: CUDA events on the handle's stream, a warm-up measured
//! in time rather than in runs, and the timed functions interleaved so that clock or thermal
//! drift during the measurement hits them alike (as `benches/linear.rs` does).

use anyhow::Result;
use cust::event::{Event, EventFlags};
use sparse_tc::Gpu;
use std::time::{Duration, Instant};

/// Warm-up before timing: at least this long and five rounds, so that clocks, caches and
/// lazily loaded modules have settled (with five runs of a 50 µs kernel as the whole
/// warm-up, one demo run right after compute-sanitizer once timed 1.3–1.5× slow; NOTES
/// items 27 and 31).
const WARM_UP: Duration = Duration::from_millis(200);

/// Median time in µs of each function over `reps` rounds; a round runs every function once,
/// in order, each between two events.
pub fn median_us(gpu: &Gpu, reps: usize, fs: &mut [&mut dyn FnMut() -> sparse_tc::Result<()>]) -> Result<Vec<f64>> {
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < 5 || start.elapsed() < WARM_UP {
        for f in fs.iter_mut() {
            f()?;
        }
        rounds += 1;
        if rounds % 8 == 0 {
            gpu.synchronize()?; // keep the queue short so the elapsed time tracks the GPU
        }
    }
    gpu.synchronize()?;
    let pair = || -> Result<(Event, Event)> { Ok((Event::new(EventFlags::DEFAULT)?, Event::new(EventFlags::DEFAULT)?)) };
    let events = (0..reps * fs.len()).map(|_| pair()).collect::<Result<Vec<_>>>()?;
    for round in events.chunks(fs.len()) {
        for (f, (a, b)) in fs.iter_mut().zip(round) {
            a.record(gpu.stream())?;
            f()?;
            b.record(gpu.stream())?;
        }
    }
    gpu.synchronize()?;
    (0..fs.len())
        .map(|i| {
            let mut t = events.chunks(fs.len()).map(|r| Ok(r[i].1.elapsed_time_f32(&r[i].0)? as f64 * 1e3)).collect::<Result<Vec<f64>>>()?;
            t.sort_by(f64::total_cmp);
            Ok(t[t.len() / 2])
        })
        .collect()
}
