//! Element types the kernels accept: IEEE half (`f16`) and bfloat16 (`bf16`).

use half::{bf16, f16};

/// The element type of a matrix, known at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE 754 binary16.
    F16,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    Bf16,
}

impl Dtype {
    /// Lower-case name as used in kernel names and file headers (`"f16"`, `"bf16"`).
    pub const fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    /// Unit roundoff u = 2^-(p) of the format (p = stored mantissa bits + 1):
    /// the largest relative error of one rounding to nearest.
    pub const fn unit_roundoff(self) -> f64 {
        match self {
            Dtype::F16 => 1.0 / 2048.0, // 2^-11
            Dtype::Bf16 => 1.0 / 256.0, // 2^-8
        }
    }
}

/// A 16-bit floating-point element the Tensor Core kernels consume.
///
/// Sealed: implemented for [`half::f16`] and [`half::bf16`] only.
pub trait Element: Copy + Send + Sync + PartialEq + std::fmt::Debug + sealed::Sealed + 'static {
    /// The run-time tag of this type.
    const DTYPE: Dtype;
    /// Converts to f32 exactly.
    fn to_f32(self) -> f32;
    /// Rounds an f32 to this type (round to nearest even).
    fn from_f32(v: f32) -> Self;
    /// The raw 16 bits.
    fn to_bits(self) -> u16;
    /// From raw 16 bits.
    fn from_bits(bits: u16) -> Self;
}

impl Element for f16 {
    const DTYPE: Dtype = Dtype::F16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn to_bits(self) -> u16 {
        f16::to_bits(self)
    }
    fn from_bits(bits: u16) -> Self {
        f16::from_bits(bits)
    }
}

impl Element for bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_bits(self) -> u16 {
        bf16::to_bits(self)
    }
    fn from_bits(bits: u16) -> Self {
        bf16::from_bits(bits)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}
