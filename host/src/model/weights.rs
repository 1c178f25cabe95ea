//! Where a model's tensors come from, what they are called, and how they become a
//! [`Transformer`](super::Transformer)'s weights on a backend.
//!
//! Every loader implements [`TensorSource`]: given the Hugging Face name of a tensor
//! (`model.layers.3.self_attn.q_proj.weight`), it returns its row-major f32 values with the
//! shape checked. GGUF files rename (and permute) at that boundary, so one model definition
//! serves every format; [`tensor_names`] lists what a config needs, which is also what the
//! safetensors export writes.

use super::config::{Arch, Config, OPT_POSITION_OFFSET};
use crate::error::{Error, Result};

/// One tensor a model needs: its Hugging Face name and row-major shape (vectors are 1 × n).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
}

/// The role of a linear layer inside a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinearRole {
    Q,
    K,
    V,
    O,
    /// LLaMA's gate projection (absent in OPT).
    Gate,
    /// LLaMA's up projection; OPT's fc1.
    Up,
    /// LLaMA's down projection; OPT's fc2.
    Down,
}

impl LinearRole {
    /// The roles a block of `arch` has, in forward order.
    pub fn all(arch: Arch) -> &'static [LinearRole] {
        match arch {
            Arch::Llama => &[LinearRole::Q, LinearRole::K, LinearRole::V, LinearRole::O, LinearRole::Gate, LinearRole::Up, LinearRole::Down],
            Arch::Opt => &[LinearRole::Q, LinearRole::K, LinearRole::V, LinearRole::O, LinearRole::Up, LinearRole::Down],
        }
    }

    /// Short name (`q`, `gate`, ...).
    pub fn short(self) -> &'static str {
        match self {
            LinearRole::Q => "q",
            LinearRole::K => "k",
            LinearRole::V => "v",
            LinearRole::O => "o",
            LinearRole::Gate => "gate",
            LinearRole::Up => "up",
            LinearRole::Down => "down",
        }
    }

    /// Hugging Face name prefix of this linear in block `layer` (append `.weight`/`.bias`).
    pub fn hf_prefix(self, arch: Arch, layer: usize) -> String {
        let p = match arch {
            Arch::Llama => "model.layers",
            Arch::Opt => "model.decoder.layers",
        };
        let leaf = match (arch, self) {
            (_, LinearRole::Q) => "self_attn.q_proj",
            (_, LinearRole::K) => "self_attn.k_proj",
            (_, LinearRole::V) => "self_attn.v_proj",
            (Arch::Llama, LinearRole::O) => "self_attn.o_proj",
            (Arch::Opt, LinearRole::O) => "self_attn.out_proj",
            (_, LinearRole::Gate) => "mlp.gate_proj",
            (Arch::Llama, LinearRole::Up) => "mlp.up_proj",
            (Arch::Llama, LinearRole::Down) => "mlp.down_proj",
            (Arch::Opt, LinearRole::Up) => "fc1",
            (Arch::Opt, LinearRole::Down) => "fc2",
        };
        format!("{p}.{layer}.{leaf}")
    }

    /// (out_features, in_features).
    pub fn shape(self, c: &Config) -> (usize, usize) {
        let (d, kv, f) = (c.hidden, c.kv_dim(), c.ffn);
        match self {
            LinearRole::Q | LinearRole::O => (d, d),
            LinearRole::K | LinearRole::V => (kv, d),
            LinearRole::Gate | LinearRole::Up => (f, d),
            LinearRole::Down => (d, f),
        }
    }
}

/// Names of the non-linear tensors, by architecture.
pub(crate) struct NormNames {
    pub attn: String,
    pub mlp: String,
}

pub(crate) fn norm_names(arch: Arch, layer: usize) -> NormNames {
    match arch {
        Arch::Llama => NormNames {
            attn: format!("model.layers.{layer}.input_layernorm"),
            mlp: format!("model.layers.{layer}.post_attention_layernorm"),
        },
        Arch::Opt => NormNames {
            attn: format!("model.decoder.layers.{layer}.self_attn_layer_norm"),
            mlp: format!("model.decoder.layers.{layer}.final_layer_norm"),
        },
    }
}

/// Hugging Face names of the embedding, the final norm, the LM head and OPT's positions.
pub(crate) fn embed_name(arch: Arch) -> &'static str {
    match arch {
        Arch::Llama => "model.embed_tokens.weight",
        Arch::Opt => "model.decoder.embed_tokens.weight",
    }
}
pub(crate) fn final_norm_name(arch: Arch) -> &'static str {
    match arch {
        Arch::Llama => "model.norm",
        Arch::Opt => "model.decoder.final_layer_norm",
    }
}
pub(crate) const LM_HEAD: &str = "lm_head.weight";
pub(crate) const OPT_POSITIONS: &str = "model.decoder.embed_positions.weight";

/// Every tensor a model of `config` needs, in a fixed order.
pub fn tensor_names(c: &Config) -> Vec<TensorSpec> {
    let spec = |name: String, rows, cols| TensorSpec { name, rows, cols };
    let d = c.hidden;
    let mut out = vec![spec(embed_name(c.arch).into(), c.vocab, d)];
    if c.arch == Arch::Opt {
        out.push(spec(OPT_POSITIONS.into(), c.max_seq + OPT_POSITION_OFFSET, d));
    }
    let bias = c.arch == Arch::Opt;
    let norm = |out: &mut Vec<TensorSpec>, prefix: &str| {
        out.push(spec(format!("{prefix}.weight"), 1, d));
        if bias {
            out.push(spec(format!("{prefix}.bias"), 1, d));
        }
    };
    for layer in 0..c.layers {
        let names = norm_names(c.arch, layer);
        norm(&mut out, &names.attn);
        for &role in LinearRole::all(c.arch) {
            // The MLP norm comes before the MLP's first linear (LLaMA: gate, OPT: fc1).
            if role == LinearRole::Gate || (c.arch == Arch::Opt && role == LinearRole::Up) {
                norm(&mut out, &names.mlp);
            }
            let (rows, cols) = role.shape(c);
            let prefix = role.hf_prefix(c.arch, layer);
            out.push(spec(format!("{prefix}.weight"), rows, cols));
            if bias {
                out.push(spec(format!("{prefix}.bias"), 1, rows));
            }
        }
    }
    norm(&mut out, final_norm_name(c.arch));
    if !c.tie_embeddings {
        out.push(spec(LM_HEAD.into(), c.vocab, d));
    }
    out
}

/// A checkpoint, read tensor by tensor.
pub trait TensorSource {
    /// The model's hyperparameters.
    fn config(&self) -> &Config;
    /// The tensor called `spec.name` (Hugging Face naming), `spec.rows × spec.cols` f32 values
    /// row-major; an error naming the tensor when it is missing or shaped otherwise.
    fn tensor(&self, spec: &TensorSpec) -> Result<Vec<f32>>;
    /// The tensor already packed sparse (a sparse checkpoint's linear weights), so it loads
    /// without densifying; `None` when the source stores it dense.
    fn packed(&self, _spec: &TensorSpec) -> Result<Option<crate::sparse::SparseWeight<half::f16>>> {
        Ok(None)
    }
    /// Whether every block's tensors are the same (synthetic weights): the loader then builds
    /// the first block and copies it on the device for the others.
    fn blocks_identical(&self) -> bool {
        false
    }
    /// Words for the user: where the weights come from (e.g. "synthetic random weights").
    fn describe(&self) -> String;
}

/// Zeroes the `sparsity` share of smallest-magnitude values of `w` (ties broken by position,
/// so exactly `round(sparsity · len)` values become zero). Returns the resulting sparsity.
pub fn prune_magnitude(w: &mut [f32], sparsity: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&sparsity) {
        return Err(Error::InvalidArgument(format!("sparsity = {sparsity}: must be in 0..=1")));
    }
    let len = w.len();
    let drop = ((len as f64) * sparsity).round() as usize;
    if drop == 0 || len == 0 {
        return Ok(0.0);
    }
    let mut order: Vec<u32> = (0..len as u32).collect();
    let key = |i: &u32| (w[*i as usize].abs(), *i);
    order.select_nth_unstable_by(drop - 1, |a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1))
    });
    for &i in &order[..drop] {
        w[i as usize] = 0.0;
    }
    Ok(drop as f64 / len as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_parameter() {
        for preset in ["tiny", "tiny-opt", "smollm2-135m", "llama-2-7b", "opt-30b"] {
            let c = Config::preset(preset).unwrap();
            let total: usize = tensor_names(&c).iter().map(|t| t.rows * t.cols).sum();
            assert_eq!(Some(total), c.parameter_count(), "{preset}");
        }
        let c = Config::preset("tiny").unwrap();
        let names = tensor_names(&c);
        assert_eq!(names[1].name, "model.layers.0.input_layernorm.weight");
        assert!(names.iter().any(|t| t.name == "model.layers.1.mlp.down_proj.weight" && (t.rows, t.cols) == (128, 352)));
    }

    #[test]
    fn magnitude_pruning_drops_the_smallest() {
        let mut w = vec![0.5, -3.0, 0.1, 2.0, -0.2, 1.0];
        assert_eq!(prune_magnitude(&mut w, 0.5).unwrap(), 0.5);
        assert_eq!(w, vec![0.0, -3.0, 0.0, 2.0, 0.0, 1.0]);
        let mut same = vec![1.0f32; 10];
        prune_magnitude(&mut same, 0.3).unwrap();
        assert_eq!(same.iter().filter(|v| **v == 0.0).count(), 3);
        assert!(prune_magnitude(&mut same, 1.5).is_err());
        assert!(prune_magnitude(&mut same, f64::NAN).is_err());
    }
}
