//! End-to-end model inference: checkpoint readers and tokenizers (CPU side).

pub mod gguf;
pub mod tokenizer;
