//! Tensor parallelism's arithmetic on the CPU (issue 22's part that needs no GPUs): a model
//! split over 2 or 4 ranks — q, k, v and gate, up by output rows, o and down by input
//! columns, their partial outputs summed by the all-reduce — computes what the whole model
//! computes. Each rank is a thread with its own `CpuBackend` of one `CpuGroup`.

use half::f16;
use sparse_tc::model::backend::{Backend, CpuGroup};
use sparse_tc::model::generate::{generate, Request};
use sparse_tc::model::load::synthetic::Synthetic;
use sparse_tc::model::transformer::{Shard, StepIo};
use sparse_tc::model::weights::TensorSource;
use sparse_tc::model::{CpuBackend, FormatChoice, Transformer, WeightPlan};
use sparse_tc::ops::SamplingParams;

const PLAN: WeightPlan = WeightPlan { prune: 0.0, format: FormatChoice::Dense, stack: false };
const PROMPT: [u32; 9] = [5, 17, 300, 2, 44, 9, 120, 77, 301];

/// Logits of every prompt position and 8 greedy tokens.
fn run<B: Backend>(b: &B, m: &Transformer<B>) -> (Vec<f32>, Vec<u32>) {
    let n = PROMPT.len();
    let arr = |v: &[u32]| {
        let mut a = b.ids(v.len()).unwrap();
        b.write_ids(&mut a, v).unwrap();
        a
    };
    let rows: Vec<u32> = (0..n as u32).collect();
    let io = StepIo { ids: arr(&PROMPT), slots: arr(&vec![0; n]), positions: arr(&rows), last: arr(&rows) };
    let mut cache = m.kv_cache(b, 1, n).unwrap();
    let mut s = m.scratch(b, n, n).unwrap();
    m.forward(b, &mut s, &mut cache, &io).unwrap();
    let logits = b.read(&s.logits).unwrap();
    let sampling = SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };
    let req = Request { prompts: vec![PROMPT.to_vec()], max_new_tokens: 8, sampling, stop: vec![], honour_stop: false, record_decode: false };
    (logits, generate(b, m, &req, &mut |_, _| {}).unwrap().tokens.remove(0))
}

/// Largest |a − b| relative to the largest |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64)) / scale
}

/// Every rank ends with the same logits and tokens, and they match the whole model's within
/// rounding: a row-parallel output is `world` partial sums, each rounded to f16 (2⁻¹¹
/// relative) before they are added, where the whole model rounds once; over a few blocks
/// that moves logits by a few f16 ulps of their range, well inside 1%.
#[test]
fn sharded_forward_equals_the_whole_model() {
    for (preset, world) in [("tiny", 2), ("tiny-opt", 2), ("tiny-opt", 4)] {
        let src = Synthetic::new(preset, 0.0, 11).unwrap();
        let whole_backend = CpuBackend::<f16>::new();
        let whole = Transformer::load(&whole_backend, &src, PLAN, &mut |_, _| {}).unwrap();
        let (want_logits, want_tokens) = run(&whole_backend, &whole);

        let group = CpuGroup::new(world);
        let results: Vec<(Vec<f32>, Vec<u32>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let (group, src) = (&group, &src);
                    s.spawn(move || {
                        let b = CpuBackend::<f16>::rank_of(group, rank).unwrap();
                        let m = Transformer::load_shard(&b, src, PLAN, Shard { rank, world }, &mut |_, _| {}).unwrap();
                        assert_eq!(m.dims().heads * world, src.config().heads);
                        run(&b, &m)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (rank, (logits, tokens)) in results.iter().enumerate() {
            assert_eq!(logits, &results[0].0, "{preset}/{world}: rank {rank}'s logits differ from rank 0's");
            assert_eq!(tokens, &results[0].1, "{preset}/{world}: rank {rank}");
        }
        let e = rel_err(&results[0].0, &want_logits);
        assert!(e < 1e-2, "{preset} over {world} ranks: logits differ from the whole model's by {e}");
        assert_eq!(results[0].1, want_tokens, "{preset} over {world} ranks: greedy tokens");
    }
}

/// Splits that do not divide evenly are refused before anything is loaded.
#[test]
fn uneven_splits_are_refused() {
    let src = Synthetic::new("tiny", 0.0, 1).unwrap(); // 4 heads, 2 KV heads
    let b = CpuBackend::<f16>::new();
    for shard in [Shard { rank: 0, world: 4 }, Shard { rank: 2, world: 2 }, Shard { rank: 0, world: 0 }] {
        let e = Transformer::load_shard(&b, &src, PLAN, shard, &mut |_, _| {}).err().expect("must be refused").to_string();
        assert!(e.contains("split") || e.contains("rank"), "{shard:?}: {e}");
    }
    // A shard on a backend that cannot sum over its ranks would silently compute a part.
    let e = Transformer::load_shard(&b, &src, PLAN, Shard { rank: 0, world: 2 }, &mut |_, _| {}).err().expect("must be refused");
    assert!(e.to_string().contains("all-reduce"), "{e}");
}

/// The same on the GPUs over NCCL (feature `nccl`): one rank per GPU, up to 2; with one GPU
/// a group of one, whose all-reduce is NCCL's copy, so the GPU model's logits are unchanged
/// bit for bit; with two, the bound of the test above (partial sums rounded before the sum).
#[cfg(feature = "nccl")]
#[test]
fn nccl_ranks_on_the_gpus_compute_what_one_gpu_does() {
    use sparse_tc::model::GpuBackend;
    use sparse_tc::nccl::{NcclComm, NcclId};
    use sparse_tc::Gpu;
    const TEST: &str = "nccl_ranks_on_the_gpus_compute_what_one_gpu_does";
    let gpu = match Gpu::new() {
        Ok(g) => g,
        Err(e) => return println!("SKIPPED {TEST}: no usable GPU ({e})"),
    };
    let id = match NcclId::new() {
        Ok(id) => id,
        Err(e) => return println!("SKIPPED {TEST}: {e}"),
    };
    let world = Gpu::device_count().min(2);
    let src = Synthetic::new("tiny", 0.0, 11).unwrap();
    let whole_backend = GpuBackend::<f16>::new(gpu);
    let whole = Transformer::load(&whole_backend, &src, PLAN, &mut |_, _| {}).unwrap();
    let (want_logits, want_tokens) = run(&whole_backend, &whole);
    let results: Vec<(Vec<f32>, Vec<u32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (src, id) = (&src, &id);
                s.spawn(move || {
                    let gpu = Gpu::with_device(rank as u32).unwrap();
                    let comm = NcclComm::join(&gpu, id, rank, world).unwrap();
                    let b = GpuBackend::<f16>::rank_of(gpu, comm);
                    let m = Transformer::load_shard(&b, src, PLAN, Shard { rank, world }, &mut |_, _| {}).unwrap();
                    run(&b, &m)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    println!("{TEST}: {world} rank(s)");
    for (rank, (logits, tokens)) in results.iter().enumerate() {
        assert_eq!(logits, &results[0].0, "rank {rank}'s logits differ from rank 0's");
        assert_eq!(tokens, &results[0].1, "rank {rank}");
    }
    if world == 1 {
        assert_eq!(results[0].0, want_logits, "a group of one changed the logits");
    } else {
        let e = rel_err(&results[0].0, &want_logits);
        assert!(e < 1e-2, "over {world} GPUs: logits differ from one GPU's by {e}");
    }
    assert_eq!(results[0].1, want_tokens, "over {world} GPUs: greedy tokens");
}
