//! End-to-end inference: a checkpoint in, tokens out.
//!
//! Data flows config → weights (a [`weights::TensorSource`] per checkpoint format, loaded onto
//! a [`backend::Backend`]) → [`transformer::Transformer::forward`] → [`generate::generate`].
//! The transformer is written once over the backend trait; the GPU backend runs this crate's
//! kernels, the CPU backend the plain reference operations (the oracle of the GPU path).
//! Checkpoint readers: [`gguf`] (llama.cpp files, dequantized), [`load`] (the sources);
//! [`tokenizer`] (byte-level BPE from GGUF metadata or `tokenizer.json`).

pub mod backend;
pub mod config;
pub mod generate;
pub mod gguf;
pub mod load;
pub mod perplexity;
pub mod prune;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

pub use backend::{Backend, CpuBackend, GpuBackend, LinearFormat};
pub use config::{Arch, Config, RopeStyle};
pub use generate::{generate, Output, Request};
pub use transformer::{FormatChoice, Transformer, WeightPlan};
