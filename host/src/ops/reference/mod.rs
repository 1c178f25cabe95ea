//! Plain CPU versions of the model operations, in f32 on row-major slices: the oracle the GPU
//! operations are tested against, and the building blocks of the CPU model path.

pub mod attention;
