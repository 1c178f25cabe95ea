//! Pruning a loaded model's linear layers to a target sparsity: by magnitude, by Wanda
//! (|W| times the norm of the input feature), or by SparseGPT (drop and reconstruct from the
//! inputs' Hessian); per output row, unstructured or N:M; optionally with OWL's non-uniform
//! per-layer sparsity.
//!
//! Data flow: calibration token windows → the model runs block by block
//! ([`Transformer::run_block`]) and each block's linear inputs are gathered ([`SiteStats`]) →
//! the block's weights are pruned on the host in f32/f64 → the pruned block replaces the
//! dense one on the backend and is run again, so the next block is calibrated on what the
//! pruned model computes (the sequential scheme of both papers). The result is a
//! [`Pruned`] tensor source: the original checkpoint with the pruned linear weights, ready to
//! load, evaluate or write as a checkpoint.

pub mod mask;
pub mod sparsegpt;

use super::backend::{Backend, LinearFormat};
use super::config::{Arch, Config};
use super::transformer::{Block, Linear, Scratch, Site, StepIo, Transformer};
use super::weights::{LinearRole, TensorSource, TensorSpec};
use crate::error::{Error, Result};
pub use mask::Pattern;
pub use sparsegpt::SparseGptOptions;
use std::collections::HashMap;

/// How weights are scored and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The smallest |W| of each row (no calibration).
    Magnitude,
    /// The smallest |W_ij| · ‖X_j‖₂ of each row (Sun et al., 2023).
    Wanda,
    /// Optimal-brain-surgeon pruning with reconstruction (Frantar & Alistarh, 2023).
    SparseGpt,
}

impl Method {
    /// Parses `magnitude`, `wanda` or `sparsegpt`.
    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "magnitude" => Ok(Method::Magnitude),
            "wanda" => Ok(Method::Wanda),
            "sparsegpt" => Ok(Method::SparseGpt),
            other => Err(Error::InvalidArgument(format!("pruning method {other:?}: one of magnitude, wanda, sparsegpt"))),
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Wanda => "wanda",
            Method::SparseGpt => "sparsegpt",
        }
    }

    fn needs_calibration(self) -> bool {
        self != Method::Magnitude
    }
}

/// OWL (Yin et al., 2024): layers whose Wanda scores hold more outliers (scores above
/// `threshold` times the block's mean) keep more weights; per-layer sparsities span
/// `sparsity ± lambda` and average to `sparsity`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Owl {
    pub threshold: f64,
    pub lambda: f64,
}

impl Default for Owl {
    fn default() -> Self {
        Owl { threshold: 5.0, lambda: 0.08 }
    }
}

/// What to prune, and how.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PruneConfig {
    pub method: Method,
    /// Share of each row's weights set to zero, in `[0, 1)` (ignored for N:M).
    pub sparsity: f64,
    pub pattern: Pattern,
    /// Non-uniform layer sparsity (unstructured only).
    pub owl: Option<Owl>,
    pub sparsegpt: SparseGptOptions,
}

impl PruneConfig {
    fn validate(&self) -> Result<()> {
        self.pattern.validate()?;
        if !(0.0..1.0).contains(&self.sparsity) {
            return Err(Error::InvalidArgument(format!("sparsity = {}: must be in [0, 1)", self.sparsity)));
        }
        if let Some(o) = self.owl {
            if self.pattern != Pattern::Unstructured {
                return Err(Error::InvalidArgument("OWL layer sparsities apply to unstructured pruning only".into()));
            }
            if !(o.threshold > 0.0 && o.threshold.is_finite()) || !(0.0..=0.5).contains(&o.lambda) {
                return Err(Error::InvalidArgument(format!("OWL threshold {} (> 0) and lambda {} (0..=0.5)", o.threshold, o.lambda)));
            }
        }
        Ok(())
    }
}

/// Statistics of one site's inputs over the calibration tokens.
#[derive(Clone, Debug)]
pub struct SiteStats {
    /// Tokens seen.
    pub rows: usize,
    /// Σ x_j² per input feature.
    pub sumsq: Vec<f64>,
    /// Σ xᵀx (features × features), when gathered.
    pub hessian: Option<Vec<f64>>,
}

impl SiteStats {
    pub fn new(features: usize, hessian: bool) -> Self {
        SiteStats { rows: 0, sumsq: vec![0.0; features], hessian: hessian.then(|| vec![0.0; features * features]) }
    }

    /// Adds the rows of `x` (rows × features, row-major).
    pub fn add(&mut self, x: &[f32]) -> Result<()> {
        let d = self.sumsq.len();
        if d == 0 || !x.len().is_multiple_of(d) {
            return Err(Error::Shape(format!("calibration statistics: {} values for {d} features", x.len())));
        }
        for row in x.chunks_exact(d) {
            for (s, &v) in self.sumsq.iter_mut().zip(row) {
                *s += f64::from(v) * f64::from(v);
            }
        }
        if let Some(h) = &mut self.hessian {
            add_gram(h, x, d);
        }
        self.rows += x.len() / d;
        Ok(())
    }

    /// ‖X_j‖₂ per feature.
    pub fn norms(&self) -> Vec<f64> {
        self.sumsq.iter().map(|s| s.sqrt()).collect()
    }
}

/// `h += xᵀx` for `x` rows × d: chunks of rows transposed, the lower triangle's dot products
/// in f32 over each chunk (short enough that f32 sums lose nothing that matters), summed in
/// f64, rows of `h` spread over all cores.
fn add_gram(h: &mut [f64], x: &[f32], d: usize) {
    const CHUNK: usize = 256;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for rows in x.chunks(CHUNK * d) {
        let n = rows.len() / d;
        let mut xt = vec![0.0f32; d * n];
        for (r, row) in rows.chunks_exact(d).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                xt[j * n + r] = v;
            }
        }
        let xt = &xt;
        // Row i of the lower triangle costs i + 1 dots: interleave rows over threads.
        let parts: Vec<Vec<(usize, Vec<f64>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        (t..d)
                            .step_by(threads)
                            .map(|i| {
                                let a = &xt[i * n..(i + 1) * n];
                                (i, (0..=i).map(|j| f64::from(dot(a, &xt[j * n..(j + 1) * n]))).collect())
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("gram thread")).collect()
        });
        for (i, row) in parts.into_iter().flatten() {
            for (j, v) in row.into_iter().enumerate() {
                h[i * d + j] += v;
                if i != j {
                    h[j * d + i] += v;
                }
            }
        }
    }
}

/// f32 dot product with 8 partial sums (vectorizes).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (pa, pb) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += pa[l] * pb[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Prunes one weight (rows × cols, row-major) in place.
pub fn prune_weight(w: &mut [f32], cols: usize, stats: Option<&SiteStats>, method: Method, sparsity: f64, pattern: Pattern, opts: SparseGptOptions) -> Result<()> {
    if cols == 0 || !w.len().is_multiple_of(cols) {
        return Err(Error::Shape(format!("prune: {} weights in rows of {cols}", w.len())));
    }
    let need = |what: &str| Error::InvalidArgument(format!("{} pruning needs calibration {what}", method.name()));
    match method {
        Method::Magnitude => score_and_drop(w, cols, sparsity, pattern, |_, v| f64::from(v.abs())),
        Method::Wanda => {
            let s = stats.ok_or_else(|| need("statistics"))?;
            if s.sumsq.len() != cols {
                return Err(Error::Shape(format!("wanda: statistics of {} features for {cols} columns", s.sumsq.len())));
            }
            let norms = s.norms();
            score_and_drop(w, cols, sparsity, pattern, |j, v| f64::from(v.abs()) * norms[j])
        }
        Method::SparseGpt => {
            let h = stats.and_then(|s| s.hessian.as_ref()).ok_or_else(|| need("Hessians"))?;
            sparsegpt::prune(w, cols, h, sparsity, pattern, opts)
        }
    }
}

fn score_and_drop(w: &mut [f32], cols: usize, sparsity: f64, pattern: Pattern, score: impl Fn(usize, f32) -> f64) -> Result<()> {
    for row in w.chunks_mut(cols) {
        let s: Vec<f64> = row.iter().enumerate().map(|(j, &v)| score(j, v)).collect();
        for (v, drop) in row.iter_mut().zip(mask::row_mask(&s, sparsity, pattern)) {
            if drop {
                *v = 0.0;
            }
        }
    }
    Ok(())
}

/// A checkpoint with pruned linear weights: every other tensor comes from the original.
pub struct Pruned<'a> {
    base: &'a dyn TensorSource,
    linears: HashMap<String, Vec<f32>>,
    /// The sparsity each block's linears were pruned to.
    pub layer_sparsity: Vec<f64>,
    /// E.g. "wanda, 50%, unstructured, 4096 calibration tokens".
    pub how: String,
}

impl Pruned<'_> {
    /// Zeros over all linear weights.
    pub fn sparsity(&self) -> f64 {
        let (zeros, total) = self.linears.values().fold((0usize, 0usize), |(z, t), w| (z + w.iter().filter(|v| **v == 0.0).count(), t + w.len()));
        zeros as f64 / total.max(1) as f64
    }
}

impl TensorSource for Pruned<'_> {
    fn config(&self) -> &Config {
        self.base.config()
    }

    fn tensor(&self, spec: &TensorSpec) -> Result<Vec<f32>> {
        match self.linears.get(&spec.name) {
            Some(w) if w.len() == spec.rows * spec.cols => Ok(w.clone()),
            Some(w) => Err(Error::Shape(format!("{}: pruned tensor has {} values, expected {}×{}", spec.name, w.len(), spec.rows, spec.cols))),
            None => self.base.tensor(spec),
        }
    }

    fn describe(&self) -> String {
        format!("{}, pruned ({})", self.base.describe(), self.how)
    }
}

fn linear_mut<B: Backend>(b: &mut Block<B>, arch: Arch, role: LinearRole) -> Result<&mut Linear<B>> {
    let what = format!("pruning {role:?}");
    match (role, arch) {
        (LinearRole::Q, _) => b.attn_in.separate_mut(0, &what),
        (LinearRole::K, _) => b.attn_in.separate_mut(1, &what),
        (LinearRole::V, _) => b.attn_in.separate_mut(2, &what),
        (LinearRole::O, _) => Ok(&mut b.o),
        (LinearRole::Gate, Arch::Llama) => b.mlp_in.separate_mut(0, &what),
        (LinearRole::Gate, Arch::Opt) => Err(Error::InvalidArgument("this architecture has no gate projection".into())),
        (LinearRole::Up, Arch::Llama) => b.mlp_in.separate_mut(1, &what),
        (LinearRole::Up, Arch::Opt) => b.mlp_in.separate_mut(0, &what),
        (LinearRole::Down, _) => Ok(&mut b.down),
    }
}

/// The calibration batch on the backend: every window a sequence of its own.
struct Calibration<B: Backend> {
    io: StepIo<B>,
    scratch: Scratch<B>,
    cache: B::Cache,
    tokens: usize,
}

fn calibration<B: Backend>(backend: &B, c: &Config, windows: &[Vec<u32>]) -> Result<Calibration<B>> {
    if windows.is_empty() || windows.iter().any(Vec::is_empty) {
        return Err(Error::InvalidArgument("calibration needs at least one non-empty token window".into()));
    }
    let longest = windows.iter().map(Vec::len).max().unwrap_or(0);
    if longest > c.max_seq {
        return Err(Error::InvalidArgument(format!("calibration window of {longest} tokens exceeds the model's context of {}", c.max_seq)));
    }
    let (mut ids, mut slots, mut positions) = (vec![], vec![], vec![]);
    for (slot, w) in windows.iter().enumerate() {
        if let Some(&t) = w.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(Error::InvalidArgument(format!("calibration token {t} is outside the vocabulary of {}", c.vocab)));
        }
        ids.extend_from_slice(w);
        slots.extend(std::iter::repeat_n(slot as u32, w.len()));
        positions.extend(0..w.len() as u32);
    }
    let arr = |v: &[u32]| -> Result<B::Ids> {
        let mut a = backend.ids(v.len())?;
        backend.write_ids(&mut a, v)?;
        Ok(a)
    };
    let io = StepIo { ids: arr(&ids)?, slots: arr(&slots)?, positions: arr(&positions)?, last: arr(&[0])? };
    let scratch = Scratch::new(backend, c, ids.len(), 1)?;
    let cache = backend.kv_cache(c.layers, windows.len(), c.kv_heads, longest, c.head_dim())?;
    Ok(Calibration { io, scratch, cache, tokens: ids.len() })
}

/// `samples` windows of `len` consecutive tokens spread evenly over `tokens` (fewer when the
/// text holds fewer without overlap); an error when it is shorter than one window.
pub fn calibration_windows(tokens: &[u32], samples: usize, len: usize) -> Result<Vec<Vec<u32>>> {
    if samples == 0 || len < 2 {
        return Err(Error::InvalidArgument(format!("calibration: {samples} windows of {len} tokens (need ≥ 1 window of ≥ 2 tokens)")));
    }
    if tokens.len() < len {
        return Err(Error::InvalidArgument(format!("calibration text of {} tokens is shorter than one window of {len}", tokens.len())));
    }
    let fit = (tokens.len() / len).min(samples);
    let step = if fit > 1 { (tokens.len() - len) / (fit - 1) } else { 0 };
    Ok((0..fit).map(|i| tokens[i * step..i * step + len].to_vec()).collect())
}

/// Runs block `layer` on the calibration batch, gathering its sites' statistics.
fn gather<B: Backend>(backend: &B, model: &Transformer<B>, cal: &mut Calibration<B>, layer: usize, hessian: bool) -> Result<HashMap<Site, SiteStats>> {
    let mut stats: HashMap<Site, SiteStats> = HashMap::new();
    let mut observe = |_: usize, site: Site, m: &B::Mat| -> Result<()> {
        let (_, cols) = backend.shape(m);
        let x = backend.read(m)?;
        stats.entry(site).or_insert_with(|| SiteStats::new(cols, hessian)).add(&x)
    };
    model.run_block(backend, layer, &mut cal.scratch, &mut cal.cache, &cal.io, Some(&mut observe))?;
    Ok(stats)
}

/// OWL's per-layer sparsities from a pass of the unpruned model.
fn owl_sparsities<B: Backend>(backend: &B, model: &Transformer<B>, src: &dyn TensorSource, cal: &mut Calibration<B>, cfg: &PruneConfig, owl: Owl, progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<f64>> {
    let c = src.config();
    let total = 2 * c.layers;
    model.start_rows(backend, &mut cal.scratch, &cal.io)?;
    let mut ratios = Vec::with_capacity(c.layers);
    for layer in 0..c.layers {
        let stats = gather(backend, model, cal, layer, false)?;
        let mut scores = vec![];
        for &role in LinearRole::all(c.arch) {
            let (rows, cols) = role.shape(c);
            let w = src.tensor(&TensorSpec { name: format!("{}.weight", role.hf_prefix(c.arch, layer)), rows, cols })?;
            let norms = stats[&Site::of(role)].norms();
            scores.extend(w.iter().enumerate().map(|(e, v)| f64::from(v.abs()) * norms[e % cols]));
        }
        let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
        ratios.push(scores.iter().filter(|&&s| s > owl.threshold * mean).count() as f64 / scores.len().max(1) as f64);
        progress(layer + 1, total);
    }
    Ok(owl_layer_sparsity(&ratios, cfg.sparsity, owl.lambda))
}

/// Layer sparsities from outlier ratios: rescaled to a spread of `2·lambda` (more outliers,
/// fewer zeros), centred on `sparsity`, clamped to [0, 0.99].
pub fn owl_layer_sparsity(ratios: &[f64], sparsity: f64, lambda: f64) -> Vec<f64> {
    let (lo, hi) = ratios.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &r| (a.min(r), b.max(r)));
    if ratios.is_empty() || !(hi > lo) {
        return vec![sparsity; ratios.len()];
    }
    let density: Vec<f64> = ratios.iter().map(|r| (r - lo) / (hi - lo) * 2.0 * lambda).collect();
    let mean = density.iter().sum::<f64>() / density.len() as f64;
    density.iter().map(|d| (sparsity - (d - mean)).clamp(0.0, 0.99)).collect()
}

/// Prunes every linear of `model` (loaded from `src` on `backend`, dense) per `cfg`, block by
/// block, calibrating on `windows` (token sequences; unused by magnitude pruning). The
/// model's linears are left pruned (dense storage) and the pruned weights returned as a
/// tensor source over `src`. `progress(done, total)` ticks per block.
pub fn prune_model<'a, B: Backend>(
    backend: &B,
    model: &mut Transformer<B>,
    src: &'a dyn TensorSource,
    windows: &[Vec<u32>],
    cfg: &PruneConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Pruned<'a>> {
    cfg.validate()?;
    let c = src.config().clone();
    if model.config != c || model.blocks.len() != c.layers || model.shard != super::transformer::Shard::WHOLE {
        return Err(Error::InvalidArgument("prune_model: the model was not loaded from this checkpoint".into()));
    }
    let mut cal = if cfg.method.needs_calibration() { Some(calibration(backend, &c, windows)?) } else { None };
    let uniform = cfg.pattern.sparsity(cfg.sparsity);
    let layer_sparsity = match (cfg.owl, cal.as_mut()) {
        (Some(owl), Some(cal)) => owl_sparsities(backend, model, src, cal, cfg, owl, progress)?,
        (Some(_), None) => return Err(Error::InvalidArgument("OWL needs a calibrated method (wanda or sparsegpt)".into())),
        (None, _) => vec![uniform; c.layers],
    };
    let (done0, total) = if cfg.owl.is_some() { (c.layers, 2 * c.layers) } else { (0, c.layers) };
    if let Some(cal) = cal.as_mut() {
        model.start_rows(backend, &mut cal.scratch, &cal.io)?;
    }
    let mut linears = HashMap::new();
    for layer in 0..c.layers {
        let stats = match cal.as_mut() {
            Some(cal) => {
                let before = cal.scratch.save_residual(backend)?;
                let stats = gather(backend, model, cal, layer, cfg.method == Method::SparseGpt)?;
                cal.scratch.restore_residual(backend, &before)?;
                Some(stats)
            }
            None => None,
        };
        for &role in LinearRole::all(c.arch) {
            let (rows, cols) = role.shape(&c);
            let name = format!("{}.weight", role.hf_prefix(c.arch, layer));
            let mut w = src.tensor(&TensorSpec { name: name.clone(), rows, cols })?;
            let site = stats.as_ref().map(|s| &s[&Site::of(role)]);
            prune_weight(&mut w, cols, site, cfg.method, layer_sparsity[layer], cfg.pattern, cfg.sparsegpt)?;
            linear_mut(&mut model.blocks[layer], c.arch, role)?.weight = backend.weight(rows, cols, &w, LinearFormat::Dense)?;
            linears.insert(name, w);
        }
        // The next block calibrates on what this pruned block computes.
        if let Some(cal) = cal.as_mut() {
            model.run_block(backend, layer, &mut cal.scratch, &mut cal.cache, &cal.io, None)?;
        }
        progress(done0 + layer + 1, total);
    }
    let pattern = match cfg.pattern {
        Pattern::Unstructured => "unstructured".to_string(),
        Pattern::NofM { n, m } => format!("{n}:{m}"),
    };
    let mut how = format!("{}, {:.0}% {pattern}", cfg.method.name(), uniform * 100.0);
    if cfg.owl.is_some() {
        how.push_str(", OWL layer sparsities");
    }
    if let Some(cal) = &cal {
        how.push_str(&format!(", {} calibration tokens in {} windows", cal.tokens, windows.len()));
    }
    Ok(Pruned { base: src, linears, layer_sparsity, how })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wanda against a direct f64 evaluation of its definition on a random layer: same mask.
    #[test]
    fn wanda_matches_its_definition() {
        let (rows, cols, n) = (6, 40, 30);
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        // Feature scales spread over two orders of magnitude, so Wanda differs from magnitude.
        let x: Vec<f32> = (0..n * cols).map(|e| (next() * 10f64.powf((e % cols) as f64 / 20.0 - 1.0)) as f32).collect();
        let w: Vec<f32> = (0..rows * cols).map(|_| next() as f32).collect();
        let mut stats = SiteStats::new(cols, true);
        stats.add(&x[..n / 2 * cols]).unwrap();
        stats.add(&x[n / 2 * cols..]).unwrap();
        assert_eq!(stats.rows, n);
        for pattern in [Pattern::Unstructured, Pattern::NofM { n: 2, m: 4 }] {
            let mut got = w.clone();
            prune_weight(&mut got, cols, Some(&stats), Method::Wanda, 0.6, pattern, SparseGptOptions::default()).unwrap();
            for r in 0..rows {
                let score: Vec<f64> = (0..cols)
                    .map(|j| {
                        let norm = (0..n).map(|t| f64::from(x[t * cols + j]).powi(2)).sum::<f64>().sqrt();
                        f64::from(w[r * cols + j]).abs() * norm
                    })
                    .collect();
                let want = mask::row_mask(&score, 0.6, pattern);
                for j in 0..cols {
                    assert_eq!(got[r * cols + j] == 0.0, want[j], "row {r} col {j} {pattern:?}");
                    if !want[j] {
                        assert_eq!(got[r * cols + j], w[r * cols + j]);
                    }
                }
            }
        }
        // The Hessian accumulated in chunks equals XᵀX.
        let h = stats.hessian.as_ref().unwrap();
        for i in 0..cols {
            for j in 0..cols {
                let want: f64 = (0..n).map(|t| f64::from(x[t * cols + i]) * f64::from(x[t * cols + j])).sum();
                assert!((h[i * cols + j] - want).abs() <= 1e-5 * (1.0 + want.abs()), "H[{i}][{j}]");
            }
        }
    }

    #[test]
    fn owl_spreads_around_the_target() {
        let s = owl_layer_sparsity(&[0.01, 0.02, 0.03], 0.7, 0.08);
        assert!((s.iter().sum::<f64>() / 3.0 - 0.7).abs() < 1e-12);
        assert!(s[0] > s[2], "more outliers, fewer zeros: {s:?}");
        assert!((s[0] - s[2] - 0.16).abs() < 1e-12);
        assert_eq!(owl_layer_sparsity(&[0.5, 0.5], 0.6, 0.08), vec![0.6, 0.6]);
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut w = vec![1.0f32; 8];
        assert!(prune_weight(&mut w, 4, None, Method::Wanda, 0.5, Pattern::Unstructured, SparseGptOptions::default()).is_err());
        assert!(prune_weight(&mut w, 3, None, Method::Magnitude, 0.5, Pattern::Unstructured, SparseGptOptions::default()).is_err());
        let cfg = PruneConfig { method: Method::Wanda, sparsity: 1.0, pattern: Pattern::Unstructured, owl: None, sparsegpt: SparseGptOptions::default() };
        assert!(cfg.validate().is_err());
        let cfg = PruneConfig { sparsity: 0.5, pattern: Pattern::NofM { n: 2, m: 4 }, owl: Some(Owl::default()), ..cfg };
        assert!(cfg.validate().is_err());
        assert!(Method::parse("obs").is_err());
    }
}
