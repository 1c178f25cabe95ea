//! GGUF checkpoints (llama.cpp's format) as a [`TensorSource`]: the config from the metadata,
//! llama.cpp's tensor names mapped from the Hugging Face ones, weights dequantized to f32, and
//! the Q/K rows put back in Hugging Face order.
//!
//! llama.cpp's converter permutes the rows of `q_proj` and `k_proj` so that its interleaved
//! rotary embedding (pairs `2i, 2i+1`) computes what Hugging Face's half-split one (pairs
//! `i, i + d/2`) does: within each head, Hugging Face row `p·d/2 + i` (p ∈ {0, 1}) is stored
//! at row `2i + p`. Undoing it at load lets one model definition (half-split RoPE) and one
//! export serve both formats.

use crate::error::{Error, Result};
use crate::model::config::{Arch, Config, RopeStyle};
use crate::model::gguf::Gguf;
use crate::model::weights::{TensorSource, TensorSpec};
use std::path::Path;

/// A GGUF file of the LLaMA architecture.
pub struct GgufCheckpoint {
    file: Gguf,
    config: Config,
}

impl GgufCheckpoint {
    /// Opens and validates `path`; the config comes from its `llama.*` metadata.
    pub fn open(path: &Path) -> Result<Self> {
        let file = Gguf::open(path)?;
        Self::from_gguf(file, &path.display().to_string())
    }

    /// The config and names of an opened file.
    pub fn from_gguf(file: Gguf, name: &str) -> Result<Self> {
        let arch = file.architecture()?.to_string();
        if arch != "llama" {
            return Err(Error::Format(format!("{name}: GGUF architecture {arch:?} is not supported (llama is)")));
        }
        let key = |k: &str| format!("llama.{k}");
        let heads = file.get_usize(&key("attention.head_count"))?;
        let vocab = match file.get_usize(&key("vocab_size")) {
            Ok(v) => v,
            Err(_) => file.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let token = |k: &str| file.get_u64(k).ok().and_then(|v| u32::try_from(v).ok());
        let mut eos: Vec<u32> = token("tokenizer.ggml.eos_token_id").into_iter().collect();
        // Chat models end a turn with `<|im_end|>` / `<|eot_id|>`: stop there too.
        if let Ok(tokens) = file.get_str_array("tokenizer.ggml.tokens") {
            for stop in ["<|im_end|>", "<|eot_id|>"] {
                if let Some(i) = tokens.iter().position(|t| t == stop) {
                    if !eos.contains(&(i as u32)) {
                        eos.push(i as u32);
                    }
                }
            }
        }
        let general_name = file.get_str("general.name").unwrap_or(name).to_string();
        let config = Config {
            name: general_name,
            arch: Arch::Llama,
            vocab,
            hidden: file.get_usize(&key("embedding_length"))?,
            ffn: file.get_usize(&key("feed_forward_length"))?,
            layers: file.get_usize(&key("block_count"))?,
            heads,
            kv_heads: file.get_usize(&key("attention.head_count_kv")).unwrap_or(heads),
            max_seq: file.get_usize(&key("context_length"))?,
            rope_theta: file.get_f32(&key("rope.freq_base")).unwrap_or(10000.0),
            rope_style: RopeStyle::HalfSplit,
            norm_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            tie_embeddings: file.tensor_info("output.weight").is_none(),
            eos,
            bos: token("tokenizer.ggml.bos_token_id"),
        };
        config.validate()?;
        Ok(GgufCheckpoint { file, config })
    }

    /// The opened file (for its tokenizer metadata).
    pub fn gguf(&self) -> &Gguf {
        &self.file
    }
}

/// llama.cpp's name of a Hugging Face tensor name, and for Q/K the head count to unpermute
/// with.
fn gguf_name(c: &Config, hf: &str) -> Option<(String, Option<usize>)> {
    let plain = |s: &str| Some((s.to_string(), None));
    match hf {
        "model.embed_tokens.weight" => return plain("token_embd.weight"),
        "model.norm.weight" => return plain("output_norm.weight"),
        "lm_head.weight" => return plain("output.weight"),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, leaf) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (name, heads) = match leaf {
        "input_layernorm.weight" => ("attn_norm.weight", None),
        "self_attn.q_proj.weight" => ("attn_q.weight", Some(c.heads)),
        "self_attn.k_proj.weight" => ("attn_k.weight", Some(c.kv_heads)),
        "self_attn.v_proj.weight" => ("attn_v.weight", None),
        "self_attn.o_proj.weight" => ("attn_output.weight", None),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
        "mlp.up_proj.weight" => ("ffn_up.weight", None),
        "mlp.down_proj.weight" => ("ffn_down.weight", None),
        _ => return None,
    };
    Some((format!("blk.{layer}.{name}"), heads))
}

/// Undoes llama.cpp's Q/K row permutation (see the module docs) of a `rows × cols` matrix of
/// `heads` heads.
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for p in 0..2 {
            for i in 0..half {
                let hf = h * hd + p * half + i;
                let gg = h * hd + 2 * i + p;
                out[hf * cols..(hf + 1) * cols].copy_from_slice(&w[gg * cols..(gg + 1) * cols]);
            }
        }
    }
    out
}

impl TensorSource for GgufCheckpoint {
    fn config(&self) -> &Config {
        &self.config
    }

    fn tensor(&self, spec: &TensorSpec) -> Result<Vec<f32>> {
        let (name, heads) = gguf_name(&self.config, &spec.name)
            .ok_or_else(|| Error::Format(format!("tensor {} has no GGUF counterpart", spec.name)))?;
        let info = self
            .file
            .tensor_info(&name)
            .ok_or_else(|| Error::Format(format!("GGUF tensor {name} (for {}) is missing", spec.name)))?;
        let dims = info.dims();
        let shape_ok = match dims.as_slice() {
            [n] => spec.rows == 1 && *n as usize == spec.cols,
            [r, c] => *r as usize == spec.rows && *c as usize == spec.cols,
            _ => false,
        };
        if !shape_ok {
            return Err(Error::Format(format!("GGUF tensor {name} has shape {dims:?}, the config needs {}×{}", spec.rows, spec.cols)));
        }
        let w = self.file.tensor_f32(&name)?;
        Ok(match heads {
            Some(h) => unpermute_rows(&w, spec.rows, spec.cols, h),
            None => w,
        })
    }

    fn describe(&self) -> String {
        format!("{} (GGUF, dequantized)", self.config.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols).
        let (heads, hd, cols) = (3, 8, 2);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..heads {
            for p in 0..2 {
                for i in 0..hd / 2 {
                    // Element (h, p, i) of the reshaped HF matrix lands at (h, i, p).
                    let src = h * hd + p * hd / 2 + i;
                    let dst = h * hd + i * 2 + p;
                    gguf[dst * cols..(dst + 1) * cols].copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&gguf, rows, cols, heads), hf);
    }

    #[test]
    fn names_map_to_llama_cpp() {
        let c = Config::preset("tiny").unwrap();
        assert_eq!(gguf_name(&c, "model.layers.1.self_attn.k_proj.weight"), Some(("blk.1.attn_k.weight".into(), Some(2))));
        assert_eq!(gguf_name(&c, "model.layers.0.mlp.down_proj.weight"), Some(("blk.0.ffn_down.weight".into(), None)));
        assert_eq!(gguf_name(&c, "model.norm.weight"), Some(("output_norm.weight".into(), None)));
        assert_eq!(gguf_name(&c, "model.layers.x.mlp.down_proj.weight"), None);
        assert_eq!(gguf_name(&c, "model.layers.0.mlp.bogus"), None);
    }
}
