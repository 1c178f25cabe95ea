//! Checkpoint loaders, each a [`TensorSource`](super::weights::TensorSource): Hugging Face
//! safetensors (and the export to that layout), GGUF, and synthetic presets.

pub mod safetensors;
pub mod synthetic;
pub mod gguf;
