//! Plain CPU versions of the model operations, in f32 on row-major slices: the oracle the GPU
//! operations are tested against, and the building blocks of the CPU model path.
//!
//! Conventions: a matrix is a row-major `&[f32]` of `rows · cols` values (no padding), its
//! column count given by a parameter or by the length of a per-column parameter (a norm's
//! weight, a bias); index arrays are `&[u32]`. Slices whose lengths do not fit together are
//! programming errors and panic (documented per function, like `copy_from_slice`); values out
//! of range (parameters, token ids) follow each function's contract. Nothing allocates except
//! where a function says so, and then once per call.
//!
//! Precision: reductions (norms) are summed in f64; element-wise results are the f32 values
//! the kernels compute before their final rounding to f16/bf16: the same IEEE operations in the
//! same order, with the transcendental functions (exp, SiLU, RoPE's frequencies and sin/cos,
//! the sampler's weights) taken from the one implementation both compile
//! (`gpu/src/numerics.rs`), so element-wise operations, RoPE, gathers, argmax and sampling agree
//! with the GPU bit for bit once their result is rounded to the GPU's type.

pub mod attention;
pub mod elementwise;
pub mod embed;
pub mod norm;
pub mod rope;
pub mod sample;
