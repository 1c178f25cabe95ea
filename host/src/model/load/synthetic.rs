//! Synthetic models: a preset's shapes with random weights, pruned to a given sparsity, the
//! way Flash-LLM's end-to-end runs used them. The text they generate is meaningless; their
//! speed is what a real checkpoint of the same shape and sparsity would get.
//!
//! Every block gets the same weights ([`TensorSource::blocks_identical`]): the loader builds
//! the first block once and copies it on the device, so even a 70B model is ready in seconds.

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::weights::{TensorSource, TensorSpec};

/// Random weights of a preset's shape.
pub struct Synthetic {
    config: Config,
    sparsity: f64,
    seed: u64,
}

impl Synthetic {
    /// `preset` as in [`Config::preset`]; linear weights get `sparsity` (0..1) zeros at random
    /// positions (every tile about equally dense, as magnitude pruning of random values
    /// gives).
    pub fn new(preset: &str, sparsity: f64, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&sparsity) {
            return Err(Error::InvalidArgument(format!("sparsity = {sparsity}: must be in [0, 1)")));
        }
        Ok(Synthetic { config: Config::preset(preset)?, sparsity, seed })
    }
}

/// splitmix64: a counter-based generator, so any chunk of a tensor can be made on any thread.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

impl TensorSource for Synthetic {
    fn config(&self) -> &Config {
        &self.config
    }

    fn tensor(&self, spec: &TensorSpec) -> Result<Vec<f32>> {
        let len = spec
            .rows
            .checked_mul(spec.cols)
            .ok_or_else(|| Error::InvalidArgument(format!("tensor {}: size overflows", spec.name)))?;
        let leaf = spec.name.rsplit('.').next().unwrap_or("");
        let is_norm = spec.name.contains("norm") || spec.name.contains("layer_norm");
        if leaf == "bias" {
            return Ok(vec![0.0; len]);
        }
        if is_norm {
            return Ok(vec![1.0; len]);
        }
        // Linear weights: uniform with the variance of a unit-gain init (keeps activations in
        // f16 range through every block), pruned at random; embeddings: small, dense.
        let linear = spec.name.ends_with("proj.weight") || spec.name.contains(".fc");
        let (scale, sparsity) = if linear {
            ((3.0 / spec.cols as f64).sqrt() as f32, self.sparsity)
        } else {
            (0.02, 0.0)
        };
        let seed = splitmix(self.seed ^ name_hash(&spec.name));
        let mut out = vec![0f32; len];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(32);
        let chunk = len.div_ceil(threads).max(1 << 16);
        let keep = ((1.0 - sparsity) * (1u64 << 32) as f64) as u64;
        std::thread::scope(|s| {
            for (c, part) in out.chunks_mut(chunk).enumerate() {
                s.spawn(move || {
                    let base = (c * chunk) as u64;
                    for (i, v) in part.iter_mut().enumerate() {
                        let r = splitmix(seed.wrapping_add(base + i as u64));
                        if (r >> 32) < keep {
                            let u = (r & 0xFFFF_FFFF) as f32 / 4_294_967_296.0;
                            *v = (2.0 * u - 1.0) * scale;
                        }
                    }
                });
            }
        });
        Ok(out)
    }

    fn blocks_identical(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!(
            "synthetic {} (random weights, {:.0}% of each linear weight zero; the text is meaningless, the speed is real)",
            self.config.name,
            self.sparsity * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::tensor_names;

    #[test]
    fn weights_have_the_asked_sparsity_and_are_reproducible() {
        let s = Synthetic::new("tiny", 0.7, 5).unwrap();
        let names = tensor_names(s.config());
        let q = names.iter().find(|t| t.name.ends_with("q_proj.weight")).unwrap();
        let w = s.tensor(q).unwrap();
        let zeros = w.iter().filter(|v| **v == 0.0).count() as f64 / w.len() as f64;
        assert!((zeros - 0.7).abs() < 0.02, "{zeros}");
        assert_eq!(w, s.tensor(q).unwrap());
        let bound = (3.0 / q.cols as f64).sqrt() as f32;
        assert!(w.iter().all(|v| v.abs() <= bound));
        let norm = names.iter().find(|t| t.name.contains("input_layernorm")).unwrap();
        assert!(s.tensor(norm).unwrap().iter().all(|&v| v == 1.0));
        assert!(Synthetic::new("tiny", 1.0, 0).is_err());
        assert!(Synthetic::new("tiny", -0.1, 0).is_err());
    }
}
