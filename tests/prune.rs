//! Pruning whole models (issue 19) on the CPU in CI, and the packed checkpoint on the GPU
//! when there is one: every linear pruned to the requested per-row sparsity, calibration on
//! what earlier pruned blocks compute, prune → save → load round trips to identical weights
//! and identical greedy output, perplexity against a case with a known answer, and bad input
//! refused with an error.

mod common;

use half::f16;
use sparse_tc::model::config::Config;
use sparse_tc::model::generate::{generate, Request};
use sparse_tc::model::load::safetensors::{export_with, ExportOptions, HfCheckpoint, PACKED_SUFFIX};
use sparse_tc::model::load::synthetic::Synthetic;
use sparse_tc::model::perplexity::perplexity;
use sparse_tc::model::prune::{calibration_windows, prune_model, Method, Owl, Pattern, PruneConfig, Pruned, SparseGptOptions};
use sparse_tc::model::weights::{tensor_names, LinearRole, TensorSource, TensorSpec};
use sparse_tc::model::{CpuBackend, FormatChoice, GpuBackend, Transformer, WeightPlan};
use sparse_tc::ops::SamplingParams;
use std::path::PathBuf;

const DENSE: WeightPlan = WeightPlan { prune: 0.0, format: FormatChoice::Dense, stack: false };

fn cfg(method: Method, sparsity: f64, pattern: Pattern) -> PruneConfig {
    PruneConfig { method, sparsity, pattern, owl: None, sparsegpt: SparseGptOptions::default() }
}

/// Deterministic pseudo-random calibration windows for a model of `vocab` tokens.
fn windows(vocab: usize, count: usize, len: usize) -> Vec<Vec<u32>> {
    let mut x = 0x1234_5678u64;
    (0..count)
        .map(|_| {
            (0..len)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((x >> 33) % vocab as u64) as u32
                })
                .collect()
        })
        .collect()
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stc-prune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn greedy(prompts: Vec<Vec<u32>>) -> Request {
    let sampling = SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };
    Request { prompts, max_new_tokens: 12, sampling, stop: vec![], honour_stop: false, record_decode: true }
}

fn prune_tiny<'a>(src: &'a Synthetic, c: PruneConfig) -> Pruned<'a> {
    let b = CpuBackend::<f16>::new();
    let mut model = Transformer::load(&b, src, DENSE, &mut |_, _| {}).unwrap();
    let vocab = src.config().vocab;
    prune_model(&b, &mut model, src, &windows(vocab, 4, 32), &c, &mut |_, _| {}).unwrap()
}

fn linear_specs(c: &Config) -> Vec<TensorSpec> {
    (0..c.layers)
        .flat_map(|l| {
            LinearRole::all(c.arch).iter().map(move |r| {
                let (rows, cols) = r.shape(c);
                TensorSpec { name: format!("{}.weight", r.hf_prefix(c.arch, l)), rows, cols }
            })
        })
        .collect()
}

/// Every method and pattern leaves every row of every linear with the requested zeros, and
/// keeps the weights it does not drop (magnitude, Wanda) or changes them (SparseGPT).
#[test]
fn every_linear_gets_the_requested_sparsity() {
    for preset in ["tiny", "tiny-opt"] {
        let src = Synthetic::new(preset, 0.0, 3).unwrap();
        let c = src.config().clone();
        for (method, sparsity, pattern) in [
            (Method::Magnitude, 0.6, Pattern::Unstructured),
            (Method::Wanda, 0.5, Pattern::Unstructured),
            (Method::Wanda, 0.0, Pattern::NofM { n: 2, m: 4 }),
            (Method::SparseGpt, 0.7, Pattern::Unstructured),
        ] {
            let p = prune_tiny(&src, cfg(method, sparsity, pattern));
            let want = pattern.sparsity(sparsity);
            for spec in linear_specs(&c) {
                let w = p.tensor(&spec).unwrap();
                let orig = src.tensor(&spec).unwrap();
                for (r, row) in w.chunks(spec.cols).enumerate() {
                    let zeros = row.iter().filter(|v| **v == 0.0).count();
                    assert_eq!(zeros, (spec.cols as f64 * want).round() as usize, "{preset} {method:?} {} row {r}", spec.name);
                }
                let kept_same = w.iter().zip(&orig).all(|(a, b)| *a == 0.0 || a == b);
                assert_eq!(kept_same, method != Method::SparseGpt, "{preset} {method:?} {}", spec.name);
            }
            assert!((p.sparsity() - want).abs() < 0.01, "{preset} {method:?}: {}", p.sparsity());
            // Non-linear tensors are the original's.
            let norm = TensorSpec { name: tensor_names(&c)[1].name.clone(), rows: 1, cols: c.hidden };
            assert_eq!(p.tensor(&norm).unwrap(), src.tensor(&norm).unwrap());
        }
    }
}

/// OWL spreads layer sparsities around the target, and Wanda's mask depends on the
/// calibration data (unlike magnitude's).
#[test]
fn owl_and_calibration_matter() {
    let src = Synthetic::new("tiny", 0.0, 5).unwrap();
    let c = PruneConfig { owl: Some(Owl { threshold: 2.0, lambda: 0.1 }), ..cfg(Method::Wanda, 0.7, Pattern::Unstructured) };
    let p = prune_tiny(&src, c);
    let mean = p.layer_sparsity.iter().sum::<f64>() / p.layer_sparsity.len() as f64;
    assert!((mean - 0.7).abs() < 1e-9, "{:?}", p.layer_sparsity);
    assert!(p.layer_sparsity.iter().any(|&s| (s - 0.7).abs() > 0.01), "{:?}", p.layer_sparsity);

    let b = CpuBackend::<f16>::new();
    let mask = |calib: &[Vec<u32>]| {
        let mut model = Transformer::load(&b, &src, DENSE, &mut |_, _| {}).unwrap();
        let p = prune_model(&b, &mut model, &src, calib, &cfg(Method::Wanda, 0.5, Pattern::Unstructured), &mut |_, _| {}).unwrap();
        let spec = &linear_specs(src.config())[4];
        p.tensor(spec).unwrap().iter().map(|v| *v == 0.0).collect::<Vec<_>>()
    };
    let vocab = src.config().vocab;
    assert_ne!(mask(&windows(vocab, 4, 32)), mask(&windows(vocab, 4, 32)[..1].iter().map(|w| w.iter().map(|t| (t * 7 + 3) % vocab as u32).collect()).collect::<Vec<_>>()));
}

/// prune → save (packed) → load: the same weights, packed linears that load without
/// densifying, and the same greedy tokens as the in-memory pruned model; the dense export
/// of the sparse checkpoint has the same weights too.
#[test]
fn pruned_checkpoint_round_trips() {
    let src = Synthetic::new("tiny", 0.0, 7).unwrap();
    let p = prune_tiny(&src, cfg(Method::SparseGpt, 0.5, Pattern::Unstructured));
    let dir = tmp_dir("roundtrip");
    let opts = ExportOptions { packed: true, provenance: Some(serde_json::json!({"how": p.how})), ..ExportOptions::default() };
    export_with(&p, &dir, &opts, &mut |_, _| {}).unwrap();
    let back = HfCheckpoint::open(&dir).unwrap();
    let c = src.config();
    for spec in tensor_names(c) {
        let want: Vec<f32> = p.tensor(&spec).unwrap().iter().map(|v| f16::from_f32(*v).to_f32()).collect();
        assert_eq!(back.tensor(&spec).unwrap(), want, "{}", spec.name);
    }
    for spec in linear_specs(c) {
        assert!(back.packed(&spec).unwrap().is_some(), "{} not packed", spec.name);
    }
    let b = CpuBackend::<f16>::new();
    let prompts = vec![vec![1, 2, 3, 4], vec![9, 8]];
    let run = |s: &dyn TensorSource, format| {
        let m = Transformer::load(&b, s, WeightPlan { prune: 0.0, format, stack: false }, &mut |_, _| {}).unwrap();
        generate(&b, &m, &greedy(prompts.clone()), &mut |_, _| {}).unwrap().tokens
    };
    let want = run(&p, FormatChoice::Dense);
    assert_eq!(run(&back, FormatChoice::Auto), want);
    // Dense export of the sparse checkpoint: the plain layout, same weights.
    let dense_dir = tmp_dir("dense");
    export_with(&back, &dense_dir, &ExportOptions::default(), &mut |_, _| {}).unwrap();
    let dense = HfCheckpoint::open(&dense_dir).unwrap();
    for spec in linear_specs(c) {
        assert!(dense.packed(&spec).unwrap().is_none());
        assert_eq!(dense.tensor(&spec).unwrap(), back.tensor(&spec).unwrap());
    }
    assert_eq!(run(&dense, FormatChoice::Dense), want);
    let _ = std::fs::remove_dir_all(&dense_dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A damaged packed tensor (its checksum) and a checkpoint from a newer layout are refused.
#[test]
fn damaged_or_newer_checkpoints_are_refused() {
    let src = Synthetic::new("tiny", 0.0, 9).unwrap();
    let p = prune_tiny(&src, cfg(Method::Magnitude, 0.5, Pattern::Unstructured));
    let dir = tmp_dir("damaged");
    export_with(&p, &dir, &ExportOptions { packed: true, ..ExportOptions::default() }, &mut |_, _| {}).unwrap();
    let spec = &linear_specs(src.config())[0];
    // Flip one byte inside the packed words of the first linear.
    let file = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let name = format!("{}{PACKED_SUFFIX}", spec.name);
    let at = {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(&name).unwrap();
        t.data().as_ptr() as usize - bytes.as_ptr() as usize + t.data().len() - 100
    };
    bytes[at] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let back = HfCheckpoint::open(&dir).unwrap();
    let e = back.packed(spec).unwrap_err().to_string();
    assert!(e.contains(&name), "{e}");
    let cfg_path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    v["sparse_tc"]["checkpoint_version"] = 99.into();
    std::fs::write(&cfg_path, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = HfCheckpoint::open(&dir).err().expect("a newer layout must be refused").to_string();
    assert!(e.contains("checkpoint_version"), "{e}");
    v["model_type"] = "gpt2".into();
    v["sparse_tc"]["checkpoint_version"] = 1.into();
    std::fs::write(&cfg_path, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = HfCheckpoint::open(&dir).err().expect("another architecture must be refused").to_string();
    assert!(e.contains("gpt2"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad settings: sparsity out of range, no or too long calibration windows, a text shorter
/// than one window, a model from another checkpoint.
#[test]
fn bad_input_is_refused() {
    let src = Synthetic::new("tiny", 0.0, 1).unwrap();
    let b = CpuBackend::<f16>::new();
    let mut model = Transformer::load(&b, &src, DENSE, &mut |_, _| {}).unwrap();
    let vocab = src.config().vocab;
    let w = windows(vocab, 2, 16);
    let mut try_prune = |c: PruneConfig, w: &[Vec<u32>]| prune_model(&b, &mut model, &src, w, &c, &mut |_, _| {}).err().map(|e| e.to_string());
    for s in [1.0, -0.1, f64::NAN] {
        assert!(try_prune(cfg(Method::Wanda, s, Pattern::Unstructured), &w).is_some(), "sparsity {s}");
    }
    assert!(try_prune(cfg(Method::Wanda, 0.5, Pattern::NofM { n: 4, m: 4 }), &w).is_some());
    assert!(try_prune(cfg(Method::Wanda, 0.5, Pattern::Unstructured), &[]).is_some(), "no calibration");
    let long = windows(vocab, 1, src.config().max_seq + 1);
    assert!(try_prune(cfg(Method::SparseGpt, 0.5, Pattern::Unstructured), &long).unwrap().contains("context"));
    assert!(try_prune(cfg(Method::Wanda, 0.5, Pattern::Unstructured), &[vec![vocab as u32]]).unwrap().contains("vocabulary"));
    let e = calibration_windows(&[1, 2, 3], 4, 8).unwrap_err().to_string();
    assert!(e.contains("shorter than one window"), "{e}");
    assert_eq!(calibration_windows(&(0..100).collect::<Vec<_>>(), 4, 30).unwrap().len(), 3);
    let other = Synthetic::new("tiny-opt", 0.0, 1).unwrap();
    let mut opt_model = Transformer::load(&b, &other, DENSE, &mut |_, _| {}).unwrap();
    let e = prune_model(&b, &mut opt_model, &src, &w, &cfg(Method::Magnitude, 0.5, Pattern::Unstructured), &mut |_, _| {}).err().unwrap();
    assert!(e.to_string().contains("not loaded from this checkpoint"), "{e}");
}

/// A source with the final norm's weight zeroed: every logit is 0, every token has
/// probability 1/vocab, so the perplexity is exactly the vocabulary size.
struct Uniform(Synthetic);

impl TensorSource for Uniform {
    fn config(&self) -> &Config {
        self.0.config()
    }
    fn tensor(&self, spec: &TensorSpec) -> sparse_tc::Result<Vec<f32>> {
        let v = self.0.tensor(spec)?;
        Ok(if spec.name == "model.norm.weight" { vec![0.0; v.len()] } else { v })
    }
    fn describe(&self) -> String {
        "uniform".into()
    }
}

#[test]
fn perplexity_of_a_uniform_model_is_the_vocabulary_size() {
    let src = Uniform(Synthetic::new("tiny", 0.0, 2).unwrap());
    let b = CpuBackend::<f16>::new();
    let m = Transformer::load(&b, &src, DENSE, &mut |_, _| {}).unwrap();
    let tokens: Vec<u32> = windows(src.config().vocab, 1, 100).remove(0);
    for (context, stride) in [(32, 32), (32, 8)] {
        let p = perplexity(&b, &m, &tokens, context, stride, &mut |_, _| {}).unwrap();
        assert!((p.perplexity - src.config().vocab as f64).abs() < 1e-6 * p.perplexity, "{p:?}");
        let unscored = if stride == context { 100 / context } else { 0 };
        assert_eq!(p.tokens, 99 - unscored, "{p:?}");
    }
    // A real model's perplexity on a text it was not built for is above 1 and finite, and
    // the windows' order does not matter: the same with a smaller stride sees more context.
    let src = Synthetic::new("tiny", 0.0, 2).unwrap();
    let m = Transformer::load(&b, &src, DENSE, &mut |_, _| {}).unwrap();
    let p = perplexity(&b, &m, &tokens, 32, 32, &mut |_, _| {}).unwrap();
    assert!(p.perplexity > 1.0 && p.perplexity.is_finite(), "{p:?}");
    assert!(perplexity(&b, &m, &tokens, 1000, 1000, &mut |_, _| {}).is_err(), "context beyond the model's");
    assert!(perplexity(&b, &m, &[1], 32, 32, &mut |_, _| {}).is_err(), "one token");
}

/// On the GPU: the packed checkpoint uploads its words as they are and runs sparse; greedy
/// tokens equal the dense storage of the same weights and the CPU path's.
#[test]
fn gpu_packed_checkpoint_runs_sparse() {
    let Some(gpu) = common::gpu("gpu_packed_checkpoint_runs_sparse") else { return };
    let src = Synthetic::new("tiny", 0.0, 4).unwrap();
    let p = prune_tiny(&src, cfg(Method::Wanda, 0.6, Pattern::Unstructured));
    let dir = tmp_dir("gpu");
    export_with(&p, &dir, &ExportOptions { packed: true, ..ExportOptions::default() }, &mut |_, _| {}).unwrap();
    let back = HfCheckpoint::open(&dir).unwrap();
    let g = GpuBackend::<f16>::new(gpu);
    let prompts = vec![vec![5, 6, 7], vec![100, 200, 300, 400]];
    let sparse = Transformer::load(&g, &back, WeightPlan { prune: 0.0, format: FormatChoice::Auto, stack: false }, &mut |_, _| {}).unwrap();
    let (_, n_sparse, total) = sparse.linear_bytes(&g);
    assert_eq!(n_sparse, total, "every packed linear runs sparse");
    let dense = Transformer::load(&g, &back, DENSE, &mut |_, _| {}).unwrap();
    let a = generate(&g, &sparse, &greedy(prompts.clone()), &mut |_, _| {}).unwrap().tokens;
    let d = generate(&g, &dense, &greedy(prompts.clone()), &mut |_, _| {}).unwrap().tokens;
    assert_eq!(a, d, "sparse and dense storage of the same pruned weights");
    let _ = std::fs::remove_dir_all(&dir);
}
