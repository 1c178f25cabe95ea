//! Prints a GGUF model's token ids for prompts, one JSON object per line, in the format of
//! `benches/reference/hf_tokenize.py` (source "sparse_tc"), so the two can be diffed.
//!
//! `cargo run --release --example tokenize -- [MODEL.gguf] [PROMPT…]`. The model defaults to
//! `$SPARSE_TC_SMOLLM2` or `.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf` (see
//! `.ci/fetch-smollm2`); the prompts default to the list the Python script uses.

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;
use sparse_tc::model::gguf::Gguf;
use sparse_tc::model::tokenizer::Tokenizer;

const DEFAULT_PROMPTS: &[&str] = &[
    "The capital of France is",
    "Hello, world!",
    "In 2024, 12 apples cost $3.50.",
    "x  1",
    "  leading spaces and trailing  ",
    "naïve café – “quotes” 😀👍🏽 中文 日本語",
    "<|im_start|>user\nHi<|im_end|>\n",
    "def f(x):\n\treturn x**2  # square\n",
    "3.14159",
    "a\r\nb\n\n\nc",
];

/// A GGUF model's token ids for prompts, one JSON object per line.
#[derive(Parser)]
struct Args {
    /// The model (a `.gguf` file) followed by the prompts; without a `.gguf` first, the model
    /// is `$SPARSE_TC_SMOLLM2` or `.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf`, and without
    /// prompts the default list is used.
    #[arg(value_name = "[MODEL.gguf] PROMPT")]
    args: Vec<String>,
}

fn main() -> Result<()> {
    let mut args = Args::parse().args;
    let path = if args.first().is_some_and(|a| a.ends_with(".gguf")) {
        args.remove(0)
    } else {
        std::env::var("SPARSE_TC_SMOLLM2").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
                .to_string()
        })
    };
    let g = Gguf::open(path.as_ref()).with_context(|| format!("opening {path}"))?;
    let tok = Tokenizer::from_gguf(&g)?;
    println!(
        "{}",
        json!({"source": "info", "bos": tok.bos_id(), "eos": tok.eos_id(), "eos_ids": tok.eos_ids(),
               "vocab": tok.vocab_size()})
    );
    let prompts: Vec<&str> =
        if args.is_empty() { DEFAULT_PROMPTS.to_vec() } else { args.iter().map(String::as_str).collect() };
    for p in prompts {
        println!("{}", json!({"source": "sparse_tc", "text": p, "ids": tok.encode(p, false)?}));
    }
    if tok.chat_template().is_some() {
        let text = tok.apply_chat_template("What is the capital of France?", true)?;
        println!("{}", json!({"source": "chat-template", "text": text, "ids": tok.encode(&text, false)?}));
    }
    Ok(())
}
