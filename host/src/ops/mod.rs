//! The model's GPU operations besides `linear`: each a method of [`Gpu`](crate::Gpu) over
//! device matrices, queued on the handle's stream, with its shapes checked on the host
//! first. [`reference`] holds the plain CPU version of each (f32), the oracle of the tests and
//! the building blocks of the CPU model path.

mod attention;
mod indices;
mod kv_cache;
pub mod reference;

pub use attention::AttentionOptions;
pub use indices::DeviceIndices;
pub use kv_cache::{KvCache, KvLayout};
