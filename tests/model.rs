//! The model path end to end: the CPU backend in CI (KV-cache consistency, batching, bad
//! input), the GPU backend against it on a GPU, sparse against dense, and the real SmolLM2
//! checkpoint when it has been fetched (`.ci/fetch-smollm2`). GPU and checkpoint tests skip
//! visibly when they cannot run.

mod common;

use half::f16;
use sparse_tc::model::backend::Backend;
use sparse_tc::model::generate::{generate, Request};
use sparse_tc::model::load::synthetic::Synthetic;
use sparse_tc::model::transformer::{Projections, Scratch, StepIo};
use sparse_tc::model::weights::TensorSource;
use sparse_tc::model::backend::GpuWeight;
use sparse_tc::model::{CpuBackend, FormatChoice, GpuBackend, Transformer, WeightPlan};
use sparse_tc::sparse::SparseFormat;
use sparse_tc::ops::SamplingParams;

const GREEDY: SamplingParams = SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };

fn dense() -> WeightPlan {
    WeightPlan { prune: 0.0, format: FormatChoice::Dense, stack: false }
}

fn load<B: Backend>(b: &B, src: &dyn TensorSource, plan: WeightPlan) -> Transformer<B> {
    Transformer::load(b, src, plan, &mut |_, _| {}).unwrap()
}

fn request(prompts: Vec<Vec<u32>>, new: usize) -> Request {
    Request { prompts, max_new_tokens: new, sampling: GREEDY, stop: vec![], honour_stop: false, record_decode: true }
}

/// Logits of every position of `prompt` from one prefill.
fn prefill_logits<B: Backend>(b: &B, m: &Transformer<B>, prompt: &[u32]) -> Vec<f32> {
    let c = &m.config;
    let mut cache = b.kv_cache(c.layers, 1, c.kv_heads, prompt.len(), c.head_dim()).unwrap();
    let arr = |v: &[u32]| {
        let mut a = b.ids(v.len()).unwrap();
        b.write_ids(&mut a, v).unwrap();
        a
    };
    let n = prompt.len();
    let rows: Vec<u32> = (0..n as u32).collect();
    let io = StepIo { ids: arr(prompt), slots: arr(&vec![0; n]), positions: arr(&rows), last: arr(&rows) };
    let mut s = Scratch::new(b, c, n, n).unwrap();
    m.forward(b, &mut s, &mut cache, &io).unwrap();
    b.read(&s.logits).unwrap()
}

/// Logits of `prompt[k..]` decoded one token per forward pass after a prefill of `prompt[..k]`
/// (rows `k-1..n` of a full prefill), through the KV cache.
fn decoded_logits<B: Backend>(b: &B, m: &Transformer<B>, prompt: &[u32], k: usize) -> Vec<f32> {
    let c = &m.config;
    let n = prompt.len();
    let mut cache = b.kv_cache(c.layers, 1, c.kv_heads, n, c.head_dim()).unwrap();
    let arr = |v: &[u32]| {
        let mut a = b.ids(v.len()).unwrap();
        b.write_ids(&mut a, v).unwrap();
        a
    };
    let pos: Vec<u32> = (0..k as u32).collect();
    let io = StepIo { ids: arr(&prompt[..k]), slots: arr(&vec![0; k]), positions: arr(&pos), last: arr(&[k as u32 - 1]) };
    let mut s = Scratch::new(b, c, k, 1).unwrap();
    m.forward(b, &mut s, &mut cache, &io).unwrap();
    let mut out = b.read(&s.logits).unwrap();
    let mut s1 = Scratch::new(b, c, 1, 1).unwrap();
    for p in k..n {
        let io = StepIo { ids: arr(&[prompt[p]]), slots: arr(&[0]), positions: arr(&[p as u32]), last: arr(&[0]) };
        m.forward(b, &mut s1, &mut cache, &io).unwrap();
        out.extend(b.read(&s1.logits).unwrap());
    }
    out
}

/// Largest |a − b| relative to the largest |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64)) / scale
}

/// Decoding through the KV cache gives the logits a full prefill of the same tokens gives:
/// the cache holds exactly what recomputing would. `tol`: 0 where both passes sum in the
/// same order (the CPU), else the bound of the caller.
fn cache_matches_recompute<B: Backend>(b: &B, preset: &str, tol: f64) {
    let src = Synthetic::new(preset, 0.0, 7).unwrap();
    let m = load(b, &src, dense());
    let prompt: Vec<u32> = vec![5, 17, 300, 2, 44, 9, 120, 77, 301, 8, 8, 8];
    let k = 5;
    let full = prefill_logits(b, &m, &prompt);
    let vocab = m.config.vocab;
    let e = rel_err(&decoded_logits(b, &m, &prompt, k), &full[(k - 1) * vocab..]);
    assert!(e <= tol, "{preset}: decode through the cache differs from recompute by {e} (allowed {tol})");
}

/// Checks that every token greedy decoding produced is an argmax of `reference`'s logits for
/// the sequence so far, up to `tol` (relative to the largest logit): robust to near-ties,
/// which two correct implementations may break differently.
fn greedy_tokens_agree<B: Backend>(b: &B, m: &Transformer<B>, prompt: &[u32], tokens: &[u32], tol: f64) {
    let mut seq = prompt.to_vec();
    seq.extend_from_slice(tokens);
    let logits = prefill_logits(b, m, &seq);
    let vocab = m.config.vocab;
    for (j, &t) in tokens.iter().enumerate() {
        let row = &logits[(prompt.len() - 1 + j) * vocab..][..vocab];
        let max = row.iter().fold(f32::MIN, |a, &v| a.max(v)) as f64;
        let scale = row.iter().fold(0f64, |a, v| a.max(v.abs() as f64));
        assert!(max - row[t as usize] as f64 <= tol * scale, "token {j} ({t}) is not a greedy choice of the reference");
    }
}

#[test]
fn cpu_decode_through_the_cache_equals_recomputing() {
    let b = CpuBackend::<f16>::new();
    cache_matches_recompute(&b, "tiny", 0.0);
    cache_matches_recompute(&b, "tiny-opt", 0.0);
}

/// A batch of prompts of different lengths gives each sequence what it gets alone.
#[test]
fn cpu_batches_of_different_lengths_equal_single_runs() {
    let b = CpuBackend::<f16>::new();
    for preset in ["tiny", "tiny-opt"] {
        let m = load(&b, &Synthetic::new(preset, 0.0, 3).unwrap(), dense());
        let prompts: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![40, 41, 42, 43, 44, 45, 46, 47, 48], vec![7]];
        let batch = generate(&b, &m, &request(prompts.clone(), 5), &mut |_, _| {}).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let alone = generate(&b, &m, &request(vec![p.clone()], 5), &mut |_, _| {}).unwrap();
            assert_eq!(batch.tokens[i], alone.tokens[0], "{preset}: sequence {i}");
        }
    }
}

#[test]
fn bad_requests_are_refused_by_name() {
    let b = CpuBackend::<f16>::new();
    let m = load(&b, &Synthetic::new("tiny", 0.0, 1).unwrap(), dense());
    let err = |req: Request| generate(&b, &m, &req, &mut |_, _| {}).unwrap_err().to_string();
    assert!(err(request(vec![], 4)).contains("no prompts"));
    assert!(err(request(vec![vec![]], 4)).contains("prompt 0 is empty"));
    assert!(err(request(vec![vec![1, 99999]], 4)).contains("outside the vocabulary"));
    assert!(err(request(vec![vec![1; 250]], 10)).contains("context of 256"));
    assert!(err(request(vec![vec![1]], usize::MAX)).contains("overflows"));
    let mut r = request(vec![vec![1]], 2);
    r.sampling.top_p = 0.0;
    assert!(err(r).contains("top_p"));
}

/// Sampling with a seed is reproducible, and a different seed changes the choice somewhere.
#[test]
fn cpu_sampling_is_seeded() {
    let b = CpuBackend::<f16>::new();
    let m = load(&b, &Synthetic::new("tiny", 0.0, 2).unwrap(), dense());
    let run = |seed| {
        let mut r = request(vec![vec![1, 2, 3]], 12);
        r.sampling = SamplingParams { temperature: 1.5, top_k: 50, top_p: 0.95, seed };
        generate(&b, &m, &r, &mut |_, _| {}).unwrap().tokens
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

/// The GPU path against the CPU path on the same weights: same greedy tokens, logits close.
/// Both store activations in f16 at the same points; they differ in summation order (f32
/// accumulation in both) and in exp/rsqrt implementations, errors of a few f16 ulps per
/// operation that stay below 1% of the logit range over two blocks.
#[test]
fn gpu_matches_cpu() {
    let Some(gpu) = common::gpu("gpu_matches_cpu") else { return };
    let g = GpuBackend::<f16>::new(gpu);
    let c = CpuBackend::<f16>::new();
    for preset in ["tiny", "tiny-opt"] {
        for (sparsity, format) in [(0.0, FormatChoice::Dense), (0.7, FormatChoice::Sparse), (0.7, FormatChoice::Bitmap)] {
            let src = Synthetic::new(preset, sparsity, 11).unwrap();
            let plan = WeightPlan { prune: 0.0, format, stack: false };
            let (mg, mc) = (load(&g, &src, plan), load(&c, &src, plan));
            let expect = match format {
                FormatChoice::Bitmap => Some(SparseFormat::Bitmap),
                FormatChoice::Sparse => Some(SparseFormat::TiledCsl),
                _ => None,
            };
            let stored = match &mg.blocks[0].o.weight {
                GpuWeight::Sparse(w) => Some(w.format()),
                GpuWeight::Dense(_) => None,
            };
            assert_eq!(stored, expect, "{preset} {format:?}: the o projection's storage");
            let prompt: Vec<u32> = (0..37).map(|i| (i * 13 % 500) as u32).collect();
            let (lg, lc) = (prefill_logits(&g, &mg, &prompt), prefill_logits(&c, &mc, &prompt));
            let e = rel_err(&lg, &lc);
            assert!(e < 1e-2, "{preset} {format:?}: logits differ by {e}");
            let req = request(vec![prompt.clone(), prompt[..5].to_vec()], 8);
            let out = generate(&g, &mg, &req, &mut |_, _| {}).unwrap();
            for (p, t) in req.prompts.iter().zip(&out.tokens) {
                greedy_tokens_agree(&c, &mc, p, t, 1e-2);
            }
        }
    }
}

/// On the GPU: decoding through the cache equals recomputing; sparse equals dense on the same
/// pruned weights (the same products, summed in another order).
#[test]
fn gpu_cache_and_sparse_vs_dense() {
    let Some(gpu) = common::gpu("gpu_cache_and_sparse_vs_dense") else { return };
    let g = GpuBackend::<f16>::new(gpu);
    cache_matches_recompute(&g, "tiny", 1e-2);
    cache_matches_recompute(&g, "tiny-opt", 1e-2);
    let src = Synthetic::new("tiny", 0.8, 4).unwrap();
    let d = load(&g, &src, dense());
    let s = load(&g, &src, WeightPlan { prune: 0.0, format: FormatChoice::Sparse, stack: false });
    let prompt: Vec<u32> = (0..50).map(|i| (i * 7 % 500) as u32).collect();
    let e = rel_err(&prefill_logits(&g, &s, &prompt), &prefill_logits(&g, &d, &prompt));
    assert!(e < 1e-2, "sparse vs dense logits differ by {e}");
    let req = request(vec![prompt.clone()], 16);
    let out = generate(&g, &s, &req, &mut |_, _| {}).unwrap();
    greedy_tokens_agree(&g, &d, &prompt, &out.tokens[0], 1e-2);
}

/// q|k|v and gate|up stacked into one weight each (one launch per group, outputs read as
/// column blocks of one matrix) compute what separate weights compute: the same dot products,
/// summed in another order where the kernel's split of K differs with the stacked height
/// (each output rounded to f16 once, so ~1 ulp per linear; the logits bound is that of the
/// other GPU comparisons). Dense, sparse and automatic formats; the recorded decode of a
/// stacked model equals its eager decode exactly. On the CPU, which cannot alias memory, the
/// plan's `stack` is ignored and the results are the same bits.
#[test]
fn stacked_projections_compute_what_separate_ones_do() {
    let src_of = |s| Synthetic::new("tiny", s, 31).unwrap();
    let prompt: Vec<u32> = (0..41).map(|i| (i * 11 % 500) as u32).collect();
    let c = CpuBackend::<f16>::new();
    let plan = |format, stack| WeightPlan { prune: 0.0, format, stack };
    let (sep, st) = (load(&c, &src_of(0.0), plan(FormatChoice::Dense, false)), load(&c, &src_of(0.0), plan(FormatChoice::Dense, true)));
    assert!(matches!(st.blocks[0].attn_in, Projections::Separate(_)), "the CPU stacked projections");
    assert_eq!(prefill_logits(&c, &st, &prompt), prefill_logits(&c, &sep, &prompt), "CPU, stack requested");
    let Some(gpu) = common::gpu("stacked_projections_compute_what_separate_ones_do") else { return };
    let g = GpuBackend::<f16>::new(gpu);
    for (sparsity, format) in [(0.0, FormatChoice::Dense), (0.8, FormatChoice::Sparse), (0.6, FormatChoice::Auto), (0.7, FormatChoice::Bitmap)] {
        let (sep, st) = (load(&g, &src_of(sparsity), plan(format, false)), load(&g, &src_of(sparsity), plan(format, true)));
        for b in &st.blocks {
            assert!(matches!(b.attn_in, Projections::Stacked(_)) && matches!(b.mlp_in, Projections::Stacked(_)), "{format:?}: not stacked");
        }
        assert_eq!(st.linear_bytes(&g).2, 4 * st.blocks.len(), "{format:?}: 4 linears per block");
        assert_eq!(sep.linear_bytes(&g).2, 7 * sep.blocks.len(), "{format:?}: 7 linears per block");
        let e = rel_err(&prefill_logits(&g, &st, &prompt), &prefill_logits(&g, &sep, &prompt));
        assert!(e < 1e-2, "{format:?}: stacked vs separate logits differ by {e}");
        let mut req = request(vec![prompt.clone(), prompt[..3].to_vec()], 12);
        let recorded = generate(&g, &st, &req, &mut |_, _| {}).unwrap();
        assert!(recorded.replayed, "{format:?}: not recorded: {:?}", recorded.record_error);
        req.record_decode = false;
        assert_eq!(generate(&g, &st, &req, &mut |_, _| {}).unwrap().tokens, recorded.tokens, "{format:?}: recorded vs eager");
        for (p, t) in req.prompts.iter().zip(&recorded.tokens) {
            greedy_tokens_agree(&g, &sep, p, t, 1e-2);
        }
    }
}

/// Decode steps replayed from a recording (a CUDA graph) produce exactly the tokens of eager
/// steps: the same kernels on the same data, only launched differently. Dense and sparse
/// (split SpMM with completion flags), LLaMA and OPT, greedy and sampled, a batch of
/// different prompt lengths.
#[test]
fn gpu_recorded_decode_equals_eager() {
    let Some(gpu) = common::gpu("gpu_recorded_decode_equals_eager") else { return };
    let g = GpuBackend::<f16>::new(gpu);
    for (preset, sparsity, format) in
        [("tiny", 0.0, FormatChoice::Dense), ("tiny", 0.8, FormatChoice::Sparse), ("tiny-opt", 0.7, FormatChoice::Sparse), ("tiny-opt", 0.6, FormatChoice::Bitmap)]
    {
        let m = load(&g, &Synthetic::new(preset, sparsity, 21).unwrap(), WeightPlan { prune: 0.0, format, stack: false });
        let prompts: Vec<Vec<u32>> = [9usize, 30, 2].iter().map(|&n| (0..n).map(|i| (i * 17 % 500) as u32).collect()).collect();
        for sampling in [GREEDY, SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.9, seed: 3 }] {
            let mut req = Request { sampling, ..request(prompts.clone(), 12) };
            let recorded = generate(&g, &m, &req, &mut |_, _| {}).unwrap();
            req.record_decode = false;
            let eager = generate(&g, &m, &req, &mut |_, _| {}).unwrap();
            assert!(recorded.replayed, "{preset}: decode was not recorded: {:?}", recorded.record_error);
            assert!(!eager.replayed);
            assert_eq!(recorded.tokens, eager.tokens, "{preset} {format:?} {sampling:?}");
        }
    }
}
