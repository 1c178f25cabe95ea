//! The model's GPU operations besides `linear`: each a method of [`Gpu`](crate::Gpu) over
//! device matrices, queued on the handle's stream, with its shapes checked on the host
//! first. [`reference`] holds the plain CPU version of each (f32), the oracle of the tests and
//! the building blocks of the CPU model path.

mod indices;
pub mod reference;

pub use indices::DeviceIndices;
