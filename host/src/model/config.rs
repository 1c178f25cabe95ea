//! The runtime description of a decoder-only transformer: LLaMA-family and OPT.
//!
//! Every loader (GGUF metadata, a Hugging Face `config.json`, a synthetic preset) produces a
//! [`Config`], and [`Config::validate`] checks it once, with checked arithmetic, before
//! anything is sized from it.

use crate::error::{Error, Result};

/// The two decoder families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// LLaMA-2/3, Mistral, SmolLM2: RMSNorm, rotary positions, grouped-query attention,
    /// SwiGLU feed-forward, no biases.
    Llama,
    /// OPT (Flash-LLM's models): LayerNorm with bias, learned positions (offset by 2), ReLU
    /// feed-forward, biases on every linear.
    Opt,
}

/// How rotary embeddings pair the dimensions of a head (a config field: GGUF and Hugging Face
/// checkpoints differ).
pub use crate::ops::RopeStyle;

/// A model's hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Display name (a preset's or the checkpoint's).
    pub name: String,
    pub arch: Arch,
    pub vocab: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the feed-forward layer.
    pub ffn: usize,
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention: `heads` is a multiple of it).
    pub kv_heads: usize,
    /// Longest sequence (prompt + generated) the model supports.
    pub max_seq: usize,
    /// LLaMA: rotary base.
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    /// Epsilon of the RMSNorm / LayerNorm.
    pub norm_eps: f32,
    /// Whether the LM head is the token embedding (no separate `lm_head` weight).
    pub tie_embeddings: bool,
    /// Token ids that end a sequence.
    pub eos: Vec<u32>,
    /// Token id prepended to prompts, if any.
    pub bos: Option<u32>,
}

/// OPT's learned positions start at this row of the table (a quirk of its training code).
pub const OPT_POSITION_OFFSET: usize = 2;

impl Config {
    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Width of the key and value projections.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim()
    }

    /// Checks every field and the sizes derived from them; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidArgument(format!("model config {:?}: {what}", self.name)));
        for (field, v) in [
            ("vocab", self.vocab),
            ("hidden", self.hidden),
            ("ffn", self.ffn),
            ("layers", self.layers),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("max_seq", self.max_seq),
        ] {
            if v == 0 || v > i32::MAX as usize {
                return bad(&format!("{field} = {v} must be between 1 and {}", i32::MAX));
            }
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return bad(&format!("hidden = {} is not a multiple of heads = {}", self.hidden, self.heads));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(&format!("heads = {} is not a multiple of kv_heads = {}", self.heads, self.kv_heads));
        }
        let hd = self.head_dim();
        if !hd.is_multiple_of(2) || hd > 256 {
            return bad(&format!("head_dim = {hd} must be even and at most 256"));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return bad(&format!("norm_eps = {} must be in (0, 1)", self.norm_eps));
        }
        if self.arch == Arch::Llama && !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad(&format!("rope_theta = {} must be finite and > 1", self.rope_theta));
        }
        for &t in self.eos.iter().chain(self.bos.iter()) {
            if t as usize >= self.vocab {
                return bad(&format!("special token {t} is outside the vocabulary of {}", self.vocab));
            }
        }
        // Every tensor size must fit in usize (and the largest in the kernels' 32-bit rows).
        self.parameter_count()
            .ok_or_else(|| Error::InvalidArgument(format!("model config {:?}: parameter count overflows", self.name)))?;
        Ok(())
    }

    /// Total parameters (embeddings, blocks, final norm, head), or `None` when it overflows.
    /// Equals the sum over `weights::tensor_names`.
    pub fn parameter_count(&self) -> Option<usize> {
        let (d, f) = (self.hidden, self.ffn);
        let kv = self.kv_heads.checked_mul(self.hidden / self.heads.max(1))?;
        let linears = self.linear_parameter_count()?;
        // Per block: two norms (weight; OPT also a bias) and OPT's linear biases.
        let (norms, biases) = match self.arch {
            Arch::Llama => (d.checked_mul(2)?, 0),
            Arch::Opt => (d.checked_mul(4)?, d.checked_mul(3)?.checked_add(kv.checked_mul(2)?)?.checked_add(f)?),
        };
        let blocks = norms.checked_add(biases)?.checked_mul(self.layers)?.checked_add(linears)?;
        let final_norm = if self.arch == Arch::Opt { 2 * d } else { d };
        let embed = self.vocab.checked_mul(d)?;
        let head = if self.tie_embeddings { 0 } else { embed };
        let pos = if self.arch == Arch::Opt { self.max_seq.checked_add(OPT_POSITION_OFFSET)?.checked_mul(d)? } else { 0 };
        blocks.checked_add(final_norm)?.checked_add(embed)?.checked_add(head)?.checked_add(pos)
    }

    /// Parameters of the linear layers only (the part pruning makes sparse).
    pub fn linear_parameter_count(&self) -> Option<usize> {
        let (d, f) = (self.hidden, self.ffn);
        let kv = self.kv_heads.checked_mul(self.hidden / self.heads.max(1))?;
        let attn = d.checked_mul(d)?.checked_mul(2)?.checked_add(d.checked_mul(kv)?.checked_mul(2)?)?;
        let mlp = d.checked_mul(f)?.checked_mul(if self.arch == Arch::Llama { 3 } else { 2 })?;
        attn.checked_add(mlp)?.checked_mul(self.layers)
    }

    /// A preset of a published model's shape, for synthetic weights: `llama-2-7b`,
    /// `llama-2-13b`, `llama-2-70b`, `llama-3-8b`, `opt-30b`, `opt-66b`, and the small
    /// `smollm2-135m` and `tiny` (a few-layer model for tests).
    pub fn preset(name: &str) -> Result<Config> {
        let llama = |name: &str, vocab, hidden, ffn, layers, heads, kv_heads, max_seq, theta| Config {
            name: name.to_string(),
            arch: Arch::Llama,
            vocab,
            hidden,
            ffn,
            layers,
            heads,
            kv_heads,
            max_seq,
            rope_theta: theta,
            rope_style: RopeStyle::HalfSplit,
            norm_eps: 1e-5,
            tie_embeddings: false,
            eos: vec![2],
            bos: Some(1),
        };
        let opt = |name: &str, hidden, layers, heads| Config {
            name: name.to_string(),
            arch: Arch::Opt,
            vocab: 50272,
            hidden,
            ffn: 4 * hidden,
            layers,
            heads,
            kv_heads: heads,
            max_seq: 2048,
            rope_theta: 0.0,
            rope_style: RopeStyle::HalfSplit,
            norm_eps: 1e-5,
            tie_embeddings: true,
            eos: vec![2],
            bos: Some(2),
        };
        let config = match name.to_ascii_lowercase().as_str() {
            "llama-2-7b" => llama("LLaMA-2-7B", 32000, 4096, 11008, 32, 32, 32, 4096, 10000.0),
            "llama-2-13b" => llama("LLaMA-2-13B", 32000, 5120, 13824, 40, 40, 40, 4096, 10000.0),
            "llama-2-70b" => llama("LLaMA-2-70B", 32000, 8192, 28672, 80, 64, 8, 4096, 10000.0),
            "llama-3-8b" => Config {
                eos: vec![128001, 128009],
                bos: Some(128000),
                ..llama("Llama-3-8B", 128256, 4096, 14336, 32, 32, 8, 8192, 500000.0)
            },
            "smollm2-135m" => Config {
                tie_embeddings: true,
                eos: vec![2],
                ..llama("SmolLM2-135M", 49152, 576, 1536, 30, 9, 3, 8192, 100000.0)
            },
            "tiny" => Config { tie_embeddings: true, ..llama("tiny", 512, 128, 352, 2, 4, 2, 256, 10000.0) },
            "tiny-opt" => Config { vocab: 512, ffn: 512, max_seq: 256, ..opt("tiny-opt", 128, 2, 4) },
            "opt-30b" => opt("OPT-30B", 7168, 48, 56),
            "opt-66b" => opt("OPT-66B", 9216, 64, 72),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown model preset {other:?}; known: llama-2-7b, llama-2-13b, llama-2-70b, llama-3-8b, opt-30b, opt-66b, smollm2-135m, tiny, tiny-opt"
                )))
            }
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_sized_like_the_published_models() {
        let billions = |name| Config::preset(name).unwrap().parameter_count().unwrap() as f64 / 1e9;
        assert!((billions("llama-2-7b") - 6.74).abs() < 0.01, "{}", billions("llama-2-7b"));
        assert!((billions("llama-2-13b") - 13.02).abs() < 0.01);
        assert!((billions("llama-2-70b") - 68.98).abs() < 0.01);
        assert!((billions("llama-3-8b") - 8.03).abs() < 0.01);
        assert!((billions("opt-30b") - 29.97).abs() < 0.05, "{}", billions("opt-30b"));
        assert!((billions("opt-66b") - 65.7).abs() < 0.3, "{}", billions("opt-66b"));
        assert!((billions("smollm2-135m") - 0.1346).abs() < 0.001, "{}", billions("smollm2-135m"));
        assert!(Config::preset("gpt-5").unwrap_err().to_string().contains("unknown model preset"));
    }

    #[test]
    fn validation_names_the_field() {
        let ok = Config::preset("tiny").unwrap();
        let check = |c: Config, field: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e:?} should name {field}");
        };
        check(Config { heads: 0, ..ok.clone() }, "heads");
        check(Config { kv_heads: 3, ..ok.clone() }, "kv_heads");
        check(Config { hidden: 130, ..ok.clone() }, "hidden");
        check(Config { eos: vec![9999], ..ok.clone() }, "special token");
        check(Config { norm_eps: f32::NAN, ..ok.clone() }, "norm_eps");
        check(Config { vocab: usize::MAX, ..ok.clone() }, "vocab");
        // Sizes that each fit but whose product overflows.
        check(Config { hidden: 1 << 30, heads: 1 << 22, kv_heads: 1 << 22, ffn: 1 << 30, layers: 1 << 30, ..ok }, "overflows");
    }
}
