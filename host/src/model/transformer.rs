//! The decoder: immutable weights on a [`Backend`], and one forward pass over a batch of
//! token rows that reads and extends a key/value cache.
//!
//! # One forward pass
//!
//! Rows are tokens of any sequences: a prefill passes every prompt token of every sequence
//! (row `i` is token `ids[i]` of the sequence in cache slot `slots[i]`, at position
//! `positions[i]`), a decode step one row per sequence. Per block (LLaMA; OPT in brackets):
//!
//! ```text
//! h = norm(x)                        RMSNorm [LayerNorm with bias]; fused with the residual add
//! q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ      [+ biases]
//! q, k = rope(q), rope(k)            [none: learned positions were added to x]
//! cache[slot, pos] = k, v
//! a = attention(q, cache)            causal over 0..=pos of the row's slot, grouped-query
//! x += a·Woᵀ                         [+ bias]
//! h = norm(x)
//! x += (silu(h·Wgᵀ) ⊙ h·Wuᵀ)·Wdᵀ     [relu(h·W1ᵀ + b1)·W2ᵀ + b2]
//! ```
//!
//! then the final norm, and logits (the LM head) only for the rows asked for.

use super::backend::{Backend, LinearFormat};
use super::config::{Arch, Config, OPT_POSITION_OFFSET};
use super::weights::{embed_name, final_norm_name, norm_names, LinearRole, TensorSource, TensorSpec, LM_HEAD, OPT_POSITIONS};
use crate::error::{Error, Result};
use crate::ops::SamplingParams;
use crate::sparse::SparseFormat;

/// A norm's parameters (the bias only for LayerNorm).
pub struct Norm<B: Backend> {
    pub weight: B::Mat,
    pub bias: Option<B::Mat>,
}

/// A linear layer: its weight and, for OPT, its bias (1 × out_features).
pub struct Linear<B: Backend> {
    pub weight: B::Weight,
    pub bias: Option<B::Mat>,
}

/// Linear layers that read the same input: each with its own weight, or one weight that
/// stacks their rows (one launch, a longer GEMV; the outputs are adjacent column blocks of
/// one matrix, see [`Backend::column_blocks`]).
pub enum Projections<B: Backend> {
    /// One linear per projection, in order.
    Separate(Vec<Linear<B>>),
    /// The projections' rows stacked in order, without biases.
    Stacked(Linear<B>),
}

impl<B: Backend> Projections<B> {
    /// Every linear layer.
    pub fn linears(&self) -> &[Linear<B>] {
        match self {
            Projections::Separate(v) => v,
            Projections::Stacked(l) => std::slice::from_ref(l),
        }
    }

    /// Projection `i` of separate ones (an error naming the block's projections when they are
    /// stacked: a stacked weight is not one layer's).
    pub fn separate_mut(&mut self, i: usize, what: &str) -> Result<&mut Linear<B>> {
        match self {
            Projections::Separate(v) => {
                let n = v.len();
                v.get_mut(i).ok_or_else(|| Error::InvalidArgument(format!("{what}: projection {i} of {n}")))
            }
            Projections::Stacked(_) => Err(Error::InvalidArgument(format!(
                "{what}: the projections are stacked into one weight; load the model with `WeightPlan::stack` off to change one"
            ))),
        }
    }
}

/// One transformer block.
pub struct Block<B: Backend> {
    pub attn_norm: Norm<B>,
    /// q, k, v.
    pub attn_in: Projections<B>,
    pub o: Linear<B>,
    pub mlp_norm: Norm<B>,
    /// gate, up (LLaMA); fc1 (OPT).
    pub mlp_in: Projections<B>,
    pub down: Linear<B>,
}

impl<B: Backend> Block<B> {
    /// Every linear layer of the block.
    pub fn linears(&self) -> impl Iterator<Item = &Linear<B>> {
        self.attn_in.linears().iter().chain([&self.o]).chain(self.mlp_in.linears()).chain([&self.down])
    }
}

/// How each linear layer is stored when a model is loaded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightPlan {
    /// Magnitude-prune every linear weight to this sparsity at load (0 keeps them; weights
    /// already pruned, e.g. synthetic ones, are left alone when it is 0).
    pub prune: f64,
    /// Storage of the linear weights.
    pub format: FormatChoice,
    /// Stack q|k|v and gate|up into one weight each where the backend allows it (LLaMA
    /// family, one rank, widths multiples of 8 on the GPU): 4 linear launches per block
    /// instead of 7. Pruning needs them separate.
    pub stack: bool,
}

/// Storage choice of the linear weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatChoice {
    /// Every linear dense.
    Dense,
    /// Every linear sparse in the Tiled-CSL format.
    Sparse,
    /// Per linear, the storage predicted fastest for its density
    /// ([`crate::sparse::fastest_for_density`]): dense above 50% density, bitmap from 25%,
    /// Tiled-CSL below.
    Auto,
    /// Every linear sparse in the bitmap format (fewest bytes below ~92% sparsity).
    Bitmap,
}

impl FormatChoice {
    /// The storage of a linear whose weights have `density` nonzeros.
    pub fn for_density(self, density: f64) -> LinearFormat {
        match self {
            FormatChoice::Dense => LinearFormat::Dense,
            FormatChoice::Sparse => LinearFormat::Sparse,
            FormatChoice::Auto => match crate::sparse::fastest_for_density(density) {
                None => LinearFormat::Dense,
                Some(SparseFormat::TiledCsl) => LinearFormat::Sparse,
                Some(SparseFormat::Bitmap) => LinearFormat::Bitmap,
            },
            FormatChoice::Bitmap => LinearFormat::Bitmap,
        }
    }
}

/// One rank's part of a tensor-parallel model (Megatron-style): attention heads and
/// feed-forward columns split evenly over `world` ranks. q, k, v and gate, up (OPT: fc1) are
/// split by output rows (column-parallel), o and down (fc2) by input columns (row-parallel,
/// their outputs summed over ranks by [`Backend::all_reduce`]); embeddings, norms and the
/// LM head are whole on every rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// The whole model on one device.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// Checks that `c` splits evenly into `world` ranks and `rank` is one of them.
    pub fn check(self, c: &Config) -> Result<()> {
        if self.world == 0 || self.rank >= self.world {
            return Err(Error::InvalidArgument(format!("shard rank {} of world {}", self.rank, self.world)));
        }
        for (what, n) in [("heads", c.heads), ("kv_heads", c.kv_heads), ("ffn", c.ffn)] {
            if !n.is_multiple_of(self.world) {
                return Err(Error::InvalidArgument(format!("{what} = {n} of {} does not split over {} ranks", c.name, self.world)));
            }
        }
        Ok(())
    }

    /// The dimensions one rank holds.
    pub fn dims(self, c: &Config) -> LocalDims {
        let hd = c.head_dim();
        let (heads, kv_heads) = (c.heads / self.world, c.kv_heads / self.world);
        LocalDims { heads, kv_heads, q: heads * hd, kv: kv_heads * hd, ffn: c.ffn / self.world }
    }

    /// The rows (column-parallel) or columns (row-parallel) of `role`'s full weight this rank
    /// holds, and whether they are columns.
    fn slice(self, c: &Config, role: LinearRole) -> (std::ops::Range<usize>, bool) {
        let d = self.dims(c);
        let part = |n: usize| n * self.rank..n * (self.rank + 1);
        match role {
            LinearRole::Q => (part(d.q), false),
            LinearRole::K | LinearRole::V => (part(d.kv), false),
            LinearRole::Gate | LinearRole::Up => (part(d.ffn), false),
            LinearRole::O => (part(d.q), true),
            LinearRole::Down => (part(d.ffn), true),
        }
    }
}

/// Widths one rank computes (the whole model's when unsharded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalDims {
    pub heads: usize,
    pub kv_heads: usize,
    /// Query (and attention output) width.
    pub q: usize,
    /// Key and value width.
    pub kv: usize,
    pub ffn: usize,
}

/// A loaded model.
pub struct Transformer<B: Backend> {
    pub config: Config,
    /// The part of the model this instance holds ([`Shard::WHOLE`] unless tensor-parallel).
    pub shard: Shard,
    pub embed: B::Mat,
    /// OPT: learned positions, `(max_seq + 2) × hidden`.
    pub positions: Option<B::Mat>,
    pub blocks: Vec<Block<B>>,
    pub final_norm: Norm<B>,
    /// `None` when the head is tied to the embedding.
    pub lm_head: Option<B::Weight>,
    /// Where the weights came from (for the user).
    pub source: String,
}

/// Progress of a load: `(done, total)` blocks.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

impl<B: Backend> Transformer<B> {
    /// Loads every tensor of `src` onto `backend`, pruning and choosing formats per `plan`.
    pub fn load(backend: &B, src: &dyn TensorSource, plan: WeightPlan, progress: Progress<'_>) -> Result<Self> {
        Self::load_shard(backend, src, plan, Shard::WHOLE, progress)
    }

    /// [`load`](Self::load) of one rank's part of a tensor-parallel model: each linear weight
    /// is sliced from the whole (pruned first, so every rank's part of a pruned layer is
    /// pruned as the whole was) and packed on its own.
    pub fn load_shard(backend: &B, src: &dyn TensorSource, plan: WeightPlan, shard: Shard, progress: Progress<'_>) -> Result<Self> {
        let c = src.config().clone();
        c.validate()?;
        shard.check(&c)?;
        if shard.world != backend.ranks() {
            return Err(Error::InvalidArgument(format!(
                "a shard of {} ranks on a backend whose all-reduce spans {}",
                shard.world,
                backend.ranks()
            )));
        }
        let get = |name: String, rows: usize, cols: usize| src.tensor(&TensorSpec { name, rows, cols });
        let mat = |name: String, rows: usize, cols: usize| -> Result<B::Mat> { backend.matrix(rows, cols, &get(name, rows, cols)?) };
        let d = c.hidden;
        let bias = c.arch == Arch::Opt;
        let norm = |prefix: &str| -> Result<Norm<B>> {
            Ok(Norm {
                weight: mat(format!("{prefix}.weight"), 1, d)?,
                bias: if bias { Some(mat(format!("{prefix}.bias"), 1, d)?) } else { None },
            })
        };
        // A weight's values, magnitude-pruned per the plan.
        let values = |spec: &TensorSpec| -> Result<Vec<f32>> {
            let mut w = src.tensor(spec)?;
            if plan.prune > 0.0 {
                super::weights::prune_magnitude(&mut w, plan.prune)?;
            }
            Ok(w)
        };
        let density = |w: &[f32]| w.iter().filter(|v| **v != 0.0).count() as f64 / w.len().max(1) as f64;
        let linear = |role: LinearRole, layer: usize| -> Result<Linear<B>> {
            let (rows, cols) = role.shape(&c);
            let prefix = role.hf_prefix(c.arch, layer);
            let spec = TensorSpec { name: format!("{prefix}.weight"), rows, cols };
            let (part, by_columns) = shard.slice(&c, role);
            // Column-parallel biases are split like the rows; row-parallel ones are added
            // whole, once, after the sum over ranks.
            let bias = match (bias, shard.world > 1 && !by_columns) {
                (false, _) => None,
                (true, false) => Some(mat(format!("{prefix}.bias"), 1, rows)?),
                (true, true) => {
                    let b = get(format!("{prefix}.bias"), 1, rows)?;
                    Some(backend.matrix(1, part.len(), &b[part.clone()])?)
                }
            };
            if shard.world > 1 {
                let mut w = src.tensor(&spec)?;
                if plan.prune > 0.0 {
                    super::weights::prune_magnitude(&mut w, plan.prune)?;
                }
                let (w, r, k) = slice_weight(&w, rows, cols, part, by_columns);
                let density = w.iter().filter(|v| **v != 0.0).count() as f64 / w.len().max(1) as f64;
                return Ok(Linear { weight: backend.weight(r, k, &w, plan.format.for_density(density))?, bias });
            }
            // A packed weight (sparse checkpoint) loads as it is, unless it is to be pruned.
            if plan.prune == 0.0 {
                if let Some(p) = src.packed(&spec)? {
                    let density = p.nnz() as f64 / (rows * cols) as f64;
                    return Ok(Linear { weight: backend.packed_weight(&p, plan.format.for_density(density))?, bias });
                }
            }
            let w = values(&spec)?;
            Ok(Linear { weight: backend.weight(rows, cols, &w, plan.format.for_density(density(&w)))?, bias })
        };
        // One weight of the roles' rows stacked (LLaMA: no biases), packed once.
        let stacked = |roles: &[LinearRole], layer: usize| -> Result<Projections<B>> {
            let (mut w, mut rows, cols) = (Vec::new(), 0, roles[0].shape(&c).1);
            for &role in roles {
                let (r, k) = role.shape(&c);
                debug_assert_eq!(k, cols);
                let spec = TensorSpec { name: format!("{}.weight", role.hf_prefix(c.arch, layer)), rows: r, cols: k };
                let part = match src.packed(&spec)? {
                    Some(p) if plan.prune == 0.0 => p.to_dense().iter().map(|v| v.to_f32()).collect(),
                    _ => values(&spec)?,
                };
                w.extend_from_slice(&part);
                rows += r;
            }
            let weight = backend.weight(rows, cols, &w, plan.format.for_density(density(&w)))?;
            Ok(Projections::Stacked(Linear { weight, bias: None }))
        };
        let local = shard.dims(&c);
        let stack = plan.stack
            && shard.world == 1
            && c.arch == Arch::Llama
            && backend.aliases()
            && [local.q, local.kv, local.ffn].iter().all(|w| w.is_multiple_of(8));
        let block = |layer: usize| -> Result<Block<B>> {
            let names = norm_names(c.arch, layer);
            let separate = |roles: &[LinearRole]| -> Result<Projections<B>> {
                Ok(Projections::Separate(roles.iter().map(|&r| linear(r, layer)).collect::<Result<_>>()?))
            };
            let (attn_roles, mlp_roles): (&[LinearRole], &[LinearRole]) = match c.arch {
                Arch::Llama => (&[LinearRole::Q, LinearRole::K, LinearRole::V], &[LinearRole::Gate, LinearRole::Up]),
                Arch::Opt => (&[LinearRole::Q, LinearRole::K, LinearRole::V], &[LinearRole::Up]),
            };
            let projections = |roles| if stack { stacked(roles, layer) } else { separate(roles) };
            Ok(Block {
                attn_norm: norm(&names.attn)?,
                attn_in: projections(attn_roles)?,
                o: linear(LinearRole::O, layer)?,
                mlp_norm: norm(&names.mlp)?,
                mlp_in: projections(mlp_roles)?,
                down: linear(LinearRole::Down, layer)?,
            })
        };
        let embed = mat(embed_name(c.arch).into(), c.vocab, d)?;
        let positions = if c.arch == Arch::Opt { Some(mat(OPT_POSITIONS.into(), c.max_seq + OPT_POSITION_OFFSET, d)?) } else { None };
        let mut blocks = Vec::with_capacity(c.layers);
        for layer in 0..c.layers {
            let b = match (src.blocks_identical(), blocks.first()) {
                (true, Some(first)) => duplicate_block(backend, first)?,
                _ => block(layer)?,
            };
            blocks.push(b);
            progress(layer + 1, c.layers);
        }
        let final_norm = norm(final_norm_name(c.arch))?;
        let lm_head = if c.tie_embeddings {
            None
        } else {
            Some(backend.weight(c.vocab, d, &get(LM_HEAD.into(), c.vocab, d)?, LinearFormat::Dense)?)
        };
        let mut source = src.describe();
        if shard.world > 1 {
            source.push_str(&format!(", rank {} of {}", shard.rank, shard.world));
        }
        Ok(Transformer { config: c, shard, embed, positions, blocks, final_norm, lm_head, source })
    }

    /// The widths this instance computes.
    pub fn dims(&self) -> LocalDims {
        self.shard.dims(&self.config)
    }

    /// Activation buffers for this model ([`Scratch::new`] with its shard's widths).
    pub fn scratch(&self, backend: &B, rows: usize, outputs: usize) -> Result<Scratch<B>> {
        Scratch::sharded(backend, &self.config, self.shard, rows, outputs)
    }

    /// A key/value cache for `slots` sequences of up to `max_seq` positions.
    pub fn kv_cache(&self, backend: &B, slots: usize, max_seq: usize) -> Result<B::Cache> {
        let c = &self.config;
        backend.kv_cache(c.layers, slots, self.dims().kv_heads, max_seq, c.head_dim())
    }

    /// Bytes of the linear weights as stored, and how many of the linears are sparse.
    pub fn linear_bytes(&self, backend: &B) -> (usize, usize, usize) {
        let mut bytes = 0;
        let (mut sparse, mut total) = (0, 0);
        for b in &self.blocks {
            for l in b.linears() {
                bytes += backend.weight_bytes(&l.weight);
                sparse += usize::from(backend.is_sparse(&l.weight));
                total += 1;
            }
        }
        (bytes, sparse, total)
    }

    /// Runs the batch of rows in `io` through the model: writes every row's keys and values
    /// into `cache` and the logits of the rows `io.last` names into `scratch.logits`.
    pub fn forward(&self, backend: &B, s: &mut Scratch<B>, cache: &mut B::Cache, io: &StepIo<B>) -> Result<()> {
        self.forward_phases(backend, s, cache, io, Phases::ALL)
    }

    /// [`forward`](Self::forward) running only the operations of `phases` (the others are
    /// skipped, leaving their outputs stale): the time split of a step is measured by timing
    /// each phase alone. Only `Phases::ALL` computes the model.
    pub fn forward_phases(&self, backend: &B, s: &mut Scratch<B>, cache: &mut B::Cache, io: &StepIo<B>, phases: Phases) -> Result<()> {
        let b = Gate { backend, phases };
        self.forward_gated(&b, s, cache, io)
    }

    fn forward_gated(&self, g: &Gate<'_, B>, s: &mut Scratch<B>, cache: &mut B::Cache, io: &StepIo<B>) -> Result<()> {
        self.embed_gated(g, s, io)?;
        for layer in 0..self.blocks.len() {
            self.block_gated(g, layer, s, cache, io, None)?;
        }
        self.head_gated(g, s, io)
    }

    /// The first part of a forward pass run block by block (calibration, `prune.rs`):
    /// `scratch`'s residual stream becomes the embedded rows of `io`.
    pub fn start_rows(&self, backend: &B, s: &mut Scratch<B>, io: &StepIo<B>) -> Result<()> {
        self.embed_gated(&Gate { backend, phases: Phases::ALL }, s, io)
    }

    /// Block `layer` of a forward pass begun with [`start_rows`](Self::start_rows) (blocks in
    /// order): reads and advances `scratch`'s residual stream, writes the block's keys and
    /// values into `cache`, and shows `observe` every linear layer's input as the block
    /// computes it (the activations each weight multiplies, by [`Site`]).
    pub fn run_block(&self, backend: &B, layer: usize, s: &mut Scratch<B>, cache: &mut B::Cache, io: &StepIo<B>, observe: Option<Observer<'_, B>>) -> Result<()> {
        self.block_gated(&Gate { backend, phases: Phases::ALL }, layer, s, cache, io, observe)
    }

    fn embed_gated(&self, backend: &Gate<'_, B>, s: &mut Scratch<B>, io: &StepIo<B>) -> Result<()> {
        backend.embed(&self.embed, &io.ids, 0, false, &mut s.x)?;
        if let Some(pos) = &self.positions {
            backend.embed(pos, &io.positions, OPT_POSITION_OFFSET as u32, true, &mut s.x)?;
        }
        // `s.delta` holds the last sublayer's output, added to the residual by the next norm.
        s.pending = false;
        Ok(())
    }

    fn block_gated(
        &self,
        backend: &Gate<'_, B>,
        layer: usize,
        s: &mut Scratch<B>,
        cache: &mut B::Cache,
        io: &StepIo<B>,
        mut observe: Option<Observer<'_, B>>,
    ) -> Result<()> {
        let c = &self.config;
        let b = self.blocks.get(layer).ok_or_else(|| Error::InvalidArgument(format!("block {layer} of a model of {} blocks", self.blocks.len())))?;
        let hd = c.head_dim();
        let scale = 1.0 / (hd as f32).sqrt();
        let mut look = |site: Site, m: &B::Mat| -> Result<()> {
            match observe.as_mut() {
                Some(f) => f(layer, site, m),
                None => Ok(()),
            }
        };
        self.norm(backend, &b.attn_norm, &mut s.x, &s.delta, s.pending, &mut s.h)?;
        look(Site::Attn, &s.h)?;
        match &b.attn_in {
            Projections::Separate(l) => match &l[..] {
                [q, k, v] => {
                    self.linear(backend, &s.h, q, &mut s.q)?;
                    self.linear(backend, &s.h, k, &mut s.k)?;
                    self.linear(backend, &s.h, v, &mut s.v)?;
                }
                _ => return Err(Error::InvalidArgument(format!("block {layer}: {} attention input projections, expected q, k, v", l.len()))),
            },
            Projections::Stacked(l) => self.linear(backend, &s.h, l, stacked_out(&mut s.qkv, layer, "q|k|v")?)?,
        }
        if c.arch == Arch::Llama {
            match &mut s.qk {
                Some(qk) => backend.rope(qk, &io.positions, hd, c.rope_theta, c.rope_style)?,
                None => {
                    backend.rope(&mut s.q, &io.positions, hd, c.rope_theta, c.rope_style)?;
                    backend.rope(&mut s.k, &io.positions, hd, c.rope_theta, c.rope_style)?;
                }
            }
        }
        backend.kv_write(cache, layer, &s.k, &s.v, &io.slots, &io.positions)?;
        backend.attention(&s.q, cache, layer, &io.slots, &io.positions, self.dims().heads, scale, &mut s.attn)?;
        look(Site::AttnOut, &s.attn)?;
        self.row_parallel(backend, &s.attn, &b.o, &mut s.delta)?;
        self.norm(backend, &b.mlp_norm, &mut s.x, &s.delta, true, &mut s.h)?;
        look(Site::Mlp, &s.h)?;
        match (&b.mlp_in, c.arch) {
            (Projections::Separate(l), Arch::Llama) => match &l[..] {
                [gate, up] => {
                    self.linear(backend, &s.h, gate, &mut s.gate)?;
                    self.linear(backend, &s.h, up, &mut s.up)?;
                    backend.silu_mul(&s.gate, &s.up, &mut s.act)?;
                }
                _ => return Err(Error::InvalidArgument(format!("block {layer}: {} MLP input projections, expected gate, up", l.len()))),
            },
            (Projections::Stacked(l), Arch::Llama) => {
                self.linear(backend, &s.h, l, stacked_out(&mut s.gate_up, layer, "gate|up")?)?;
                backend.silu_mul(&s.gate, &s.up, &mut s.act)?;
            }
            (Projections::Separate(l), Arch::Opt) => match &l[..] {
                [fc1] => {
                    self.linear(backend, &s.h, fc1, &mut s.act)?;
                    backend.relu(&mut s.act)?;
                }
                _ => return Err(Error::InvalidArgument(format!("block {layer}: {} MLP input projections, expected fc1", l.len()))),
            },
            (Projections::Stacked(_), Arch::Opt) => {
                return Err(Error::InvalidArgument(format!("block {layer}: OPT's fc1 is not stacked")));
            }
        }
        look(Site::MlpAct, &s.act)?;
        self.row_parallel(backend, &s.act, &b.down, &mut s.delta)?;
        s.pending = true;
        Ok(())
    }

    fn head_gated(&self, backend: &Gate<'_, B>, s: &mut Scratch<B>, io: &StepIo<B>) -> Result<()> {
        self.norm(backend, &self.final_norm, &mut s.x, &s.delta, s.pending, &mut s.h)?;
        backend.gather_rows(&s.h, &io.last, &mut s.last)?;
        match &self.lm_head {
            Some(w) => backend.linear(&s.last, w, &mut s.logits),
            None => backend.linear_mat(&s.last, &self.embed, &mut s.logits),
        }
    }

    /// `out = norm(x)`, after `x += delta` when `add`.
    fn norm(&self, backend: &Gate<'_, B>, n: &Norm<B>, x: &mut B::Mat, delta: &B::Mat, add: bool, out: &mut B::Mat) -> Result<()> {
        let eps = self.config.norm_eps;
        match (&n.bias, add) {
            (None, false) => backend.rms_norm(x, &n.weight, eps, out),
            (None, true) => backend.add_rms_norm(x, delta, &n.weight, eps, out),
            (Some(b), false) => backend.layer_norm(x, &n.weight, b, eps, out),
            (Some(b), true) => backend.add_layer_norm(x, delta, &n.weight, b, eps, out),
        }
    }

    /// A row-parallel linear: each rank's partial product summed over ranks, then the bias.
    fn row_parallel(&self, backend: &Gate<'_, B>, x: &B::Mat, l: &Linear<B>, out: &mut B::Mat) -> Result<()> {
        if self.shard.world == 1 {
            return self.linear(backend, x, l, out);
        }
        backend.linear(x, &l.weight, out)?;
        backend.all_reduce(out)?;
        match &l.bias {
            Some(b) => backend.add_bias(out, b),
            None => Ok(()),
        }
    }

    fn linear(&self, backend: &Gate<'_, B>, x: &B::Mat, l: &Linear<B>, out: &mut B::Mat) -> Result<()> {
        backend.linear(x, &l.weight, out)?;
        match &l.bias {
            Some(b) => backend.add_bias(out, b),
            None => Ok(()),
        }
    }
}

/// Where a block's linear layers read their input: the activations a weight multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    /// The attention norm's output: the input of q, k and v.
    Attn,
    /// The attention's output: the input of o.
    AttnOut,
    /// The MLP norm's output: the input of gate and up (OPT: fc1).
    Mlp,
    /// The activation: the input of down (OPT: fc2).
    MlpAct,
}

impl Site {
    /// Every site, in forward order.
    pub const ALL: [Site; 4] = [Site::Attn, Site::AttnOut, Site::Mlp, Site::MlpAct];

    /// The site whose activations `role` multiplies.
    pub fn of(role: LinearRole) -> Site {
        match role {
            LinearRole::Q | LinearRole::K | LinearRole::V => Site::Attn,
            LinearRole::O => Site::AttnOut,
            LinearRole::Gate | LinearRole::Up => Site::Mlp,
            LinearRole::Down => Site::MlpAct,
        }
    }
}

/// Sees each linear input of a block as it is computed: `(layer, site, activations)`.
pub type Observer<'a, B> = &'a mut dyn FnMut(usize, Site, &<B as Backend>::Mat) -> Result<()>;

/// Kinds of operations of a forward pass, for timing them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phases {
    /// The linear layers and the LM head (with their biases).
    pub linears: bool,
    /// KV-cache writes and attention.
    pub attention: bool,
    /// Everything else: embedding, norms, RoPE, activations, residual adds, row gathers.
    pub rest: bool,
}

impl Phases {
    pub const ALL: Phases = Phases { linears: true, attention: true, rest: true };
}

/// The backend with each operation run only when its phase is enabled.
struct Gate<'a, B: Backend> {
    backend: &'a B,
    phases: Phases,
}

macro_rules! gated {
    ($($phase:ident: fn $name:ident(&self $(, $arg:ident: $ty:ty)*);)*) => {
        impl<B: Backend> Gate<'_, B> {
            $(fn $name(&self $(, $arg: $ty)*) -> Result<()> {
                if self.phases.$phase { self.backend.$name($($arg),*) } else { Ok(()) }
            })*
        }
    };
}

gated! {
    linears: fn linear(&self, x: &B::Mat, w: &B::Weight, out: &mut B::Mat);
    linears: fn linear_mat(&self, x: &B::Mat, m: &B::Mat, out: &mut B::Mat);
    linears: fn add_bias(&self, x: &mut B::Mat, bias: &B::Mat);
    linears: fn all_reduce(&self, x: &mut B::Mat);
    rest: fn embed(&self, table: &B::Mat, ids: &B::Ids, offset: u32, accumulate: bool, out: &mut B::Mat);
    rest: fn rms_norm(&self, x: &B::Mat, weight: &B::Mat, eps: f32, out: &mut B::Mat);
    rest: fn add_rms_norm(&self, residual: &mut B::Mat, delta: &B::Mat, weight: &B::Mat, eps: f32, out: &mut B::Mat);
    rest: fn layer_norm(&self, x: &B::Mat, weight: &B::Mat, bias: &B::Mat, eps: f32, out: &mut B::Mat);
    rest: fn add_layer_norm(&self, residual: &mut B::Mat, delta: &B::Mat, weight: &B::Mat, bias: &B::Mat, eps: f32, out: &mut B::Mat);
    rest: fn silu_mul(&self, gate: &B::Mat, up: &B::Mat, out: &mut B::Mat);
    rest: fn relu(&self, x: &mut B::Mat);
    rest: fn rope(&self, x: &mut B::Mat, positions: &B::Ids, head_dim: usize, theta: f32, style: crate::model::config::RopeStyle);
    rest: fn gather_rows(&self, x: &B::Mat, rows: &B::Ids, out: &mut B::Mat);
    attention: fn kv_write(&self, cache: &mut B::Cache, layer: usize, k: &B::Mat, v: &B::Mat, slots: &B::Ids, positions: &B::Ids);
    attention: fn attention(&self, q: &B::Mat, cache: &B::Cache, layer: usize, slots: &B::Ids, positions: &B::Ids, heads: usize, scale: f32, out: &mut B::Mat);
}

/// A whole matrix (where the backend aliases) and its column blocks.
type Blocks<B> = (Option<<B as Backend>::Mat>, Vec<<B as Backend>::Mat>);

/// The whole matrix a stacked projection writes, or why the scratch has none.
fn stacked_out<'a, M>(whole: &'a mut Option<M>, layer: usize, what: &str) -> Result<&'a mut M> {
    whole.as_mut().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "block {layer}: {what} is stacked, but this scratch holds its outputs apart (a backend that cannot alias memory)"
        ))
    })
}

/// Rows `part` (or columns, when `by_columns`) of a row-major `rows × cols` weight: the
/// values and the slice's shape.
fn slice_weight(w: &[f32], rows: usize, cols: usize, part: std::ops::Range<usize>, by_columns: bool) -> (Vec<f32>, usize, usize) {
    if by_columns {
        let v = w.chunks_exact(cols).flat_map(|r| r[part.clone()].iter().copied()).collect();
        (v, rows, part.len())
    } else {
        (w[part.start * cols..part.end * cols].to_vec(), part.len(), cols)
    }
}

fn duplicate_block<B: Backend>(backend: &B, b: &Block<B>) -> Result<Block<B>> {
    let norm = |n: &Norm<B>| -> Result<Norm<B>> {
        Ok(Norm { weight: backend.duplicate(&n.weight)?, bias: n.bias.as_ref().map(|b| backend.duplicate(b)).transpose()? })
    };
    let linear = |l: &Linear<B>| -> Result<Linear<B>> {
        Ok(Linear {
            weight: backend.duplicate_weight(&l.weight)?,
            bias: l.bias.as_ref().map(|b| backend.duplicate(b)).transpose()?,
        })
    };
    let projections = |p: &Projections<B>| -> Result<Projections<B>> {
        Ok(match p {
            Projections::Separate(v) => Projections::Separate(v.iter().map(linear).collect::<Result<_>>()?),
            Projections::Stacked(l) => Projections::Stacked(linear(l)?),
        })
    };
    Ok(Block {
        attn_norm: norm(&b.attn_norm)?,
        attn_in: projections(&b.attn_in)?,
        o: linear(&b.o)?,
        mlp_norm: norm(&b.mlp_norm)?,
        mlp_in: projections(&b.mlp_in)?,
        down: linear(&b.down)?,
    })
}

/// The index arrays of one forward pass: per row its token, cache slot and position, and the
/// rows whose logits are wanted.
pub struct StepIo<B: Backend> {
    pub ids: B::Ids,
    pub slots: B::Ids,
    pub positions: B::Ids,
    pub last: B::Ids,
}

/// Activation buffers for forward passes of `rows` rows producing `outputs` rows of logits,
/// allocated once and reused every step.
pub struct Scratch<B: Backend> {
    pub rows: usize,
    /// Whether `delta` holds a sublayer output not yet added to the residual `x`.
    pending: bool,
    x: B::Mat,
    h: B::Mat,
    // `q`, `k`, `v` (`gate`, `up`) are column blocks of `qkv` (`gate_up`) where the backend
    // aliases memory ([`Backend::column_blocks`]): a stacked projection writes the whole,
    // the other operations each block. No operation takes a whole and one of its blocks.
    q: B::Mat,
    k: B::Mat,
    v: B::Mat,
    qkv: Option<B::Mat>,
    /// Columns `q | k` of `qkv`: one RoPE launch for both.
    qk: Option<B::Mat>,
    attn: B::Mat,
    delta: B::Mat,
    gate: B::Mat,
    up: B::Mat,
    gate_up: Option<B::Mat>,
    act: B::Mat,
    last: B::Mat,
    /// `outputs × vocab` logits of the last forward pass.
    pub logits: B::Mat,
}

impl<B: Backend> Scratch<B> {
    /// Buffers for `rows` token rows and `outputs` rows of logits.
    pub fn new(backend: &B, c: &Config, rows: usize, outputs: usize) -> Result<Self> {
        Self::sharded(backend, c, Shard::WHOLE, rows, outputs)
    }

    /// Buffers for one rank of a tensor-parallel model.
    pub fn sharded(backend: &B, c: &Config, shard: Shard, rows: usize, outputs: usize) -> Result<Self> {
        if rows == 0 || outputs == 0 || outputs > rows {
            return Err(Error::InvalidArgument(format!("scratch for {rows} rows and {outputs} outputs")));
        }
        shard.check(c)?;
        let d = shard.dims(c);
        let z = |cols: usize| backend.zeros(rows, cols);
        // The blocks of a whole, or separate matrices where they cannot share memory.
        let blocks = |widths: &[usize]| -> Result<Blocks<B>> {
            if backend.aliases() {
                let whole = z(widths.iter().sum())?;
                // SAFETY: the blocks live in this `Scratch` beside `whole`, are dropped with
                // it, and the forward pass never passes a whole and one of its blocks to one
                // operation (see the fields).
                if let Some(parts) = unsafe { backend.column_blocks(&whole, widths) }? {
                    return Ok((Some(whole), parts));
                }
            }
            Ok((None, widths.iter().map(|&w| z(w)).collect::<Result<_>>()?))
        };
        let count = |n: usize| move |v: Vec<B::Mat>| Error::Shape(format!("{} column blocks, expected {n}", v.len()));
        let (qkv, parts) = blocks(&[d.q, d.kv, d.kv])?;
        let [q, k, v] = <[B::Mat; 3]>::try_from(parts).map_err(count(3))?;
        let qk = match &qkv {
            // SAFETY: as for `blocks`; the view is used alone (RoPE), never with `q` or `k`.
            Some(whole) => unsafe { backend.column_blocks(whole, &[d.q + d.kv, d.kv]) }?.map(|mut v| v.swap_remove(0)),
            None => None,
        };
        let (gate_up, gate, up) = if c.arch == Arch::Llama {
            let (whole, parts) = blocks(&[d.ffn, d.ffn])?;
            let [gate, up] = <[B::Mat; 2]>::try_from(parts).map_err(count(2))?;
            (whole, gate, up)
        } else {
            (None, backend.zeros(1, 1)?, backend.zeros(1, 1)?)
        };
        Ok(Scratch {
            rows,
            pending: false,
            x: z(c.hidden)?,
            h: z(c.hidden)?,
            q,
            k,
            v,
            qkv,
            qk,
            attn: z(d.q)?,
            delta: z(c.hidden)?,
            gate,
            up,
            gate_up,
            act: z(d.ffn)?,
            last: backend.zeros(outputs, c.hidden)?,
            logits: backend.zeros(outputs, c.vocab)?,
        })
    }

    /// A copy of the residual stream (between blocks of a block-by-block pass).
    pub fn save_residual(&self, backend: &B) -> Result<Residual<B>> {
        Ok(Residual { x: backend.duplicate(&self.x)?, delta: backend.duplicate(&self.delta)?, pending: self.pending })
    }

    /// Puts back a residual stream saved from scratch of the same shape.
    pub fn restore_residual(&mut self, backend: &B, r: &Residual<B>) -> Result<()> {
        if backend.shape(&r.x) != backend.shape(&self.x) {
            return Err(Error::Shape(format!("restore_residual: {:?} into scratch of {:?}", backend.shape(&r.x), backend.shape(&self.x))));
        }
        self.x = backend.duplicate(&r.x)?;
        self.delta = backend.duplicate(&r.delta)?;
        self.pending = r.pending;
        Ok(())
    }

    /// Bytes of activations per row (for memory planning): 2 bytes per element.
    pub fn bytes_per_row(c: &Config) -> Option<usize> {
        let cols = c.hidden.checked_mul(5)?.checked_add(c.kv_dim().checked_mul(2)?)?.checked_add(c.ffn.checked_mul(3)?)?;
        cols.checked_mul(2)
    }
}

/// A saved residual stream ([`Scratch::save_residual`]).
pub struct Residual<B: Backend> {
    x: B::Mat,
    delta: B::Mat,
    pending: bool,
}

/// Picks the next token of each logits row (greedy when `params.temperature == 0`).
pub fn next_tokens<B: Backend>(backend: &B, s: &Scratch<B>, params: &SamplingParams, step: u64, out: &mut B::Ids) -> Result<()> {
    backend.next_tokens(&s.logits, params, step, out)
}
