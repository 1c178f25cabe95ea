//! Hugging Face checkpoints: `config.json` plus `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), memory-mapped; and the export of any [`TensorSource`] to
//! that layout (what transformers loads, and what the pruning tools write).
//!
//! Parsing is the `safetensors` crate's (it validates the header against the file size);
//! this module maps names and shapes and converts F32/F16/BF16 to f32.

use crate::error::{Error, Result};
use crate::model::config::{Arch, Config, RopeStyle};
use crate::model::weights::{tensor_names, LinearRole, TensorSource, TensorSpec};
use crate::sparse::SparseWeight;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

fn model_err(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Format(format!("{}: {what}", path.display()))
}

/// A Hugging Face checkpoint directory.
pub struct HfCheckpoint {
    config: Config,
    dir: PathBuf,
    /// Memory maps of the shard files.
    shards: Vec<Mmap>,
    /// Tensor name → shard index.
    index: HashMap<String, usize>,
}

impl HfCheckpoint {
    /// Opens `dir` (config.json + safetensors); checks that every tensor the config needs is
    /// present with its shape, before any is read.
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = config_from_json(&config_path)?;
        check_sparse_version(&config_path)?;
        let mut files = vec![];
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            let v: Value = serde_json::from_slice(&std::fs::read(&index_path)?).map_err(|e| model_err(&index_path, e))?;
            let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| model_err(&index_path, "no weight_map"))?;
            // A set, not a scan of `files`: an index may name very many shards.
            let mut seen = HashSet::new();
            for f in map.values().filter_map(Value::as_str) {
                if seen.insert(f) {
                    files.push(f.to_string());
                }
            }
        } else {
            files.push("model.safetensors".to_string());
        }
        let mut shards = vec![];
        let mut index = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            if f.contains('/') || f.contains("..") {
                return Err(model_err(&index_path, format!("shard name {f:?} leaves the directory")));
            }
            let path = dir.join(f);
            let file = File::open(&path).map_err(|e| model_err(&path, e))?;
            // SAFETY: the map is read-only; a checkpoint modified by another process while it
            // is mapped could change what we read (not memory safety of this process's own
            // data, which is validated by `SafeTensors::deserialize` on every access).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| model_err(&path, e))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| model_err(&path, e))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            shards.push(map);
        }
        // Every layer has tensors of its own: a layer count beyond the tensors present is
        // refused before `tensor_names` lists that many layers (a config of 2^31 - 1 tiny
        // layers validates, and its list would take terabytes).
        if config.layers > index.len() {
            return Err(model_err(dir, format!("num_hidden_layers = {} but the checkpoint has only {} tensors", config.layers, index.len())));
        }
        let ck = HfCheckpoint { config, dir: dir.to_path_buf(), shards, index };
        for spec in tensor_names(&ck.config) {
            ck.check(&spec)?;
        }
        Ok(ck)
    }

    fn view(&self, name: &str) -> Result<safetensors::tensor::TensorView<'_>> {
        let &i = self.index.get(name).ok_or_else(|| model_err(&self.dir, format!("tensor {name} is missing")))?;
        let st = SafeTensors::deserialize(&self.shards[i]).map_err(|e| model_err(&self.dir, e))?;
        st.tensor(name).map_err(|e| model_err(&self.dir, format!("tensor {name}: {e}")))
    }

    /// The packed form of `spec` (`NAME.stcw`), when the checkpoint stores it so.
    fn packed_name(&self, spec: &TensorSpec) -> Option<String> {
        let name = format!("{}{PACKED_SUFFIX}", spec.name);
        (!self.index.contains_key(&spec.name) && self.index.contains_key(&name)).then_some(name)
    }

    fn check(&self, spec: &TensorSpec) -> Result<()> {
        if let Some(name) = self.packed_name(spec) {
            let v = self.view(&name)?;
            if v.dtype() != StDtype::U8 || v.shape().len() != 1 {
                return Err(model_err(&self.dir, format!("packed tensor {name} is {:?} of shape {:?}; expected U8 bytes", v.dtype(), v.shape())));
            }
            return Ok(());
        }
        let v = self.view(&spec.name)?;
        let numel: usize = v.shape().iter().product();
        let shape_ok = match v.shape() {
            [n] => spec.rows == 1 && *n == spec.cols,
            [r, c] => *r == spec.rows && *c == spec.cols,
            _ => false,
        };
        if !shape_ok || numel != spec.rows * spec.cols {
            return Err(model_err(&self.dir, format!("tensor {} has shape {:?}, the config needs {}×{}", spec.name, v.shape(), spec.rows, spec.cols)));
        }
        if !matches!(v.dtype(), StDtype::F32 | StDtype::F16 | StDtype::BF16) {
            return Err(model_err(&self.dir, format!("tensor {} is {:?}; F32, F16 and BF16 are supported", spec.name, v.dtype())));
        }
        Ok(())
    }
}

impl TensorSource for HfCheckpoint {
    fn config(&self) -> &Config {
        &self.config
    }

    fn tensor(&self, spec: &TensorSpec) -> Result<Vec<f32>> {
        if let Some(w) = self.packed(spec)? {
            return Ok(w.to_dense().iter().map(|v| v.to_f32()).collect());
        }
        self.check(spec)?;
        let v = self.view(&spec.name)?;
        let bytes = v.data();
        Ok(match v.dtype() {
            StDtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            StDtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            _ => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        })
    }

    fn packed(&self, spec: &TensorSpec) -> Result<Option<SparseWeight<f16>>> {
        let Some(name) = self.packed_name(spec) else { return Ok(None) };
        self.check(spec)?;
        let w = SparseWeight::<f16>::load(self.view(&name)?.data()).map_err(|e| model_err(&self.dir, format!("{name}: {e}")))?;
        if (w.rows(), w.cols()) != (spec.rows, spec.cols) {
            return Err(model_err(&self.dir, format!("{name} is {}×{}, the config needs {}×{}", w.rows(), w.cols(), spec.rows, spec.cols)));
        }
        Ok(Some(w))
    }

    fn describe(&self) -> String {
        format!("{} (Hugging Face safetensors, {})", self.config.name, self.dir.display())
    }
}

/// Refuses a sparse checkpoint written by a newer layout than this crate reads.
fn check_sparse_version(path: &Path) -> Result<()> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).map_err(|e| model_err(path, e))?).map_err(|e| model_err(path, e))?;
    match v.get("sparse_tc").and_then(|s| s.get("checkpoint_version")) {
        None => Ok(()),
        Some(n) => match n.as_u64() {
            Some(n) if n <= SPARSE_CHECKPOINT_VERSION => Ok(()),
            _ => Err(model_err(path, format!("sparse_tc.checkpoint_version {n}: this build reads up to {SPARSE_CHECKPOINT_VERSION}"))),
        },
    }
}

/// Reads a Hugging Face `config.json` (LLaMA/Mistral family or OPT); anything this crate does
/// not run (rope scaling, sliding windows, OPT's projected embeddings) is refused by name.
pub fn config_from_json(path: &Path) -> Result<Config> {
    let text = std::fs::read(path).map_err(|e| model_err(path, e))?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| model_err(path, e))?;
    let get = |k: &str| -> Result<usize> {
        let n = v.get(k).and_then(Value::as_u64).ok_or_else(|| model_err(path, format!("{k} missing or not an unsigned integer")))?;
        usize::try_from(n).map_err(|_| model_err(path, format!("{k} = {n} is too large")))
    };
    let f = |k: &str, default: f64| v.get(k).and_then(Value::as_f64).unwrap_or(default) as f32;
    // Token ids beyond u32 are refused, not truncated (2^32 + 2 would become id 2).
    let id = |k: &str, n: u64| u32::try_from(n).map_err(|_| model_err(path, format!("{k} = {n} is not a token id")));
    let ids = |k: &str| -> Result<Vec<u32>> {
        match v.get(k) {
            Some(Value::Number(n)) => n.as_u64().map(|n| id(k, n)).into_iter().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|n| id(k, n)).collect(),
            _ => Ok(vec![]),
        }
    };
    let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
    let name = v.get("_name_or_path").and_then(Value::as_str).unwrap_or(model_type).to_string();
    let config = match model_type {
        "llama" | "mistral" => {
            if v.get("rope_scaling").is_some_and(|r| !r.is_null()) {
                return Err(model_err(path, "rope_scaling is not supported"));
            }
            if v.get("sliding_window").is_some_and(|r| !r.is_null()) && model_type == "mistral" {
                return Err(model_err(path, "sliding-window attention is not supported"));
            }
            let heads = get("num_attention_heads")?;
            Config {
                name,
                arch: Arch::Llama,
                vocab: get("vocab_size")?,
                hidden: get("hidden_size")?,
                ffn: get("intermediate_size")?,
                layers: get("num_hidden_layers")?,
                heads,
                kv_heads: get("num_key_value_heads").unwrap_or(heads),
                max_seq: get("max_position_embeddings")?,
                rope_theta: f("rope_theta", 10000.0),
                rope_style: RopeStyle::HalfSplit,
                norm_eps: f("rms_norm_eps", 1e-6),
                tie_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
                eos: ids("eos_token_id")?,
                bos: ids("bos_token_id")?.first().copied(),
            }
        }
        "opt" => {
            let hidden = get("hidden_size")?;
            if get("word_embed_proj_dim").unwrap_or(hidden) != hidden {
                return Err(model_err(path, "word_embed_proj_dim differs from hidden_size (OPT-350m's projections are not supported)"));
            }
            if v.get("do_layer_norm_before").and_then(Value::as_bool) == Some(false) {
                return Err(model_err(path, "do_layer_norm_before = false (post-norm OPT) is not supported"));
            }
            if v.get("activation_function").and_then(Value::as_str).is_some_and(|a| a != "relu") {
                return Err(model_err(path, "only the relu activation is supported for OPT"));
            }
            let heads = get("num_attention_heads")?;
            Config {
                name,
                arch: Arch::Opt,
                vocab: get("vocab_size")?,
                hidden,
                ffn: get("ffn_dim")?,
                layers: get("num_hidden_layers")?,
                heads,
                kv_heads: heads,
                max_seq: get("max_position_embeddings")?,
                rope_theta: 0.0,
                rope_style: RopeStyle::HalfSplit,
                norm_eps: 1e-5,
                tie_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true),
                eos: ids("eos_token_id")?,
                bos: ids("bos_token_id")?.first().copied(),
            }
        }
        other => return Err(model_err(path, format!("model_type {other:?} is not supported (llama, mistral, opt are)"))),
    };
    config.validate()?;
    Ok(config)
}

/// The `config.json` transformers needs to load an exported model.
pub fn config_to_json(c: &Config) -> Value {
    let eos = if c.eos.len() == 1 { serde_json::json!(c.eos[0]) } else { serde_json::json!(c.eos) };
    match c.arch {
        Arch::Llama => serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "_name_or_path": c.name,
            "vocab_size": c.vocab,
            "hidden_size": c.hidden,
            "intermediate_size": c.ffn,
            "num_hidden_layers": c.layers,
            "num_attention_heads": c.heads,
            "num_key_value_heads": c.kv_heads,
            "head_dim": c.head_dim(),
            "max_position_embeddings": c.max_seq,
            "rope_theta": c.rope_theta,
            "rms_norm_eps": c.norm_eps,
            "tie_word_embeddings": c.tie_embeddings,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": c.bos,
            "eos_token_id": eos,
            "torch_dtype": "float16",
        }),
        Arch::Opt => serde_json::json!({
            "architectures": ["OPTForCausalLM"],
            "model_type": "opt",
            "_name_or_path": c.name,
            "vocab_size": c.vocab,
            "hidden_size": c.hidden,
            "word_embed_proj_dim": c.hidden,
            "ffn_dim": c.ffn,
            "num_hidden_layers": c.layers,
            "num_attention_heads": c.heads,
            "max_position_embeddings": c.max_seq,
            "do_layer_norm_before": true,
            "activation_function": "relu",
            "enable_bias": true,
            "tie_word_embeddings": c.tie_embeddings,
            "bos_token_id": c.bos,
            "eos_token_id": eos,
            "torch_dtype": "float16",
        }),
    }
}

/// Writes `src` (every tensor the config needs, magnitude-pruned to `prune` for the linear
/// weights when > 0) as f16 safetensors with its `config.json` into `dir`: [`export_with`]
/// with dense tensors and no tokenizer.
pub fn export(src: &dyn TensorSource, prune: f64, dir: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<()> {
    export_with(src, dir, &ExportOptions { prune, ..ExportOptions::default() }, progress)
}

/// The version of the sparse checkpoint layout [`export_with`] writes with `packed` (in
/// `config.json` under `sparse_tc.checkpoint_version`); [`HfCheckpoint::open`] refuses newer.
pub const SPARSE_CHECKPOINT_VERSION: u64 = 1;

/// Suffix of a packed linear weight's tensor name: `NAME.stcw` holds the bytes of a sparse
/// weight file (`crate::sparse::file`: versioned, checksummed, validated when read) in place
/// of the dense `NAME`.
pub const PACKED_SUFFIX: &str = ".stcw";

/// What [`export_with`] writes besides the tensors.
#[derive(Default)]
pub struct ExportOptions<'a> {
    /// Magnitude-prune the linear weights to this sparsity first (0: as they are).
    pub prune: f64,
    /// Store every linear weight packed (Tiled-CSL, f16, reordered for the GPU's shared
    /// memory banks) as `NAME.stcw`: a sparse checkpoint that loads without densifying.
    /// Dense (false) is the plain Hugging Face layout with zeros in place.
    pub packed: bool,
    /// Written into `config.json` under `sparse_tc` (how the weights were made).
    pub provenance: Option<Value>,
    /// Written as `tokenizer.json` and `tokenizer_config.json`.
    pub tokenizer: Option<&'a crate::model::tokenizer::Tokenizer>,
}

/// Writes `src` as a checkpoint directory `dir`: `model.safetensors` (f16, or packed linear
/// weights), `config.json` and the tokenizer files. Every file goes to a temporary name first
/// and is renamed at the end, so an interrupted export never leaves a half-written file under
/// a final name; exporting into the directory `src` is read from is refused by the caller's
/// check of paths (see the CLI), since the renames would replace mapped files.
pub fn export_with(src: &dyn TensorSource, dir: &Path, opts: &ExportOptions<'_>, progress: &mut dyn FnMut(usize, usize)) -> Result<()> {
    if !(0.0..1.0).contains(&opts.prune) {
        return Err(Error::InvalidArgument(format!("export: prune = {} must be in [0, 1)", opts.prune)));
    }
    std::fs::create_dir_all(dir)?;
    let c = src.config();
    let specs = tensor_names(c);
    let linears: HashSet<String> = (0..c.layers)
        .flat_map(|l| LinearRole::all(c.arch).iter().map(move |r| format!("{}.weight", r.hf_prefix(c.arch, l))))
        .collect();
    let mut data: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let mut v = src.tensor(spec)?;
        let linear = linears.contains(&spec.name);
        if opts.prune > 0.0 && linear {
            crate::model::weights::prune_magnitude(&mut v, opts.prune)?;
        }
        let halves: Vec<f16> = v.iter().map(|x| f16::from_f32(*x)).collect();
        if opts.packed && linear {
            let mut w = crate::sparse::SparseWeight::from_dense(spec.rows, spec.cols, &halves)?;
            w.reorder_for_banks();
            let mut bytes = vec![];
            w.save(&mut bytes)?;
            let len = bytes.len();
            data.push((format!("{}{PACKED_SUFFIX}", spec.name), StDtype::U8, vec![len], bytes));
        } else {
            let bytes: Vec<u8> = halves.iter().flat_map(|x| x.to_le_bytes()).collect();
            let shape = if spec.rows == 1 { vec![spec.cols] } else { vec![spec.rows, spec.cols] };
            data.push((spec.name.clone(), StDtype::F16, shape, bytes));
        }
        progress(i + 1, specs.len());
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, d, s, b)| safetensors::tensor::TensorView::new(*d, s.clone(), b).map(|t| (n.clone(), t)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Format(format!("export: {e}")))?;
    let mut files: Vec<(&str, PathBuf)> = vec![];
    let tmp = dir.join("model.safetensors.partial");
    safetensors::serialize_to_file(views, None, &tmp).map_err(|e| Error::Format(format!("export: {e}")))?;
    files.push(("model.safetensors", tmp));
    let mut config = config_to_json(c);
    if opts.packed || opts.provenance.is_some() {
        let mut info = serde_json::Map::new();
        if opts.packed {
            info.insert("checkpoint_version".into(), SPARSE_CHECKPOINT_VERSION.into());
            info.insert("packed_linears".into(), format!("NAME{PACKED_SUFFIX}: U8 tensors holding sparse_tc weight files (Tiled-CSL, f16)").into());
        }
        if let Some(p) = &opts.provenance {
            info.insert("provenance".into(), p.clone());
        }
        config["sparse_tc"] = Value::Object(info);
    }
    let json = |v: &Value| serde_json::to_vec_pretty(v).map_err(|e| Error::Format(e.to_string()));
    let mut write = |name: &'static str, bytes: Vec<u8>| -> Result<()> {
        let tmp = dir.join(format!("{name}.partial"));
        std::fs::write(&tmp, bytes)?;
        files.push((name, tmp));
        Ok(())
    };
    write("config.json", json(&config)?)?;
    if let Some(t) = opts.tokenizer {
        write("tokenizer.json", t.to_json()?.into_bytes())?;
        write("tokenizer_config.json", t.to_config_json()?.into_bytes())?;
    }
    for (name, tmp) in files {
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::load::synthetic::Synthetic;

    #[test]
    fn export_then_open_gives_the_same_tensors() {
        let dir = std::env::temp_dir().join(format!("stc-export-{}", std::process::id()));
        for preset in ["tiny", "tiny-opt"] {
            let src = Synthetic::new(preset, 0.5, 1).unwrap();
            export(&src, 0.0, &dir, &mut |_, _| {}).unwrap();
            let back = HfCheckpoint::open(&dir).unwrap();
            let mut a = src.config().clone();
            a.name = back.config().name.clone();
            assert_eq!(&a, back.config(), "{preset}");
            for spec in tensor_names(src.config()) {
                let want: Vec<f32> = src.tensor(&spec).unwrap().iter().map(|v| f16::from_f32(*v).to_f32()).collect();
                assert_eq!(back.tensor(&spec).unwrap(), want, "{}", spec.name);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_checkpoints_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("stc-bad-{}", std::process::id()));
        let src = Synthetic::new("tiny", 0.0, 1).unwrap();
        export(&src, 0.0, &dir, &mut |_, _| {}).unwrap();
        let file = dir.join("model.safetensors");
        let good = std::fs::read(&file).unwrap();
        // Truncated: the header promises more than the file holds.
        std::fs::write(&file, &good[..good.len() / 2]).unwrap();
        assert!(HfCheckpoint::open(&dir).is_err());
        // A config that needs a tensor the file lacks (one layer more).
        std::fs::write(&file, &good).unwrap();
        let mut cfg: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        cfg["num_hidden_layers"] = serde_json::json!(3);
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        let e = HfCheckpoint::open(&dir).err().unwrap().to_string();
        assert!(e.contains("model.layers.2.") && e.contains("missing"), "{e}");
        cfg["model_type"] = serde_json::json!("gpt2");
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        assert!(HfCheckpoint::open(&dir).err().unwrap().to_string().contains("gpt2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
