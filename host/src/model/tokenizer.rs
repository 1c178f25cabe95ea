//! Byte-level BPE tokenizer (GPT-2 style: SmolLM2, Llama 3, Qwen2, …) built from a GGUF file's
//! metadata or from a Hugging Face `tokenizer.json`, with the model's chat template.
//!
//! # How the tokenizer is built
//!
//! The BPE itself is Hugging Face's `tokenizers` crate. From a GGUF we rebuild what
//! transformers' GGUF loader and llama.cpp build from the same keys:
//!
//! * `tokenizer.ggml.model` must be `"gpt2"` (byte-level BPE). Tokens are spelled in GPT-2's
//!   byte alphabet (each byte mapped to a printable character, space → `Ġ`); a token that is
//!   not (some converters store plain text) is respelled into it, as transformers does.
//! * `tokenizer.ggml.tokens` (id = index) and `tokenizer.ggml.merges` (`"a b"`, best first)
//!   make the BPE model: no unknown token, no dropout, no byte fallback, merges applied by rank.
//! * `tokenizer.ggml.token_type`: CONTROL (3) tokens such as `<|im_start|>` become special
//!   added tokens and USER_DEFINED (4) plain added tokens, so both are matched whole in text.
//! * `tokenizer.ggml.pre` picks the split applied before BPE ([`PreSplit`]). For `"smollm"`
//!   (and StarCoder, Refact, Command-R, CodeShell, EXAONE, Minerva) every digit is split off
//!   first and the rest split with GPT-2's regex — what SmolLM2's own `tokenizer.json` does
//!   (`Digits(individual_digits)` then `ByteLevel`) and what llama.cpp does for this type
//!   (`\p{N}` then the GPT-2 regex). Note: transformers' GGUF loader has no entry for
//!   `"smollm"` and uses plain GPT-2 splitting, which differs from the original tokenizer
//!   only when whitespace precedes a digit (`"x  1"`: original/llama.cpp/ours `[x, ĠĠ, 1]`,
//!   transformers-from-GGUF `[x, Ġ, Ġ, 1]`). The vocabulary has no multi-digit token and no
//!   merge involving a digit, so everything else is identical.
//! * `bos_token_id`, `eos_token_id` (and `eot`/`eom` ids, and the usual end-of-turn tokens
//!   such as `<|im_end|>` when they are special) give [`Tokenizer::eos_ids`], the ids at which
//!   generation stops.
//!
//! Decoding is GPT-2's: each token's characters map back to bytes, the bytes are concatenated
//! and read as UTF-8 with invalid sequences replaced by U+FFFD (exactly the `ByteLevel`
//! decoder of `tokenizers`). [`StreamDecoder`] does the same incrementally, holding back an
//! incomplete UTF-8 sequence until the token that completes it arrives.
//!
//! # Chat template
//!
//! [`Tokenizer::apply_chat_template`] renders the Jinja template from the metadata
//! (`tokenizer.chat_template`, or `chat_template` of `tokenizer_config.json`) with minijinja,
//! configured like transformers (`trim_blocks`, `lstrip_blocks`, `raise_exception`,
//! `bos_token`/`eos_token` variables). Templates are trusted like the weights; a fuel limit
//! stops runaway loops.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::gguf::Gguf;
use crate::error::{Error, Result};

fn model_err(msg: impl Into<String>) -> Error {
    Error::Model(msg.into())
}

/// GGUF token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Texts of tokens that end a turn in common chat models; a *special* token with one of these
/// texts is added to [`Tokenizer::eos_ids`] (llama.cpp's end-of-generation heuristic).
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "<EOT>",
];

/// Llama 3's split regex (`tokenizer.ggml.pre` = `llama-bpe` and relatives).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: as Llama 3's but one digit at a time.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How text is split into words before BPE, chosen by `tokenizer.ggml.pre`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreSplit {
    /// GPT-2's regex (`'s|'t|…| ?\p{L}+| ?\p{N}+|…`): `gpt-2`, `mpt`, `olmo`, …, and files
    /// without a `pre` key (transformers' default).
    Gpt2,
    /// Each digit on its own, then GPT-2's regex: `smollm`, `starcoder`, `refact`,
    /// `command-r`, `codeshell`, `exaone`, `minerva`.
    DigitsThenGpt2,
    /// Llama 3's regex (numbers in groups of up to three): `llama-bpe`, `llama3`, `dbrx`, ….
    Llama3,
    /// Qwen2's regex (single digits): `qwen2`, `deepseek-r1-qwen`, `megrez`.
    Qwen2,
}

impl PreSplit {
    /// The split for a `tokenizer.ggml.pre` value; unknown values are an error rather than a
    /// guess, since a wrong split silently changes token ids.
    pub fn from_gguf_pre(pre: Option<&str>) -> Result<PreSplit> {
        Ok(match pre {
            None
            | Some(
                "default" | "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" | "jais" | "roberta-bpe",
            ) => PreSplit::Gpt2,
            Some(
                "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
                | "minerva-7b",
            ) => PreSplit::DigitsThenGpt2,
            Some(
                "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe",
            ) => PreSplit::Llama3,
            Some("qwen2" | "deepseek-r1-qwen" | "megrez") => PreSplit::Qwen2,
            Some(other) => {
                return Err(model_err(format!(
                    "tokenizer.ggml.pre = '{other}' is not supported (known: smollm, gpt-2, \
                     llama-bpe, qwen2 and their aliases)"
                )))
            }
        })
    }

    fn pre_tokenizer(self) -> Result<PreTokenizerWrapper> {
        let byte_level = ByteLevel::default().add_prefix_space(false).trim_offsets(true);
        let split = |re: &str| -> Result<PreTokenizerWrapper> {
            let s = Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| model_err(format!("split regex: {e}")))?;
            Ok(Sequence::new(vec![s.into(), byte_level.use_regex(false).into()]).into())
        };
        Ok(match self {
            PreSplit::Gpt2 => byte_level.use_regex(true).into(),
            PreSplit::DigitsThenGpt2 => {
                Sequence::new(vec![Digits::new(true).into(), byte_level.use_regex(true).into()])
                    .into()
            }
            PreSplit::Llama3 => split(LLAMA3_SPLIT)?,
            PreSplit::Qwen2 => split(QWEN2_SPLIT)?,
        })
    }
}

/// GPT-2's byte ↔ character table (`bytes_to_unicode` in GPT-2's encoder.py): printable bytes
/// `!`..`~`, `¡`..`¬`, `®`..`ÿ` stand for themselves, the other 68 bytes map to U+0100.. in
/// byte order.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        // All values are below 0x200, valid scalar values.
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

/// The bytes a token stands for, the way the `ByteLevel` decoder reads it: if every character
/// is in the byte alphabet, the bytes they map to; otherwise the token's own UTF-8.
fn token_to_bytes(token: &str, char_byte: &std::collections::HashMap<char, u8>) -> Vec<u8> {
    token
        .chars()
        .map(|c| char_byte.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

/// One chat message for [`Tokenizer::apply_chat_template_messages`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `"system"`, `"user"` or `"assistant"`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with this role and text.
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.to_string(), content: content.to_string() }
    }
}

/// A byte-level BPE tokenizer with its special ids and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Bytes of each id (None: no token has this id).
    token_bytes: Vec<Option<Vec<u8>>>,
    /// Whether each id is a special (control) token.
    special: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos_ids", &self.eos_ids)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn optional_id(g: &Gguf, key: &str, n: usize) -> Result<Option<u32>> {
    if g.metadata(key).is_none() {
        return Ok(None);
    }
    let id = g.get_u64(key)?;
    if id >= n as u64 {
        return Err(model_err(format!("{key} = {id} is outside the vocabulary of {n} tokens")));
    }
    Ok(Some(id as u32))
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes (see the module docs).
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(model_err(format!(
                "tokenizer.ggml.model = '{model}' is not supported (only byte-level BPE, 'gpt2')"
            )));
        }
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(model_err(format!("tokenizer.ggml.tokens has {n} tokens")));
        }
        let merges = g.get_str_array("tokenizer.ggml.merges")?;
        let types = match g.metadata("tokenizer.ggml.token_type") {
            None => None,
            Some(_) => {
                let t = g.get_i32_array("tokenizer.ggml.token_type")?;
                if t.len() != n {
                    return Err(model_err(format!(
                        "tokenizer.ggml.token_type has {} entries for {n} tokens",
                        t.len()
                    )));
                }
                Some(t)
            }
        };
        let pre = match g.metadata("tokenizer.ggml.pre") {
            None => None,
            Some(_) => Some(g.get_str("tokenizer.ggml.pre")?),
        };
        let split = PreSplit::from_gguf_pre(pre)?;

        let table = byte_chars();
        let alphabet: HashSet<char> = table.iter().copied().collect();
        let char_byte: std::collections::HashMap<char, u8> =
            table.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));

        // Vocabulary, respelling tokens that are not in the byte alphabet (as transformers does).
        // Later duplicates win, as in transformers' dict; decoding uses `token_bytes` per id.
        let mut vocab = Vocab::default();
        for (id, t) in tokens.iter().enumerate() {
            let spelled = if in_alphabet(t) {
                t.clone()
            } else {
                t.bytes().map(|b| table[b as usize]).collect()
            };
            vocab.insert(spelled, id as u32);
        }
        let mut pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                model_err(format!(
                    "tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by a space"
                ))
            })?;
            pairs.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, pairs)
            .build()
            .map_err(|e| model_err(format!("building BPE from the GGUF vocabulary: {e}")))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(split.pre_tokenizer()?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.with_post_processor(Some(
            ByteLevel::default().add_prefix_space(false).trim_offsets(false).use_regex(true),
        ));

        let mut special = vec![false; n];
        if let Some(types) = types {
            let mut control = Vec::new();
            let mut user = Vec::new();
            for (id, (t, &ty)) in tokens.iter().zip(types).enumerate() {
                if ty == TOKEN_TYPE_CONTROL && in_alphabet(t) {
                    control.push(AddedToken::from(t.clone(), true).normalized(false));
                    special[id] = true;
                } else if ty == TOKEN_TYPE_USER_DEFINED {
                    user.push(AddedToken::from(t.clone(), false).normalized(false));
                }
            }
            inner.add_special_tokens(control).map_err(|e| model_err(format!("adding the control tokens: {e}")))?;
            inner.add_tokens(user).map_err(|e| model_err(format!("adding the user-defined tokens: {e}")))?;
        }

        let token_bytes = tokens.iter().map(|t| Some(token_to_bytes(t, &char_byte))).collect();
        let bos = optional_id(g, "tokenizer.ggml.bos_token_id", n)?;
        let eos = optional_id(g, "tokenizer.ggml.eos_token_id", n)?;
        let mut eos_ids: Vec<u32> = eos.into_iter().collect();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            eos_ids.extend(optional_id(g, key, n)?);
        }
        let add_bos = match g.metadata("tokenizer.ggml.add_bos_token") {
            None => false,
            Some(_) => g.get_bool("tokenizer.ggml.add_bos_token")?,
        };
        let chat_template = match g.metadata("tokenizer.chat_template") {
            None => None,
            Some(_) => Some(g.get_str("tokenizer.chat_template")?.to_string()),
        };
        Ok(Tokenizer::finish(
            inner,
            token_bytes,
            special,
            bos,
            eos,
            eos_ids,
            add_bos,
            chat_template,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        inner: tokenizers::Tokenizer,
        token_bytes: Vec<Option<Vec<u8>>>,
        special: Vec<bool>,
        bos: Option<u32>,
        eos: Option<u32>,
        mut eos_ids: Vec<u32>,
        add_bos: bool,
        chat_template: Option<String>,
    ) -> Tokenizer {
        for name in END_OF_TURN_TOKENS {
            if let Some(id) = inner.token_to_id(name) {
                if special.get(id as usize).copied().unwrap_or(false) {
                    eos_ids.push(id);
                }
            }
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Tokenizer { inner, token_bytes, special, bos, eos, eos_ids, add_bos, chat_template }
    }

    /// Loads a Hugging Face `tokenizer.json` (byte-level BPE: its decoder must be `ByteLevel`)
    /// and optionally its `tokenizer_config.json`, which supplies `bos_token`, `eos_token`,
    /// `add_bos_token` and `chat_template`.
    pub fn from_hf_json(
        tokenizer_json: &[u8],
        tokenizer_config_json: Option<&[u8]>,
    ) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| Error::Format(format!("tokenizer.json: {e}")))?;
        match inner.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => {}
            other => {
                let name = match other {
                    None => "absent".to_string(),
                    Some(d) => {
                        format!("{d:?}").chars().take_while(|c| c.is_alphanumeric()).collect()
                    }
                };
                return Err(model_err(format!(
                    "tokenizer.json decoder is {name}; only byte-level BPE (decoder ByteLevel) is \
                     supported"
                )));
            }
        }
        let vocab = inner.get_vocab(true);
        let n = vocab.values().copied().max().map_or(0, |m| m as usize + 1);
        let table = byte_chars();
        let char_byte: std::collections::HashMap<char, u8> =
            table.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        let mut token_bytes = vec![None; n];
        for (token, &id) in &vocab {
            token_bytes[id as usize] = Some(token_to_bytes(token, &char_byte));
        }
        // Added tokens decode to their content (it overrides a vocabulary entry of the same id).
        let mut special = vec![false; n];
        for (id, t) in inner.get_added_tokens_decoder() {
            if let Some(slot) = token_bytes.get_mut(id as usize) {
                *slot = Some(token_to_bytes(&t.content, &char_byte));
                special[id as usize] = t.special;
            }
        }

        let mut bos = None;
        let mut eos = None;
        let mut add_bos = false;
        let mut chat_template = None;
        if let Some(cfg) = tokenizer_config_json {
            let cfg: serde_json::Value = serde_json::from_slice(cfg)
                .map_err(|e| Error::Format(format!("tokenizer_config.json: {e}")))?;
            let token_id = |key: &str| -> Result<Option<u32>> {
                let text = match cfg.get(key) {
                    None | Some(serde_json::Value::Null) => return Ok(None),
                    Some(serde_json::Value::String(s)) => s.as_str(),
                    Some(v) => match v.get("content").and_then(|c| c.as_str()) {
                        Some(s) => s,
                        None => {
                            return Err(model_err(format!("tokenizer_config.json {key} is {v}")))
                        }
                    },
                };
                inner.token_to_id(text).map(Some).ok_or_else(|| {
                    model_err(format!(
                        "tokenizer_config.json {key} {text:?} is not in the vocabulary"
                    ))
                })
            };
            bos = token_id("bos_token")?;
            eos = token_id("eos_token")?;
            add_bos = cfg.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
            chat_template = match cfg.get("chat_template") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Array(list)) => {
                    let pick = list
                        .iter()
                        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                        .or_else(|| list.first());
                    pick.and_then(|t| t.get("template"))
                        .and_then(|t| t.as_str())
                        .map(str::to_string)
                }
                Some(v) => {
                    return Err(model_err(format!("tokenizer_config.json chat_template is {v}")))
                }
            };
        }
        let eos_ids = eos.into_iter().collect();
        Ok(Tokenizer::finish(
            inner,
            token_bytes,
            special,
            bos,
            eos,
            eos_ids,
            add_bos,
            chat_template,
        ))
    }

    /// [`Tokenizer::from_hf_json`] on `dir/tokenizer.json` and, when present,
    /// `dir/tokenizer_config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
        let json = std::fs::read(dir.join("tokenizer.json"))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = if cfg_path.exists() { Some(std::fs::read(cfg_path)?) } else { None };
        Tokenizer::from_hf_json(&json, cfg.as_deref())
    }

    /// Token ids of `text`, with the BOS id first when `add_bos` (and the model has one).
    /// Special tokens written in the text (`<|im_start|>`) become their ids, as in transformers.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| model_err(format!("encode: {e}")))?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 1);
        if add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The bytes token `id` stands for (a piece of UTF-8 text, possibly an incomplete
    /// character). Special tokens give their text.
    pub fn decode_token(&self, id: u32) -> Result<&[u8]> {
        match self.token_bytes.get(id as usize) {
            Some(Some(b)) => Ok(b),
            _ => Err(model_err(format!(
                "token id {id} is not in the vocabulary (size {})",
                self.vocab_size()
            ))),
        }
    }

    fn decode_impl(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            let b = self.decode_token(id)?;
            if !(skip_special && self.is_special(id)) {
                bytes.extend_from_slice(b);
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Text of `ids`, special tokens included (transformers' default); invalid UTF-8 becomes
    /// U+FFFD. An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_impl(ids, false)
    }

    /// [`Tokenizer::decode`] without the special tokens (`skip_special_tokens=True`).
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String> {
        self.decode_impl(ids, true)
    }

    /// An incremental decoder for generated tokens.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder { tok: self, pending: Vec::new() }
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The beginning-of-sequence id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id (`eos_token_id`), if the model has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Every id that ends generation, sorted: the EOS id, GGUF's EOT/EOM ids, and special
    /// end-of-turn tokens such as `<|im_end|>` and `<|endoftext|>`.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.binary_search(&id).is_ok()
    }

    /// Whether the model asks for a BOS token in front of prompts (`add_bos_token`).
    pub fn add_bos_by_default(&self) -> bool {
        self.add_bos
    }

    /// Number of token ids (the embedding matrix's row count for GGUF models).
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// The id of a token spelled as in the vocabulary (`"Ġthe"`, `"<|im_end|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary spelling of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The chat template (Jinja), if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The prompt for one user message, rendered with the model's chat template as
    /// transformers' `apply_chat_template([{"role": "user", "content": …}],
    /// add_generation_prompt=…, tokenize=False)` does. For SmolLM2 that is
    /// `<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging
    /// Face<|im_end|>\n<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n`.
    pub fn apply_chat_template(
        &self,
        user_message: &str,
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.apply_chat_template_messages(
            &[ChatMessage::new("user", user_message)],
            add_generation_prompt,
        )
    }

    /// The chat template rendered for a conversation.
    pub fn apply_chat_template_messages(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        use minijinja::{Environment, Value};
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| model_err("the tokenizer has no chat template"))?;
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| model_err(format!("chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
            },
        );
        let tmpl = env
            .template_from_str(template)
            .map_err(|e| model_err(format!("chat template does not compile: {e:#}")))?;
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut map = BTreeMap::new();
                map.insert("role".to_string(), Value::from(m.role.as_str()));
                map.insert("content".to_string(), Value::from(m.content.as_str()));
                Value::from(map)
            })
            .collect();
        let token_text = |id: Option<u32>| id.and_then(|i| self.id_to_token(i)).unwrap_or_default();
        let mut ctx = BTreeMap::new();
        ctx.insert("messages".to_string(), Value::from(msgs));
        ctx.insert("add_generation_prompt".to_string(), Value::from(add_generation_prompt));
        ctx.insert("bos_token".to_string(), Value::from(token_text(self.bos)));
        ctx.insert("eos_token".to_string(), Value::from(token_text(self.eos)));
        tmpl.render(Value::from(ctx)).map_err(|e| model_err(format!("chat template: {e:#}")))
    }

    /// The tokenizer as a Hugging Face `tokenizer.json` (loadable by `tokenizers` and
    /// transformers' `PreTrainedTokenizerFast`).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| model_err(format!("serializing tokenizer.json: {e}")))
    }

    /// A `tokenizer_config.json` to go with [`Tokenizer::to_json`]: special tokens,
    /// `add_bos_token` and the chat template.
    pub fn to_config_json(&self) -> Result<String> {
        let text = |id: Option<u32>| id.and_then(|i| self.id_to_token(i));
        let cfg = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": text(self.bos),
            "eos_token": text(self.eos),
            "add_bos_token": self.add_bos,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "chat_template": self.chat_template,
        });
        serde_json::to_string_pretty(&cfg)
            .map_err(|e| model_err(format!("tokenizer_config.json: {e}")))
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Instruction budget for one chat-template rendering (a conversation of a few hundred
/// messages needs a small fraction of it).
const CHAT_TEMPLATE_FUEL: u64 = 5_000_000;

/// Turns generated ids into text as they arrive.
///
/// A token can end in the middle of a UTF-8 character (byte-level BPE splits emoji and CJK
/// characters into several tokens); `push` returns only complete text and keeps the rest.
/// Concatenating every `push` and the final [`StreamDecoder::finish`] gives exactly
/// [`Tokenizer::decode`] of all the ids.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds one id; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.pending.extend_from_slice(self.tok.decode_token(id)?);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // `good` is valid UTF-8 by construction.
                    out.push_str(&String::from_utf8_lossy(good));
                    match e.error_len() {
                        // An invalid sequence: replaced, as the lossy decode does.
                        Some(len) => {
                            out.push('\u{FFFD}');
                            rest = &bad[len..];
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        Ok(out)
    }

    /// The text still held back (an incomplete character becomes U+FFFD).
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::tests::smollm2_path;
    use crate::model::gguf::{GgufWriter, MetaArray, MetaValue};
    use proptest::prelude::*;

    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// A small byte-level vocabulary: 3 control tokens, the 256 byte characters, a few merges
    /// and one user-defined token.
    fn tiny_writer(pre: Option<&str>) -> GgufWriter {
        let mut tokens: Vec<String> =
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].iter().map(|s| s.to_string()).collect();
        let mut types = vec![3, 3, 3];
        for c in byte_chars() {
            tokens.push(c.to_string());
            types.push(1);
        }
        let merges = ["Ġ t", "h e", "Ġt he", "Ġ Ġ", "1 2"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
            types.push(1);
        }
        tokens.push("<think>".into());
        types.push(4);
        let mut w = GgufWriter::new();
        w.kv("general.architecture", MetaValue::Str("llama".into()))
            .kv("tokenizer.ggml.model", MetaValue::Str("gpt2".into()))
            .kv("tokenizer.ggml.tokens", MetaValue::Array(MetaArray::Str(tokens)))
            .kv("tokenizer.ggml.token_type", MetaValue::Array(MetaArray::I32(types)))
            .kv(
                "tokenizer.ggml.merges",
                MetaValue::Array(MetaArray::Str(merges.iter().map(|s| s.to_string()).collect())),
            )
            .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
            .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
            .kv("tokenizer.ggml.add_bos_token", MetaValue::Bool(false))
            .kv("tokenizer.chat_template", MetaValue::Str(SMOLLM2_TEMPLATE.into()));
        if let Some(p) = pre {
            w.kv("tokenizer.ggml.pre", MetaValue::Str(p.into()));
        }
        w
    }

    fn tiny(pre: Option<&str>) -> Tokenizer {
        let g = Gguf::from_bytes(&tiny_writer(pre).to_bytes()).unwrap();
        Tokenizer::from_gguf(&g).unwrap()
    }

    fn id(t: &Tokenizer, token: &str) -> u32 {
        t.token_to_id(token).unwrap_or_else(|| panic!("{token:?} not in vocab"))
    }

    #[test]
    fn tiny_vocabulary_encodes_with_merges_digits_and_specials() {
        let t = tiny(Some("smollm"));
        assert_eq!(t.vocab_size(), 3 + 256 + 5 + 1);
        assert_eq!(t.encode(" the", false).unwrap(), vec![id(&t, "Ġthe")]);
        assert_eq!(t.encode("the", false).unwrap(), vec![id(&t, "t"), id(&t, "he")]);
        // smollm splits every digit off before BPE, so the merge "1 2" never applies…
        assert_eq!(t.encode("12", false).unwrap(), vec![id(&t, "1"), id(&t, "2")]);
        // …while GPT-2 splitting keeps "12" together.
        let g2 = tiny(Some("gpt-2"));
        assert_eq!(g2.encode("12", false).unwrap(), vec![id(&g2, "12")]);
        // Whitespace before a digit: "x  1" → x, ĠĠ, 1 (smollm) vs x, Ġ, Ġ1→Ġ,1 (GPT-2).
        assert_eq!(t.encode("x  1", false).unwrap(), [id(&t, "x"), id(&t, "ĠĠ"), id(&t, "1")]);
        assert_eq!(
            g2.encode("x  1", false).unwrap(),
            [id(&g2, "x"), id(&g2, "Ġ"), id(&g2, "Ġ"), id(&g2, "1")]
        );
        // Control and user-defined tokens are matched whole; BOS on request.
        assert_eq!(
            t.encode("<|im_start|>he<think>", true).unwrap(),
            vec![1, 1, id(&t, "he"), id(&t, "<think>")]
        );
        assert_eq!(t.bos_id(), Some(1));
        assert_eq!(t.eos_id(), Some(2));
        assert_eq!(t.eos_ids(), &[0, 2]);
        assert!(t.is_eos(0) && t.is_eos(2) && !t.is_eos(1));
        assert!(t.is_special(1) && !t.is_special(id(&t, "<think>")));
        assert!(!t.add_bos_by_default());
        // Non-ASCII: é is two bytes, each its own token here.
        assert_eq!(t.encode("é", false).unwrap(), vec![id(&t, "Ã"), id(&t, "©")]);
    }

    #[test]
    fn decode_and_stream_decode() {
        let t = tiny(Some("smollm"));
        let s = "<|im_start|>héllo 12 😀<|im_end|>";
        let ids = t.encode(s, false).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), s);
        assert_eq!(t.decode_skip_special(&ids).unwrap(), "héllo 12 😀");
        // The emoji is four byte tokens; streaming holds them back until complete.
        let emoji = t.encode("😀", false).unwrap();
        assert_eq!(emoji.len(), 4);
        let mut d = t.stream_decoder();
        for &i in &emoji[..3] {
            assert_eq!(d.push(i).unwrap(), "");
        }
        assert_eq!(d.push(emoji[3]).unwrap(), "😀");
        assert_eq!(d.finish(), "");
        // An incomplete character at the end becomes U+FFFD, as in decode.
        let mut d = t.stream_decoder();
        assert_eq!(d.push(emoji[0]).unwrap(), "");
        assert_eq!(d.finish(), "\u{FFFD}");
        assert_eq!(t.decode(&emoji[..2]).unwrap(), "\u{FFFD}");
        // A stray continuation byte is replaced at once.
        let cont = id(&t, &byte_chars()[0x80].to_string());
        let mut d = t.stream_decoder();
        assert_eq!(d.push(cont).unwrap(), "\u{FFFD}");
        assert_eq!(t.decode_token(id(&t, "Ġthe")).unwrap(), b" the");
        let n = t.vocab_size() as u32;
        assert!(matches!(t.decode(&[n]), Err(Error::Model(m)) if m.contains(&n.to_string())));
        assert!(t.stream_decoder().push(n).is_err());
    }

    #[test]
    fn chat_template_renders_like_transformers() {
        let t = tiny(Some("smollm"));
        // Rendered by jinja2 (trim_blocks, lstrip_blocks) from the same template.
        assert_eq!(
            t.apply_chat_template("What is the capital of France?", true).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let conv = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello!"),
            ChatMessage::new("user", "2+2?"),
        ];
        assert_eq!(
            t.apply_chat_template_messages(&conv, false).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        );
        assert!(t.apply_chat_template("x", false).unwrap().ends_with("x<|im_end|>\n"));
    }

    fn with_template(template: &str) -> Tokenizer {
        let mut w = tiny_writer(Some("smollm"));
        w.kv("x", MetaValue::U8(0));
        let mut t = Tokenizer::from_gguf(&Gguf::from_bytes(&w.to_bytes()).unwrap()).unwrap();
        t.chat_template = Some(template.to_string());
        t
    }

    #[test]
    fn chat_template_errors_and_features() {
        let e =
            with_template("{{ raise_exception('no system role') }}").apply_chat_template("a", true);
        assert!(matches!(e, Err(Error::Model(m)) if m.contains("no system role")));
        let e = with_template("{% for %}").apply_chat_template("a", true);
        assert!(matches!(e, Err(Error::Model(m)) if m.contains("does not compile")));
        // A runaway loop runs out of fuel instead of hanging.
        let e = with_template(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        )
        .apply_chat_template("a", true);
        assert!(matches!(&e, Err(Error::Model(m)) if m.contains("fuel")), "{e:?}");
        // bos/eos variables and lstrip/trim of block tags.
        let t = with_template("{{ bos_token }}\n  {% if true %}\n{{ messages[0].content }}{{ eos_token }}\n{% endif %}\n");
        assert_eq!(t.apply_chat_template("m", false).unwrap(), "<|im_start|>\nm<|im_end|>\n");
        let mut t = tiny(None);
        t.chat_template = None;
        assert!(matches!(t.apply_chat_template("a", true), Err(Error::Model(_))));
    }

    #[test]
    fn unsupported_or_inconsistent_metadata_is_an_error() {
        let build = |w: &GgufWriter| {
            let g = Gguf::from_bytes(&w.to_bytes()).unwrap();
            match Tokenizer::from_gguf(&g) {
                Err(Error::Model(m)) => m,
                other => panic!("expected Error::Model, got {other:?}"),
            }
        };
        let mut w = tiny_writer(Some("smollm"));
        w.kv("tokenizer.ggml.model", MetaValue::Str("llama".into()));
        // Duplicate key → the reader rejects it; rebuild instead with a replaced value.
        assert!(Gguf::from_bytes(&w.to_bytes()).is_err());
        let replace = |key: &str, v: MetaValue| {
            let mut w = GgufWriter::new();
            let g = Gguf::from_bytes(&tiny_writer(Some("smollm")).to_bytes()).unwrap();
            for (k, old) in g.metadata_entries() {
                w.kv(k, if k == key { v.clone() } else { old.clone() });
            }
            w
        };
        assert!(build(&replace("tokenizer.ggml.model", MetaValue::Str("llama".into())))
            .contains("'llama'"));
        assert!(build(&replace("tokenizer.ggml.pre", MetaValue::Str("klingon".into())))
            .contains("klingon"));
        let m = build(&replace(
            "tokenizer.ggml.merges",
            MetaValue::Array(MetaArray::Str(vec!["Ġt".into()])),
        ));
        assert!(m.contains("merges[0]"), "{m}");
        let m = build(&replace(
            "tokenizer.ggml.merges",
            MetaValue::Array(MetaArray::Str(vec!["q z".into()])),
        ));
        assert!(m.contains("BPE"), "{m}");
        assert!(build(&replace("tokenizer.ggml.bos_token_id", MetaValue::U32(100000)))
            .contains("outside"));
        assert!(build(&replace(
            "tokenizer.ggml.token_type",
            MetaValue::Array(MetaArray::I32(vec![1]))
        ))
        .contains("token_type"));
        assert!(build(&replace("tokenizer.ggml.tokens", MetaValue::U32(3)))
            .contains("tokenizer.ggml.tokens"));
        let mut w = GgufWriter::new();
        w.kv("general.architecture", MetaValue::Str("llama".into()));
        assert!(build(&w).contains("tokenizer.ggml.model"));
    }

    #[test]
    fn split_regexes_of_other_pre_types() {
        // Llama 3 keeps up to three digits together; Qwen2 one.
        let t = tiny(Some("llama-bpe"));
        let pieces = |t: &Tokenizer, s: &str| -> Vec<String> {
            let ids = t.encode(s, false).unwrap();
            ids.iter().map(|&i| t.id_to_token(i).unwrap()).collect()
        };
        assert_eq!(pieces(&t, "12345").concat(), "12345");
        assert_eq!(pieces(&t, "12345")[0], "12"); // "123" | "45", and "1 2" merges inside "123"
        let q = tiny(Some("qwen2"));
        assert_eq!(pieces(&q, "12345"), ["1", "2", "3", "4", "5"]);
        assert_eq!(PreSplit::from_gguf_pre(None).unwrap(), PreSplit::Gpt2);
        assert_eq!(PreSplit::from_gguf_pre(Some("smollm")).unwrap(), PreSplit::DigitsThenGpt2);
    }

    #[test]
    fn hf_json_round_trip() {
        let t = tiny(Some("smollm"));
        let json = t.to_json().unwrap();
        let cfg = t.to_config_json().unwrap();
        let back = Tokenizer::from_hf_json(json.as_bytes(), Some(cfg.as_bytes())).unwrap();
        for s in ["<|im_start|>user\nthe 12 thé<|im_end|>", "x  1", " the  the", "<think>12"] {
            assert_eq!(back.encode(s, true).unwrap(), t.encode(s, true).unwrap(), "{s:?}");
        }
        assert_eq!(
            (back.bos_id(), back.eos_id(), back.eos_ids()),
            (Some(1), Some(2), &[0u32, 2][..])
        );
        assert_eq!(back.vocab_size(), t.vocab_size());
        assert_eq!(back.chat_template(), t.chat_template());
        assert_eq!(
            back.apply_chat_template("q", true).unwrap(),
            t.apply_chat_template("q", true).unwrap()
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
        assert_eq!(v["pre_tokenizer"]["pretokenizers"][1]["type"], "ByteLevel");
        assert_eq!(v["model"]["type"], "BPE");
        // Without a config there are no BOS/EOS ids, but end-of-turn specials still stop.
        let bare = Tokenizer::from_hf_json(json.as_bytes(), None).unwrap();
        assert_eq!((bare.bos_id(), bare.eos_ids()), (None, &[0u32, 2][..]));
        assert!(bare.encode("a", true).unwrap() == bare.encode("a", false).unwrap());
        // Errors: not JSON, a non-byte-level decoder, a BOS not in the vocabulary.
        assert!(matches!(Tokenizer::from_hf_json(b"{", None), Err(Error::Format(_))));
        let mut v2 = v.clone();
        v2["decoder"] = serde_json::json!({
            "type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true
        });
        let meta = serde_json::to_string(&v2).unwrap();
        match Tokenizer::from_hf_json(meta.as_bytes(), None) {
            Err(Error::Model(m)) => assert!(m.contains("Metaspace"), "{m}"),
            other => panic!("{other:?}"),
        }
        let bad = r#"{"bos_token": {"content": "<nope>"}}"#;
        assert!(matches!(
            Tokenizer::from_hf_json(json.as_bytes(), Some(bad.as_bytes())),
            Err(Error::Model(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn stream_decode_equals_decode_equals_hf(ids in proptest::collection::vec(0u32..265, 0..40)) {
            let t = tiny(Some("smollm"));
            let whole = t.decode(&ids).unwrap();
            let mut d = t.stream_decoder();
            let mut streamed = String::new();
            for &i in &ids {
                streamed.push_str(&d.push(i).unwrap());
            }
            streamed.push_str(&d.finish());
            prop_assert_eq!(&streamed, &whole);
            // Our byte table decodes exactly like the `tokenizers` ByteLevel decoder.
            prop_assert_eq!(&t.hf().decode(&ids, false).unwrap(), &whole);
        }

        #[test]
        fn any_text_round_trips(s in "\\PC*|[ \t\n0-9a-z<>|_]*") {
            let t = tiny(Some("smollm"));
            let ids = t.encode(&s, false).unwrap();
            prop_assert_eq!(t.decode(&ids).unwrap(), s);
        }
    }

    // ---- the real SmolLM2 tokenizer ---------------------------------------------------------

    fn smollm2(test: &str) -> Option<Tokenizer> {
        let path = smollm2_path(test)?;
        let g = Gguf::open(&path).unwrap();
        Some(Tokenizer::from_gguf(&g).unwrap())
    }

    /// Token ids of SmolLM2's original tokenizer (Digits + ByteLevel, as in its
    /// tokenizer.json, and llama.cpp's `smollm` pre-tokenizer), computed with the Python
    /// `tokenizers` 0.23 on the vocabulary transformers 5.25 reads from this GGUF. For every
    /// prompt here but "x  1", transformers' own GGUF tokenizer gives the same ids.
    const SMOLLM2_IDS: &[(&str, &[u32])] = &[
        ("The capital of France is", &[504, 3575, 282, 4649, 314]),
        ("Hello, world!", &[19556, 28, 905, 17]),
        (
            "In 2024, 12 apples cost $3.50.",
            &[788, 216, 34, 32, 34, 36, 28, 216, 33, 34, 13855, 1708, 1885, 35, 30, 37, 32, 30],
        ),
        ("x  1", &[104, 256, 33]),
        ("  leading spaces and trailing  ", &[216, 2899, 5600, 284, 35079, 256]),
        (
            "naïve café – “quotes” 😀👍🏽 中文 日本語",
            &[
                3546, 46494, 37366, 816, 619, 385, 2346, 573, 40303, 218, 10813, 235, 231, 10813,
                233, 138, 216, 28589, 29184, 17097, 241, 115, 40993, 179, 120, 248,
            ],
        ),
        ("<|im_start|>user\nHi<|im_end|>\n", &[1, 4093, 198, 26843, 2, 198]),
        (
            "def f(x):\n\treturn x**2  # square\n",
            &[1604, 275, 24, 104, 727, 198, 197, 5406, 1792, 828, 34, 216, 907, 5222, 198],
        ),
        ("3.14159", &[35, 30, 33, 36, 33, 37, 41]),
        ("a\r\nb\n\n\nc", &[81, 201, 198, 82, 1116, 198, 83]),
    ];

    #[test]
    fn smollm2_token_ids_match_the_reference() {
        let Some(t) = smollm2("smollm2_token_ids_match_the_reference") else { return };
        assert_eq!(t.vocab_size(), 49152);
        assert_eq!((t.bos_id(), t.eos_id()), (Some(1), Some(2)));
        assert_eq!(t.eos_ids(), &[0, 2]); // <|endoftext|>, <|im_end|>
        assert_eq!(t.id_to_token(2).as_deref(), Some("<|im_end|>"));
        assert!(!t.add_bos_by_default());
        // By hand from the vocabulary: The=504, Ġcapital=3575, Ġof=282, ĠFrance=4649, Ġis=314.
        for (tok, id) in
            [("The", 504), ("Ġcapital", 3575), ("Ġof", 282), ("ĠFrance", 4649), ("Ġis", 314)]
        {
            assert_eq!(t.token_to_id(tok), Some(id));
        }
        for (text, ids) in SMOLLM2_IDS {
            assert_eq!(t.encode(text, false).unwrap(), *ids, "{text:?}");
            assert_eq!(t.decode(ids).unwrap(), *text);
        }
        assert_eq!(t.encode("The capital of France is", true).unwrap()[0], 1);
    }

    #[test]
    fn smollm2_round_trips_and_chat_template() {
        let Some(t) = smollm2("smollm2_round_trips_and_chat_template") else { return };
        for s in [
            "",
            " ",
            "Hello world",
            "   many    spaces\t\ttabs\n\nnewlines  ",
            "Ünïcödé: ñ, ß, æ, ø, 漢字, かな, 한국어, עברית, العربية",
            "emoji 👩‍👩‍👧‍👦 🇫🇷 🏳️‍🌈 🤖",
            "digits 0123456789 1,234,567.89 -42 1e-5",
            "code: fn main() { println!(\"{}\", 1 + 2); }",
            "<|im_start|>system\n<|im_end|><|endoftext|>",
            "\u{0}\u{1}\u{7f}\u{200b}\u{feff}",
        ] {
            let ids = t.encode(s, false).unwrap();
            assert_eq!(t.decode(&ids).unwrap(), s, "{s:?}");
            let mut d = t.stream_decoder();
            let streamed: String = ids.iter().map(|&i| d.push(i).unwrap()).collect();
            assert_eq!(streamed + &d.finish(), s);
            assert_eq!(t.hf().decode(&ids, false).unwrap(), s);
        }
        let prompt = t.apply_chat_template("What is the capital of France?", true).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        // Ids of that prompt from the Python reference.
        assert_eq!(
            t.encode(&prompt, false).unwrap(),
            [
                1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018,
                411, 407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47,
                2, 198, 1, 520, 9531, 198
            ]
        );
    }

    #[test]
    fn smollm2_hf_json_export_round_trips() {
        let Some(t) = smollm2("smollm2_hf_json_export_round_trips") else { return };
        let json = t.to_json().unwrap();
        let cfg = t.to_config_json().unwrap();
        let back = Tokenizer::from_hf_json(json.as_bytes(), Some(cfg.as_bytes())).unwrap();
        for (text, ids) in SMOLLM2_IDS {
            assert_eq!(back.encode(text, false).unwrap(), *ids, "{text:?}");
        }
        assert_eq!(
            (back.bos_id(), back.eos_id(), back.eos_ids()),
            (Some(1), Some(2), &[0u32, 2][..])
        );
        assert_eq!(back.vocab_size(), 49152);
        assert_eq!(
            back.apply_chat_template("hi", true).unwrap(),
            t.apply_chat_template("hi", true).unwrap()
        );
    }
}
