//! GGUF checkpoint reader (versions 2 and 3) with dequantization to f32, and a small writer.
//!
//! # The format
//!
//! GGUF is llama.cpp's single-file checkpoint format. Everything is little-endian:
//!
//! ```text
//! header        magic "GGUF" (4 bytes), version u32, tensor_count u64, kv_count u64
//! metadata      kv_count × { key: string, value_type: u32, value }
//! tensor infos  tensor_count × { name: string, n_dims: u32, ne: n_dims × u64,
//!                                ggml_type: u32, offset: u64 }
//! padding       zeros up to a multiple of `general.alignment` (default 32)
//! tensor data   each tensor at data_start + offset; offsets are multiples of the alignment
//! ```
//!
//! A string is a u64 byte length followed by that many bytes of UTF-8 (no terminator). A value
//! is one of the [`MetaValue`] types; an array is `{ element_type: u32, count: u64, elements }`.
//! Version 1 (u32 counts and lengths) is obsolete and rejected, as are big-endian files (their
//! version field reads as a huge number).
//!
//! `ne` lists the dimensions fastest-varying first: a PyTorch `[out, in]` weight has
//! `ne = [in, out]`. [`TensorInfo::dims`] gives them the other way round (row-major, like
//! PyTorch and safetensors); [`TensorInfo::ggml_ne`] keeps the file's order. Rows of a
//! quantized tensor are whole blocks: `ne[0]` is a multiple of the type's block size.
//!
//! # Validation
//!
//! [`Gguf::open`] / [`Gguf::from_bytes`] check everything before any tensor is touched:
//! magic, version, every count and length against the bytes left in the file *before*
//! allocating for it (a corrupt count cannot trigger a huge allocation), every offset and size
//! with checked arithmetic, UTF-8 of keys and strings, unique keys and tensor names, known
//! ggml types, `ne[0]` divisible by the block size, data offsets aligned and inside the file,
//! and no two tensors' bytes overlapping. Each failure is an [`Error::Format`] that says what
//! is wrong and where; nothing here panics on any input.
//!
//! # Why a parser of our own
//!
//! The crates.io candidates were checked (2026-12): `ggus` 0.5 reads strings through
//! `Layout::array(len).unwrap()`, which panics on a corrupt length, and reads through raw
//! pointer casts; `gguf` 0.1 is an unmaintained nom parser without tensor validation;
//! `gguf-rs-lib` 0.3 is a 19k-line read/write/async library that copies through
//! `std::io::Read` rather than slicing a memory map. GGUF itself is a few hundred lines to
//! parse, so this module parses it directly over a byte slice (the memory map), with checked
//! arithmetic throughout, and dequantizes with its own code following ggml's block layouts
//! (`ggml-common.h`, `ggml-quants.c`).

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::Path;

use half::{bf16, f16};

use crate::error::{Error, Result};

/// The four magic bytes at the start of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`: tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;
/// How deeply arrays may nest inside metadata values (llama.cpp writes none nested).
const MAX_ARRAY_DEPTH: usize = 4;

fn format_err(msg: impl Into<String>) -> Error {
    Error::Format(format!("GGUF: {}", msg.into()))
}

fn model_err(msg: impl Into<String>) -> Error {
    Error::Model(msg.into())
}

// ---------------------------------------------------------------------------------------------
// ggml tensor types
// ---------------------------------------------------------------------------------------------

/// A ggml tensor element type, as stored in GGUF tensor infos (`enum ggml_type`).
///
/// Every type ggml can put in a file is known here with its block size and bytes per block, so
/// the reader validates sizes of all of them; [`dequantize`] supports a subset (see there).
#[allow(non_camel_case_types, missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

impl GgmlType {
    /// The type for a `ggml_type` id; ids ggml removed or never assigned are an error.
    pub fn from_id(id: u32) -> Result<GgmlType> {
        use GgmlType::*;
        Ok(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            4 | 5 | 31..=33 | 36..=38 => {
                return Err(format_err(format!(
                    "ggml type id {id} was removed from ggml (Q4_2/Q4_3 or a repacked layout)"
                )))
            }
            _ => return Err(format_err(format!("unknown ggml type id {id}"))),
        })
    }

    /// The `ggml_type` id written in files.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            IQ2_XXS => 16,
            IQ2_XS => 17,
            IQ3_XXS => 18,
            IQ1_S => 19,
            IQ4_NL => 20,
            IQ3_S => 21,
            IQ2_S => 22,
            IQ4_XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            IQ1_M => 29,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            MXFP4 => 39,
        }
    }

    /// ggml's name for the type (`ggml_type_name`), e.g. `"Q4_1"`.
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
        }
    }

    /// Elements per block (`ggml_blck_size`): 1 for plain types, 32 or 256 for quantized ones.
    pub fn block_size(self) -> u64 {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | F64 | I8 | I16 | I32 | I64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S
            | IQ3_S | IQ2_S | IQ4_XS | IQ1_M | TQ1_0 | TQ2_0 => 256,
        }
    }

    /// Bytes per block (`ggml_type_size`), from the block structs in ggml-common.h.
    pub fn type_size(self) -> u64 {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            F64 => 8,
            I8 => 1,
            I16 => 2,
            I32 => 4,
            I64 => 8,
            Q4_0 => 18,    // f16 d, 16 bytes of nibbles
            Q4_1 => 20,    // f16 d, f16 m, 16 bytes of nibbles
            Q5_0 => 22,    // f16 d, 4 bytes of high bits, 16 bytes of nibbles
            Q5_1 => 24,    // f16 d, f16 m, 4 + 16 bytes
            Q8_0 => 34,    // f16 d, 32 × i8
            Q8_1 => 36,    // f16 d, f16 s, 32 × i8
            IQ4_NL => 18,  // f16 d, 16 bytes
            MXFP4 => 17,   // e8m0 exponent, 16 bytes
            Q2_K => 84,    // 16 scales, 64 quants, f16 d, f16 dmin
            Q3_K => 110,   // 32 hmask, 64 quants, 12 scales, f16 d
            Q4_K => 144,   // f16 d, f16 dmin, 12 scales, 128 quants
            Q5_K => 176,   // f16 d, f16 dmin, 12 scales, 32 high bits, 128 quants
            Q6_K => 210,   // 128 ql, 64 qh, 16 i8 scales, f16 d
            Q8_K => 292,   // f32 d, 256 × i8, 16 × i16 sums
            IQ2_XXS => 66, // f16 d, 32 × u16
            IQ2_XS => 74,  // f16 d, 32 × u16, 8 scales
            IQ3_XXS => 98, // f16 d, 96 bytes
            IQ1_S => 50,   // f16 d, 32 qs, 8 × u16 qh
            IQ3_S => 110,  // f16 d, 64 qs, 8 qh, 32 signs, 4 scales
            IQ2_S => 82,   // f16 d, 64 qs, 8 qh, 8 scales
            IQ4_XS => 136, // f16 d, u16 scales_h, 4 scales_l, 128 qs
            IQ1_M => 56,   // 32 qs, 16 qh, 8 scales
            TQ1_0 => 54,   // 48 qs, 4 qh, f16 d
            TQ2_0 => 66,   // 64 qs, f16 d
        }
    }

    /// Whether [`dequantize`] can convert this type to f32.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata values
// ---------------------------------------------------------------------------------------------

/// One metadata value (`gguf_metadata_value_type`; the id is in the comment).
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum MetaValue {
    U8(u8),           // 0
    I8(i8),           // 1
    U16(u16),         // 2
    I16(i16),         // 3
    U32(u32),         // 4
    I32(i32),         // 5
    F32(f32),         // 6
    Bool(bool),       // 7: one byte, 0 or 1
    Str(String),      // 8
    Array(MetaArray), // 9
    U64(u64),         // 10
    I64(i64),         // 11
    F64(f64),         // 12
}

/// A metadata array. Stored by element type, so a 49152-entry `i32` array is one `Vec<i32>`.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    /// Nested arrays (allowed by the spec; llama.cpp writes none).
    Array(Vec<MetaArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// Value type ids (`gguf_metadata_value_type`).
mod vt {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STR: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

fn value_type_name(t: u32) -> &'static str {
    match t {
        vt::U8 => "u8",
        vt::I8 => "i8",
        vt::U16 => "u16",
        vt::I16 => "i16",
        vt::U32 => "u32",
        vt::I32 => "i32",
        vt::F32 => "f32",
        vt::BOOL => "bool",
        vt::STR => "string",
        vt::ARRAY => "array",
        vt::U64 => "u64",
        vt::I64 => "i64",
        vt::F64 => "f64",
        _ => "unknown",
    }
}

/// The fewest bytes one element of value type `t` takes in the file (strings: the length
/// field; arrays: type and count fields), used to bound counts before allocating.
fn min_encoded_size(t: u32) -> Option<u64> {
    Some(match t {
        vt::U8 | vt::I8 | vt::BOOL => 1,
        vt::U16 | vt::I16 => 2,
        vt::U32 | vt::I32 | vt::F32 => 4,
        vt::U64 | vt::I64 | vt::F64 | vt::STR => 8,
        vt::ARRAY => 12,
        _ => return None,
    })
}

impl MetaValue {
    /// The GGUF value type id.
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => vt::U8,
            MetaValue::I8(_) => vt::I8,
            MetaValue::U16(_) => vt::U16,
            MetaValue::I16(_) => vt::I16,
            MetaValue::U32(_) => vt::U32,
            MetaValue::I32(_) => vt::I32,
            MetaValue::F32(_) => vt::F32,
            MetaValue::Bool(_) => vt::BOOL,
            MetaValue::Str(_) => vt::STR,
            MetaValue::Array(_) => vt::ARRAY,
            MetaValue::U64(_) => vt::U64,
            MetaValue::I64(_) => vt::I64,
            MetaValue::F64(_) => vt::F64,
        }
    }

    /// A short description of the type for messages, e.g. `"u32"` or `"array of string"`.
    pub fn type_name(&self) -> String {
        match self {
            MetaValue::Array(a) => format!("array of {}", value_type_name(a.element_type_id())),
            v => value_type_name(v.type_id()).to_string(),
        }
    }

    /// Any integer value that is non-negative, as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// An f32 or f64 value as f32 (f64 rounded).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetaValue::F32(v) => Some(v),
            MetaValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// The string of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

impl MetaArray {
    /// The GGUF value type id of the elements.
    pub fn element_type_id(&self) -> u32 {
        match self {
            MetaArray::U8(_) => vt::U8,
            MetaArray::I8(_) => vt::I8,
            MetaArray::U16(_) => vt::U16,
            MetaArray::I16(_) => vt::I16,
            MetaArray::U32(_) => vt::U32,
            MetaArray::I32(_) => vt::I32,
            MetaArray::F32(_) => vt::F32,
            MetaArray::Bool(_) => vt::BOOL,
            MetaArray::Str(_) => vt::STR,
            MetaArray::Array(_) => vt::ARRAY,
            MetaArray::U64(_) => vt::U64,
            MetaArray::I64(_) => vt::I64,
            MetaArray::F64(_) => vt::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::Str(v) => v.len(),
            MetaArray::Array(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor infos
// ---------------------------------------------------------------------------------------------

/// Where a tensor is and what it holds. All sizes were checked against the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    name: String,
    ne: Vec<u64>,
    ggml_type: GgmlType,
    /// Absolute byte offset in the file.
    offset: u64,
    n_bytes: u64,
    n_elements: u64,
}

impl TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions in row-major order (slowest first, like PyTorch): GGUF's `ne` reversed.
    /// A linear layer's weight is `[out_features, in_features]`.
    pub fn dims(&self) -> Vec<u64> {
        self.ne.iter().rev().copied().collect()
    }

    /// Dimensions as the file stores them (`ne`, fastest first).
    pub fn ggml_ne(&self) -> &[u64] {
        &self.ne
    }

    /// The element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Absolute byte offset of the tensor's data in the file.
    pub fn file_offset(&self) -> u64 {
        self.offset
    }

    /// Size of the tensor's data in bytes.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Number of elements (product of the dimensions).
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn bytes(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let n_usize =
            usize::try_from(n).ok().filter(|&n| n <= self.remaining()).ok_or_else(|| {
                format_err(format!(
                "{} needs {n} bytes at offset {} but the file has {} left (truncated or corrupt)",
                what(),
                self.pos,
                self.remaining()
            ))
            })?;
        let s = &self.buf[self.pos..self.pos + n_usize];
        self.pos += n_usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.bytes(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let bytes = self.bytes(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| format_err(format!("{} is not valid UTF-8 ({e})", what())))
    }

    /// Checks that `count` elements of at least `min_size` bytes each can still fit.
    fn check_count(&self, count: u64, min_size: u64, what: &dyn Fn() -> String) -> Result<usize> {
        let need = count.checked_mul(min_size);
        match need {
            Some(need) if need <= self.remaining() as u64 => Ok(count as usize),
            _ => Err(format_err(format!(
                "{} says {count} elements of at least {min_size} bytes, but only {} bytes are \
                 left in the file at offset {}",
                what(),
                self.remaining(),
                self.pos
            ))),
        }
    }
}

fn read_scalar_vec<T, const N: usize>(
    c: &mut Cursor<'_>,
    n: usize,
    conv: fn([u8; N]) -> T,
    what: &dyn Fn() -> String,
) -> Result<Vec<T>> {
    let bytes = c.bytes((n as u64) * N as u64, what)?;
    Ok(bytes
        .chunks_exact(N)
        .map(|ch| {
            let mut a = [0u8; N];
            a.copy_from_slice(ch);
            conv(a)
        })
        .collect())
}

fn read_bool(b: u8, what: &dyn Fn() -> String) -> Result<bool> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(format_err(format!("{} is a bool with byte value {v} (must be 0 or 1)", what()))),
    }
}

fn read_value(
    c: &mut Cursor<'_>,
    t: u32,
    depth: usize,
    what: &dyn Fn() -> String,
) -> Result<MetaValue> {
    Ok(match t {
        vt::U8 => MetaValue::U8(c.array::<1>(what)?[0]),
        vt::I8 => MetaValue::I8(c.array::<1>(what)?[0] as i8),
        vt::U16 => MetaValue::U16(u16::from_le_bytes(c.array(what)?)),
        vt::I16 => MetaValue::I16(i16::from_le_bytes(c.array(what)?)),
        vt::U32 => MetaValue::U32(u32::from_le_bytes(c.array(what)?)),
        vt::I32 => MetaValue::I32(i32::from_le_bytes(c.array(what)?)),
        vt::F32 => MetaValue::F32(f32::from_le_bytes(c.array(what)?)),
        vt::BOOL => MetaValue::Bool(read_bool(c.array::<1>(what)?[0], what)?),
        vt::STR => MetaValue::Str(c.string(what)?),
        vt::ARRAY => MetaValue::Array(read_array(c, depth + 1, what)?),
        vt::U64 => MetaValue::U64(u64::from_le_bytes(c.array(what)?)),
        vt::I64 => MetaValue::I64(i64::from_le_bytes(c.array(what)?)),
        vt::F64 => MetaValue::F64(f64::from_le_bytes(c.array(what)?)),
        other => return Err(format_err(format!("{} has unknown value type id {other}", what()))),
    })
}

fn read_array(c: &mut Cursor<'_>, depth: usize, what: &dyn Fn() -> String) -> Result<MetaArray> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(format_err(format!(
            "{} nests arrays deeper than {MAX_ARRAY_DEPTH} levels",
            what()
        )));
    }
    let et = c.u32(&|| format!("element type of {}", what()))?;
    let min = min_encoded_size(et).ok_or_else(|| {
        format_err(format!("{} is an array of unknown value type id {et}", what()))
    })?;
    let count = c.u64(&|| format!("element count of {}", what()))?;
    let n = c.check_count(count, min, &|| format!("array {}", what()))?;
    let elem = |i: usize| move || format!("element {i} of {}", what());
    Ok(match et {
        vt::U8 => MetaArray::U8(c.bytes(n as u64, what)?.to_vec()),
        vt::I8 => MetaArray::I8(c.bytes(n as u64, what)?.iter().map(|&b| b as i8).collect()),
        vt::U16 => MetaArray::U16(read_scalar_vec(c, n, u16::from_le_bytes, what)?),
        vt::I16 => MetaArray::I16(read_scalar_vec(c, n, i16::from_le_bytes, what)?),
        vt::U32 => MetaArray::U32(read_scalar_vec(c, n, u32::from_le_bytes, what)?),
        vt::I32 => MetaArray::I32(read_scalar_vec(c, n, i32::from_le_bytes, what)?),
        vt::F32 => MetaArray::F32(read_scalar_vec(c, n, f32::from_le_bytes, what)?),
        vt::U64 => MetaArray::U64(read_scalar_vec(c, n, u64::from_le_bytes, what)?),
        vt::I64 => MetaArray::I64(read_scalar_vec(c, n, i64::from_le_bytes, what)?),
        vt::F64 => MetaArray::F64(read_scalar_vec(c, n, f64::from_le_bytes, what)?),
        vt::BOOL => {
            let bytes = c.bytes(n as u64, what)?;
            let mut v = Vec::with_capacity(n);
            for (i, &b) in bytes.iter().enumerate() {
                v.push(read_bool(b, &elem(i))?);
            }
            MetaArray::Bool(v)
        }
        vt::STR => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(c.string(&elem(i))?);
            }
            MetaArray::Str(v)
        }
        vt::ARRAY => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(read_array(c, depth + 1, &elem(i))?);
            }
            MetaArray::Array(v)
        }
        // min_encoded_size rejected every other id above.
        other => return Err(format_err(format!("{} has unknown element type id {other}", what()))),
    })
}

/// The bytes of an opened file: a read-only memory map, or an owned copy.
enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A validated GGUF file: metadata, tensor infos and (memory-mapped) tensor data.
///
/// ```no_run
/// # fn main() -> sparse_tc::Result<()> {
/// use sparse_tc::model::gguf::Gguf;
/// let g = Gguf::open("model.gguf".as_ref())?;
/// let layers = g.get_u64(&format!("{}.block_count", g.architecture()?))?;
/// let emb = g.tensor_f32("token_embd.weight")?;   // dequantized, row-major [vocab, hidden]
/// # Ok(()) }
/// ```
pub struct Gguf {
    storage: Storage,
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("bytes", &self.storage.bytes().len())
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Parsed {
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

fn parse(buf: &[u8]) -> Result<Parsed> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.array::<4>(&|| "magic".to_string())?;
    if magic != MAGIC {
        return Err(format_err(format!(
            "bad magic {magic:02x?} (expected \"GGUF\" = {MAGIC:02x?}): not a GGUF file"
        )));
    }
    let version = c.u32(&|| "version".to_string())?;
    match version {
        2 | 3 => {}
        1 => return Err(format_err("version 1 (32-bit counts) is obsolete and not supported")),
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(format_err(format!(
            "version field {v:#x} is a byte-swapped {}: big-endian GGUF files are not supported",
            v.swap_bytes()
        )))
        }
        v => return Err(format_err(format!("unsupported version {v} (supported: 2, 3)"))),
    }
    let tensor_count = c.u64(&|| "tensor count".to_string())?;
    let kv_count = c.u64(&|| "metadata key/value count".to_string())?;
    // Smallest metadata entry: key length (8) + value type (4) + a one-byte value.
    let n_kv = c.check_count(kv_count, 13, &|| "the header's metadata count".to_string())?;
    // Smallest tensor info: name length (8) + n_dims (4) + type (4) + offset (8).
    let n_tensors = c.check_count(tensor_count, 24, &|| "the header's tensor count".to_string())?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut meta_index = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.string(&|| format!("key of metadata entry {i}"))?;
        let what = || format!("metadata value '{key}'");
        let t = c.u32(&|| format!("value type of metadata '{key}'"))?;
        let value = read_value(&mut c, t, 0, &what)?;
        if meta_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(format_err(format!("metadata key '{key}' appears twice")));
        }
        metadata.push((key, value));
    }

    let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => {
                return Err(format_err(format!(
                    "general.alignment is {v:?}; it must be a power-of-two integer"
                )))
            }
        },
    };

    let mut infos = Vec::with_capacity(n_tensors);
    let mut tensor_index = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor info {i}"))?;
        let what = |field: &str| format!("{field} of tensor '{name}'");
        let n_dims = c.u32(&|| what("n_dims"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(format_err(format!(
                "tensor '{name}' has {n_dims} dimensions (ggml allows at most {MAX_DIMS})"
            )));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let v = c.u64(&|| what(&format!("ne[{d}]")))?;
            if v > i64::MAX as u64 {
                return Err(format_err(format!("tensor '{name}' has ne[{d}] = {v} (> i64::MAX)")));
            }
            ne.push(v);
        }
        let type_id = c.u32(&|| what("type"))?;
        let ggml_type = GgmlType::from_id(type_id)
            .map_err(|e| format_err(format!("tensor '{name}': {}", strip_prefix(&e))))?;
        let rel_offset = c.u64(&|| what("offset"))?;
        let n_elements =
            ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
                format_err(format!("tensor '{name}' has dimensions {ne:?} whose product overflows"))
            })?;
        let block = ggml_type.block_size();
        let row = ne.first().copied().unwrap_or(1);
        if row % block != 0 {
            return Err(format_err(format!(
                "tensor '{name}' ({ggml_type}) has rows of {row} elements, not a multiple of \
                 the block size {block}"
            )));
        }
        let n_bytes = (n_elements / block)
            .checked_mul(ggml_type.type_size())
            .ok_or_else(|| format_err(format!("tensor '{name}' byte size overflows")))?;
        if rel_offset % alignment != 0 {
            return Err(format_err(format!(
                "tensor '{name}' data offset {rel_offset} is not a multiple of the alignment \
                 {alignment}"
            )));
        }
        if tensor_index.insert(name.clone(), infos.len()).is_some() {
            return Err(format_err(format!("tensor name '{name}' appears twice")));
        }
        infos.push((name, ne, ggml_type, rel_offset, n_bytes, n_elements));
    }

    let infos_end = c.pos as u64;
    let data_start = infos_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| format_err("data section start overflows"))?;
    let file_len = buf.len() as u64;
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, ne, ggml_type, rel, n_bytes, n_elements) in infos {
        let start = data_start.checked_add(rel);
        let end = start.and_then(|s| s.checked_add(n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => {
                tensors.push(TensorInfo { name, ne, ggml_type, offset: start, n_bytes, n_elements })
            }
            _ => {
                return Err(format_err(format!(
                    "tensor '{name}' data (offset {rel} + {n_bytes} bytes after the data start \
                     {data_start}) lies beyond the end of the file ({file_len} bytes)"
                )))
            }
        }
    }

    // No two tensors may share bytes.
    let mut order: Vec<usize> = (0..tensors.len()).filter(|&i| tensors[i].n_bytes > 0).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if a.offset + a.n_bytes > b.offset {
            return Err(format_err(format!(
                "tensors '{}' (bytes {}..{}) and '{}' (from byte {}) overlap",
                a.name,
                a.offset,
                a.offset + a.n_bytes,
                b.name,
                b.offset
            )));
        }
    }

    Ok(Parsed { version, alignment, data_start, metadata, meta_index, tensors, tensor_index })
}

/// The message of an error without the variant's display prefix (for re-wrapping).
fn strip_prefix(e: &Error) -> String {
    match e {
        Error::Format(m) => m.strip_prefix("GGUF: ").unwrap_or(m).to_string(),
        other => other.to_string(),
    }
}

impl Gguf {
    /// Memory-maps and validates a GGUF file (see the module docs for what is checked).
    ///
    /// The map is read-only; like every memory-mapped reader, this assumes no other process
    /// truncates or rewrites the file while the `Gguf` is alive.
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = File::open(path)?;
        // SAFETY: the map is read-only and private to this value; the file is not modified by
        // this process. Concurrent truncation by another process is outside our control (the
        // usual caveat of memory-mapped files, documented above).
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let parsed = parse(&map).map_err(|e| match e {
            Error::Format(m) => Error::Format(format!("{m} [{}]", path.display())),
            other => other,
        })?;
        Ok(Gguf::from_parsed(Storage::Mmap(map), parsed))
    }

    /// Validates a GGUF image in memory (copies it). Same checks as [`Gguf::open`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Gguf> {
        let parsed = parse(bytes)?;
        Ok(Gguf::from_parsed(Storage::Owned(bytes.to_vec()), parsed))
    }

    fn from_parsed(storage: Storage, p: Parsed) -> Gguf {
        Gguf {
            storage,
            version: p.version,
            alignment: p.alignment,
            data_start: p.data_start,
            metadata: p.metadata,
            meta_index: p.meta_index,
            tensors: p.tensors,
            tensor_index: p.tensor_index,
        }
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The tensor data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where the tensor data section starts.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The value of a metadata key.
    pub fn metadata(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All metadata in file order.
    pub fn metadata_entries(&self) -> impl Iterator<Item = (&str, &MetaValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn require(&self, key: &str) -> Result<&MetaValue> {
        self.metadata(key).ok_or_else(|| model_err(format!("GGUF metadata key '{key}' is missing")))
    }

    fn wrong_type(key: &str, v: &MetaValue, want: &str) -> Error {
        model_err(format!("GGUF metadata key '{key}' is {} (expected {want})", v.type_name()))
    }

    /// A non-negative integer of any width.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| Self::wrong_type(key, v, "a non-negative integer"))
    }

    /// A non-negative integer that fits in `usize`.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.get_u64(key)?;
        usize::try_from(v)
            .map_err(|_| model_err(format!("GGUF metadata '{key}' = {v} is too large")))
    }

    /// An f32 (or f64, rounded to f32).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f32().ok_or_else(|| Self::wrong_type(key, v, "a float"))
    }

    /// A bool.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| Self::wrong_type(key, v, "a bool"))
    }

    /// A string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Self::wrong_type(key, v, "a string"))
    }

    fn get_array(&self, key: &str) -> Result<&MetaArray> {
        match self.require(key)? {
            MetaValue::Array(a) => Ok(a),
            v => Err(Self::wrong_type(key, v, "an array")),
        }
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        match self.get_array(key)? {
            MetaArray::Str(v) => Ok(v),
            a => Err(Self::wrong_type(key, &MetaValue::Array(a.clone()), "an array of string")),
        }
    }

    /// An array of i32 (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        match self.get_array(key)? {
            MetaArray::I32(v) => Ok(v),
            a => Err(Self::wrong_type(key, &MetaValue::Array(a.clone()), "an array of i32")),
        }
    }

    /// An array of f32 (e.g. `tokenizer.ggml.scores`).
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        match self.get_array(key)? {
            MetaArray::F32(v) => Ok(v),
            a => Err(Self::wrong_type(key, &MetaValue::Array(a.clone()), "an array of f32")),
        }
    }

    /// `general.architecture`, e.g. `"llama"`; model hyperparameters are under this prefix.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.iter()
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// The info of a tensor by name.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_info(name).ok_or_else(|| model_err(format!("GGUF has no tensor '{name}'")))
    }

    /// The raw (possibly quantized) bytes of a tensor, borrowed from the map.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.require_tensor(name)?;
        // Bounds were validated at open time; `get` keeps this panic-free regardless.
        let (start, end) = (t.offset as usize, (t.offset + t.n_bytes) as usize);
        self.storage
            .bytes()
            .get(start..end)
            .ok_or_else(|| format_err(format!("tensor '{name}' data is outside the file")))
    }

    /// A tensor dequantized to f32, row-major (see [`TensorInfo::dims`]). Supported types:
    /// F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; others are an
    /// [`Error::UnsupportedDtype`] naming the type.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.require_tensor(name)?;
        dequantize(t.ggml_type, self.tensor_bytes(name)?).map_err(|e| match e {
            Error::UnsupportedDtype(m) => Error::UnsupportedDtype(format!("tensor '{name}': {m}")),
            other => other,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantization
// ---------------------------------------------------------------------------------------------

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes `data` (whole blocks of `ty`) to f32, following ggml's reference
/// `dequantize_row_*` functions:
///
/// | type | block | layout and value |
/// |------|-------|------------------|
/// | F32 / F16 / BF16 | 1 | little-endian floats |
/// | Q8_0 | 32, 34 B | f16 `d`, 32 × i8 `q`: `x = d·q` |
/// | Q4_0 | 32, 18 B | f16 `d`, 16 bytes; low nibble of byte j is element j, high nibble element j+16: `x = d·(q−8)` |
/// | Q4_1 | 32, 20 B | f16 `d`, f16 `m`, nibbles as Q4_0: `x = d·q + m` |
/// | Q5_0 | 32, 22 B | f16 `d`, u32 `qh` (bit j = 5th bit of element j), nibbles as Q4_0: `x = d·(q−16)` |
/// | Q5_1 | 32, 24 B | f16 `d`, f16 `m`, `qh`, nibbles: `x = d·q + m` |
/// | Q4_K | 256, 144 B | f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales/mins for 8 sub-blocks of 32, 128 bytes of nibbles: `x = d·sc·q − dmin·m` |
/// | Q5_K | 256, 176 B | as Q4_K plus 32 bytes of 5th bits |
/// | Q6_K | 256, 210 B | 128 B low nibbles, 64 B high 2 bits, 16 × i8 scales (sub-blocks of 16), f16 `d`: `x = d·sc·(q−32)` |
///
/// A length that is not a whole number of blocks is an [`Error::Format`]; other types are an
/// [`Error::UnsupportedDtype`] naming the type.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>> {
    if !ty.can_dequantize() {
        return Err(Error::UnsupportedDtype(format!(
            "dequantizing ggml type {ty} is not implemented (supported: F32, F16, BF16, Q8_0, \
             Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)"
        )));
    }
    let bs = ty.type_size() as usize;
    if !data.len().is_multiple_of(bs) {
        return Err(format_err(format!(
            "{} bytes of {ty} data is not a whole number of {bs}-byte blocks",
            data.len()
        )));
    }
    let n = (data.len() / bs)
        .checked_mul(ty.block_size() as usize)
        .ok_or_else(|| format_err("element count overflows"))?;
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| {
        Error::InvalidArgument(format!("cannot allocate {n} f32 for dequantization"))
    })?;
    out.resize(n, 0.0);
    dequantize_into(ty, data, &mut out)?;
    Ok(out)
}

/// [`dequantize`] into a caller's buffer, which must hold exactly the data's element count.
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let bs = ty.type_size() as usize;
    let qk = ty.block_size() as usize;
    if !data.len().is_multiple_of(bs) || data.len() / bs * qk != out.len() {
        return Err(Error::Shape(format!(
            "{} bytes of {ty} hold {} elements, output has {}",
            data.len(),
            data.len() / bs * qk,
            out.len()
        )));
    }
    let blocks = data.chunks_exact(bs).zip(out.chunks_exact_mut(qk));
    match ty {
        GgmlType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (b, y) in blocks {
                y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
                    *yj = (q as i8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                for j in 0..16 {
                    y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
                    y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (b, y) in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                for j in 0..16 {
                    y[j] = (qs[j] & 0x0F) as f32 * d + m;
                    y[j + 16] = (qs[j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..22];
                for j in 0..16 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    y[j] = (((qs[j] & 0x0F) as u32 | h0) as i32 - 16) as f32 * d;
                    y[j + 16] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
                }
            }
        }
        GgmlType::Q5_1 => {
            for (b, y) in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let qs = &b[8..24];
                for j in 0..16 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    y[j] = ((qs[j] & 0x0F) as u32 | h0) as f32 * d + m;
                    y[j + 16] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
                }
            }
        }
        GgmlType::Q4_K => {
            for (b, y) in blocks {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                for (chunk, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                    let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    for l in 0..32 {
                        y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                        y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                }
            }
        }
        GgmlType::Q5_K => {
            for (b, y) in blocks {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qh = &b[16..48];
                let ql = &b[48..176];
                for (chunk, (q, y)) in ql.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                    let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
                    for l in 0..32 {
                        let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                        let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                        y[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - m1;
                        y[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (b, y) in blocks {
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let ql = &b[64 * half..64 * half + 64];
                    let qh = &b[128 + 32 * half..128 + 32 * half + 32];
                    let sc = &b[192 + 8 * half..192 + 8 * half + 8];
                    let y = &mut y[128 * half..128 * half + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
        other => {
            return Err(Error::UnsupportedDtype(format!(
                "dequantizing ggml type {other} is not implemented"
            )))
        }
    }
    Ok(())
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block (`get_scale_min_k4`):
/// sub-blocks 0..4 use the low 6 bits of bytes j and j+4; sub-blocks 4..8 take their low 4 bits
/// from byte j+4 and their top 2 bits from the spare top bits of bytes j−4 and j.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/// Builds GGUF v3 (or v2) images: metadata, tensor infos, aligned data. Used by the tests to
/// make small files, and to write tokenizer-only GGUFs.
///
/// The alignment is `general.alignment` when that key is set to an unsigned integer, else 32.
#[derive(Clone, Debug, Default)]
pub struct GgufWriter {
    version: Option<u32>,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    /// An empty version-3 file.
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Sets the version field (2 and 3 have the same layout).
    pub fn version(&mut self, v: u32) -> &mut Self {
        self.version = Some(v);
        self
    }

    /// Appends a metadata entry (duplicates are written as given, for tests of the reader).
    pub fn kv(&mut self, key: &str, value: MetaValue) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Appends a tensor with row-major `dims` and raw data, which must be exactly the size the
    /// type and dims imply.
    pub fn tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let ne: Vec<u64> = dims.iter().rev().copied().collect();
        let n = ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let size = n
            .filter(|n| {
                ne.first().copied().unwrap_or(1) % ty.block_size() == 0 && n % ty.block_size() == 0
            })
            .and_then(|n| (n / ty.block_size()).checked_mul(ty.type_size()));
        if size != Some(data.len() as u64) {
            return Err(Error::Shape(format!(
                "tensor '{name}': {} bytes given, {ty} {dims:?} needs {size:?}",
                data.len()
            )));
        }
        self.tensors.push((name.to_string(), ne, ty, data));
        Ok(self)
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .rev()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| a.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The file image.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.unwrap_or(3).to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_str(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            write_value(&mut out, v);
        }
        let align = self.alignment();
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (name, ne, ty, data) in &self.tensors {
            write_str(&mut out, name);
            out.extend_from_slice(&(ne.len() as u32).to_le_bytes());
            for d in ne {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).next_multiple_of(align);
        }
        let data_start = (out.len() as u64).next_multiple_of(align);
        out.resize(data_start as usize, 0);
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend_from_slice(data);
        }
        out
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::Str(s) => write_str(out, s),
        MetaValue::Array(a) => write_array(out, a),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn write_array(out: &mut Vec<u8>, a: &MetaArray) {
    out.extend_from_slice(&a.element_type_id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        MetaArray::U8(v) => out.extend_from_slice(v),
        MetaArray::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        MetaArray::U16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetaArray::I16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetaArray::U32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetaArray::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetaArray::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetaArray::Bool(v) => out.extend(v.iter().map(|&x| x as u8)),
        MetaArray::Str(v) => v.iter().for_each(|s| write_str(out, s)),
        MetaArray::Array(v) => v.iter().for_each(|a| write_array(out, a)),
        MetaArray::U64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetaArray::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetaArray::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
}

#[cfg(test)]
// Reference values are Python's shortest repr of f64 sums and f32 values, digit for digit.
#[allow(clippy::excessive_precision)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The SmolLM2 GGUF (`$SPARSE_TC_SMOLLM2`, else `.cache/models/…`, fetched by
    /// `.ci/fetch-smollm2`), or `None` after printing why `test` is skipped.
    pub(crate) fn smollm2_path(test: &str) -> Option<PathBuf> {
        let path = match std::env::var_os("SPARSE_TC_SMOLLM2") {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        };
        if path.is_file() {
            Some(path)
        } else {
            println!(
                "SKIPPED {test}: {} not found (run .ci/fetch-smollm2 or set SPARSE_TC_SMOLLM2)",
                path.display()
            );
            None
        }
    }

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    fn fmt_err(r: Result<Gguf>) -> String {
        match r {
            Err(Error::Format(m)) => m,
            Err(e) => panic!("expected Error::Format, got {e:?}"),
            Ok(g) => panic!("expected an error, parsed {g:?}"),
        }
    }

    // ---- dequantization of hand-made blocks -------------------------------------------------

    #[test]
    fn dequant_q8_0_block() {
        let mut b = h(0.5).to_vec();
        let q: Vec<i8> = (0..32).map(|j| (j as i8 - 16) * 8).collect(); // -128, -120, …, 120
        b.extend(q.iter().map(|&v| v as u8));
        let y = dequantize(GgmlType::Q8_0, &b).unwrap();
        assert_eq!(y.len(), 32);
        assert_eq!(y[0], -64.0);
        assert_eq!(y[1], -60.0);
        assert_eq!(y[16], 0.0);
        assert_eq!(y[31], 60.0);
    }

    #[test]
    fn dequant_q4_0_block_nibble_order() {
        // Byte j holds element j (low nibble) and element j+16 (high nibble).
        let mut b = h(2.0).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_0, &b).unwrap();
        // x = d·(q − 8)
        let want: Vec<f32> =
            [-16., -14., -12., -10., -8., -6., -4., -2., 0., 2., 4., 6., 8., 10., 12., 14.]
                .iter()
                .chain(
                    [14., 12., 10., 8., 6., 4., 2., 0., -2., -4., -6., -8., -10., -12., -14., -16.]
                        .iter(),
                )
                .copied()
                .collect();
        assert_eq!(y, want);
    }

    #[test]
    fn dequant_q4_1_block() {
        let mut b = h(0.25).to_vec();
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| j | (3 << 4)));
        let y = dequantize(GgmlType::Q4_1, &b).unwrap();
        // x = d·q + m: low nibbles 0..15 → -1, -0.75, …, 2.75; high nibbles all 3 → -0.25.
        for j in 0..16 {
            assert_eq!(y[j], 0.25 * j as f32 - 1.0, "element {j}");
            assert_eq!(y[j + 16], -0.25, "element {}", j + 16);
        }
    }

    #[test]
    fn dequant_q5_0_and_q5_1_fifth_bit() {
        // qh bit j is the 5th bit of element j (j < 32). Set bits 0, 1 (low half) and 16, 31.
        let qh: u32 = (1 << 0) | (1 << 1) | (1 << 16) | (1 << 31);
        let nibbles: Vec<u8> = (0..16u8).map(|j| (j & 0xF) | (0xF << 4)).collect();
        let mut b = h(1.0).to_vec();
        b.extend(qh.to_le_bytes());
        b.extend(&nibbles);
        let y = dequantize(GgmlType::Q5_0, &b).unwrap();
        // x = d·(q − 16), q = nibble | 16·bit
        assert_eq!(y[0], 0.0); // 0 | 16 → 0
        assert_eq!(y[1], 1.0); // 1 | 16 → 17 − 16
        assert_eq!(y[2], -14.0); // 2 → −14
        assert_eq!(y[15], -1.0); // 15 → −1
        assert_eq!(y[16], 15.0); // 15 | 16 = 31 → 15
        assert_eq!(y[17], -1.0); // 15 → −1
        assert_eq!(y[31], 15.0);

        let mut b = h(0.5).to_vec();
        b.extend(h(10.0));
        b.extend(qh.to_le_bytes());
        b.extend(&nibbles);
        let y = dequantize(GgmlType::Q5_1, &b).unwrap();
        // x = d·q + m
        assert_eq!(y[0], 0.5 * 16.0 + 10.0);
        assert_eq!(y[2], 0.5 * 2.0 + 10.0);
        assert_eq!(y[16], 0.5 * 31.0 + 10.0);
        assert_eq!(y[17], 0.5 * 15.0 + 10.0);
    }

    /// Packs eight 6-bit (scale, min) pairs as `quantize_row_q4_K_ref` does.
    fn pack_k4_scales(sc: [u8; 8], mn: [u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                s[j] = sc[j];
                s[j + 4] = mn[j];
            } else {
                s[j + 4] = (sc[j] & 0xF) | ((mn[j] & 0xF) << 4);
                s[j - 4] |= (sc[j] >> 4) << 6;
                s[j] |= (mn[j] >> 4) << 6;
            }
        }
        s
    }

    #[test]
    fn dequant_q4_k_and_q5_k_block() {
        // Sub-block j (32 elements) has scale sc[j], min mn[j]; values over 15 exercise the
        // 2-bit high parts stored in bytes 0..8.
        let sc = [1, 2, 3, 4, 17, 33, 49, 63];
        let mn = [0, 5, 10, 15, 20, 40, 60, 63];
        let q: Vec<u8> = (0..256).map(|i| (i * 7 % 16) as u8).collect(); // element quants 0..15
        let (d, dmin) = (0.5f32, 0.25f32);
        let mut b = h(d).to_vec();
        b.extend(h(dmin));
        b.extend(pack_k4_scales(sc, mn));
        // 32 bytes per 64 elements: low nibble element l, high nibble element l + 32.
        for chunk in 0..4 {
            for l in 0..32 {
                b.push(q[64 * chunk + l] | (q[64 * chunk + 32 + l] << 4));
            }
        }
        assert_eq!(b.len(), 144);
        let y = dequantize(GgmlType::Q4_K, &b).unwrap();
        for i in 0..256 {
            let j = i / 32;
            let want = d * sc[j] as f32 * q[i] as f32 - dmin * mn[j] as f32;
            assert_eq!(y[i], want, "Q4_K element {i}");
        }
        // Spot values by hand: element 0: q=0 → −0; element 255: q=(255·7)%16=9, sub-block 7.
        assert_eq!(y[255], 0.5 * 63.0 * 9.0 - 0.25 * 63.0);

        // Q5_K: same plus a 5th bit from qh (bit 2c of qh[l] for element 64c+l, bit 2c+1 for
        // element 64c+32+l).
        let q5: Vec<u8> = (0..256).map(|i| (i * 11 % 32) as u8).collect();
        let mut b = h(d).to_vec();
        b.extend(h(dmin));
        b.extend(pack_k4_scales(sc, mn));
        let mut qh = [0u8; 32];
        let mut ql = Vec::new();
        for chunk in 0..4 {
            for l in 0..32 {
                let (lo, hi) = (q5[64 * chunk + l], q5[64 * chunk + 32 + l]);
                if lo > 15 {
                    qh[l] |= 1 << (2 * chunk);
                }
                if hi > 15 {
                    qh[l] |= 2 << (2 * chunk);
                }
                ql.push((lo & 15) | ((hi & 15) << 4));
            }
        }
        b.extend(qh);
        b.extend(ql);
        assert_eq!(b.len(), 176);
        let y = dequantize(GgmlType::Q5_K, &b).unwrap();
        for i in 0..256 {
            let j = i / 32;
            let want = d * sc[j] as f32 * q5[i] as f32 - dmin * mn[j] as f32;
            assert_eq!(y[i], want, "Q5_K element {i}");
        }
    }

    #[test]
    fn dequant_q6_k_block() {
        // Element quants L in 0..64 (value L − 32), scales per 16 elements (signed).
        let l: Vec<u8> = (0..256).map(|i| (i * 13 % 64) as u8).collect();
        let scales: Vec<i8> = (0..16).map(|i| i as i8 * 9 - 70).collect();
        let d = 0.125f32;
        let (mut ql, mut qh) = (vec![0u8; 128], vec![0u8; 64]);
        // Layout of quantize_row_q6_K_ref: per 128 elements, 64 bytes of low nibbles and 32 of
        // high 2-bit pairs.
        for half in 0..2 {
            let (j, qlo, qho) = (128 * half, 64 * half, 32 * half);
            for i in 0..32 {
                let (q1, q2, q3, q4) = (l[j + i], l[j + i + 32], l[j + i + 64], l[j + i + 96]);
                ql[qlo + i] = (q1 & 0xF) | ((q3 & 0xF) << 4);
                ql[qlo + i + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
                qh[qho + i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
        let mut b = ql;
        b.extend(qh);
        b.extend(scales.iter().map(|&s| s as u8));
        b.extend(h(d));
        assert_eq!(b.len(), 210);
        let y = dequantize(GgmlType::Q6_K, &b).unwrap();
        for i in 0..256 {
            let want = d * scales[i / 16] as f32 * (l[i] as i32 - 32) as f32;
            assert_eq!(y[i], want, "Q6_K element {i}");
        }
        // By hand: element 0 has L = 0 → −32, scale −70: 0.125·(−70)·(−32) = 280.
        assert_eq!(y[0], 280.0);
    }

    #[test]
    fn dequant_plain_floats() {
        let mut b = Vec::new();
        for x in [1.5f32, -0.0, f32::INFINITY] {
            b.extend(x.to_le_bytes());
        }
        assert_eq!(dequantize(GgmlType::F32, &b).unwrap()[..2], [1.5, -0.0]);
        let b: Vec<u8> = [1.0f32, -2.5, 65504.0].iter().flat_map(|&x| h(x)).collect();
        assert_eq!(dequantize(GgmlType::F16, &b).unwrap(), vec![1.0, -2.5, 65504.0]);
        let b: Vec<u8> = [1.0f32, -3.0e38, 0.5]
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        let y = dequantize(GgmlType::BF16, &b).unwrap();
        assert_eq!(y[0], 1.0);
        assert_eq!(y[2], 0.5);
        assert!((y[1] / -3.0e38 - 1.0).abs() < 1e-2);
    }

    #[test]
    fn dequant_errors_name_the_problem() {
        match dequantize(GgmlType::Q2_K, &[0u8; 84]) {
            Err(Error::UnsupportedDtype(m)) => assert!(m.contains("Q2_K"), "{m}"),
            other => panic!("{other:?}"),
        }
        match dequantize(GgmlType::Q8_0, &[0u8; 35]) {
            Err(Error::Format(m)) => assert!(m.contains("whole number of 34-byte blocks"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut out = vec![0f32; 31];
        assert!(matches!(
            dequantize_into(GgmlType::Q8_0, &[0u8; 34], &mut out),
            Err(Error::Shape(_))
        ));
    }

    #[test]
    fn type_table_matches_ggml_sizes() {
        // Ids round-trip and the bytes per block are the ggml-common.h struct sizes.
        for id in 0..64u32 {
            if let Ok(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id);
                assert!(t.type_size() > 0 && t.block_size() > 0);
            }
        }
        assert_eq!(GgmlType::from_id(3).unwrap(), GgmlType::Q4_1);
        assert_eq!((GgmlType::Q4_1.block_size(), GgmlType::Q4_1.type_size()), (32, 20));
        assert_eq!((GgmlType::Q8_0.block_size(), GgmlType::Q8_0.type_size()), (32, 34));
        assert_eq!((GgmlType::Q6_K.block_size(), GgmlType::Q6_K.type_size()), (256, 210));
        assert!(GgmlType::from_id(4).is_err() && GgmlType::from_id(40).is_err());
    }

    // ---- parsing files built in memory ------------------------------------------------------

    /// A file with every metadata type and four tensors of different types.
    pub(crate) fn sample_writer() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.kv("general.architecture", MetaValue::Str("llama".into()))
            .kv("llama.block_count", MetaValue::U32(2))
            .kv("llama.rope.freq_base", MetaValue::F32(10000.0))
            .kv("t.u8", MetaValue::U8(200))
            .kv("t.i8", MetaValue::I8(-5))
            .kv("t.u16", MetaValue::U16(60000))
            .kv("t.i16", MetaValue::I16(-30000))
            .kv("t.i32", MetaValue::I32(-7))
            .kv("t.bool", MetaValue::Bool(true))
            .kv("t.u64", MetaValue::U64(1 << 40))
            .kv("t.i64", MetaValue::I64(-1))
            .kv("t.f64", MetaValue::F64(0.25))
            .kv(
                "t.strs",
                MetaValue::Array(MetaArray::Str(vec!["a".into(), "".into(), "ü😀".into()])),
            )
            .kv("t.i32s", MetaValue::Array(MetaArray::I32(vec![1, -2, 3])))
            .kv("t.f32s", MetaValue::Array(MetaArray::F32(vec![0.5, -1.5])))
            .kv(
                "t.nested",
                MetaValue::Array(MetaArray::Array(vec![
                    MetaArray::U8(vec![1, 2]),
                    MetaArray::Bool(vec![false]),
                ])),
            );
        let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32 - 2.5).to_le_bytes()).collect();
        w.tensor("norm.weight", &[6], GgmlType::F32, f32s).unwrap();
        let mut q8 = h(0.5).to_vec();
        q8.extend((0..32u8).map(|j| j.wrapping_sub(16)));
        q8.extend(h(-1.0));
        q8.extend(0..32u8);
        w.tensor("emb.weight", &[2, 32], GgmlType::Q8_0, q8).unwrap();
        let mut q41 = h(0.25).to_vec();
        q41.extend(h(1.0));
        q41.extend((0..16u8).map(|j| j | (j << 4)));
        w.tensor("proj.weight", &[1, 32], GgmlType::Q4_1, q41).unwrap();
        let f16s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|&x| h(x)).collect();
        w.tensor("tiny.f16", &[2, 2], GgmlType::F16, f16s).unwrap();
        w
    }

    #[test]
    fn parses_a_file_with_every_value_type() {
        let bytes = sample_writer().to_bytes();
        let g = Gguf::from_bytes(&bytes).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.alignment(), 32);
        assert_eq!(g.architecture().unwrap(), "llama");
        assert_eq!(g.get_u64("llama.block_count").unwrap(), 2);
        assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
        assert_eq!(g.get_u64("t.u8").unwrap(), 200);
        assert_eq!(g.metadata("t.i8"), Some(&MetaValue::I8(-5)));
        assert_eq!(g.get_u64("t.u16").unwrap(), 60000);
        assert_eq!(g.metadata("t.i16"), Some(&MetaValue::I16(-30000)));
        assert!(g.get_u64("t.i32").is_err(), "negative is not a u64");
        assert!(g.get_bool("t.bool").unwrap());
        assert_eq!(g.get_u64("t.u64").unwrap(), 1 << 40);
        assert_eq!(g.get_f32("t.f64").unwrap(), 0.25);
        assert_eq!(g.get_str_array("t.strs").unwrap(), ["a", "", "ü😀"]);
        assert_eq!(g.get_i32_array("t.i32s").unwrap(), [1, -2, 3]);
        assert_eq!(g.get_f32_array("t.f32s").unwrap(), [0.5, -1.5]);
        assert_eq!(
            g.metadata("t.nested"),
            Some(&MetaValue::Array(MetaArray::Array(vec![
                MetaArray::U8(vec![1, 2]),
                MetaArray::Bool(vec![false])
            ])))
        );
        assert_eq!(g.metadata_entries().count(), 16);
        // Typed getters name the key and both types.
        match g.get_str("llama.block_count") {
            Err(Error::Model(m)) => {
                assert!(m.contains("llama.block_count") && m.contains("u32"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(g.get_u64("missing.key"), Err(Error::Model(m)) if m.contains("missing.key"))
        );
        assert!(matches!(g.get_i32_array("t.strs"), Err(Error::Model(_))));

        let names: Vec<&str> = g.tensors().map(|t| t.name()).collect();
        assert_eq!(names, ["norm.weight", "emb.weight", "proj.weight", "tiny.f16"]);
        let emb = g.tensor_info("emb.weight").unwrap();
        assert_eq!(emb.dims(), vec![2, 32]);
        assert_eq!(emb.ggml_ne(), &[32, 2]);
        assert_eq!(emb.ggml_type(), GgmlType::Q8_0);
        assert_eq!((emb.n_elements(), emb.n_bytes()), (64, 68));
        for t in g.tensors() {
            assert_eq!(t.file_offset() % 32, 0, "{} aligned", t.name());
        }
        assert_eq!(g.tensor_f32("norm.weight").unwrap(), vec![-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]);
        let e = g.tensor_f32("emb.weight").unwrap();
        assert_eq!(e[0], -8.0); // (0 − 16)·0.5
        assert_eq!(e[31], 7.5);
        assert_eq!(e[32], 0.0);
        assert_eq!(e[63], -31.0);
        let p = g.tensor_f32("proj.weight").unwrap();
        assert_eq!(p[5], 0.25 * 5.0 + 1.0);
        assert_eq!(p[21], 0.25 * 5.0 + 1.0);
        assert_eq!(g.tensor_f32("tiny.f16").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(g.tensor_bytes("tiny.f16").unwrap().len(), 8);
        assert!(matches!(g.tensor_f32("nope"), Err(Error::Model(m)) if m.contains("nope")));
    }

    #[test]
    fn version_2_and_custom_alignment() {
        let mut w = sample_writer();
        w.version(2).kv("general.alignment", MetaValue::U32(64));
        let g = Gguf::from_bytes(&w.to_bytes()).unwrap();
        assert_eq!((g.version(), g.alignment()), (2, 64));
        assert_eq!(g.data_start() % 64, 0);
        for t in g.tensors() {
            assert_eq!(t.file_offset() % 64, 0);
        }
        assert_eq!(g.tensor_f32("tiny.f16").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        // No tensors at all is fine too.
        let mut w = GgufWriter::new();
        w.kv("general.architecture", MetaValue::Str("x".into()));
        let g = Gguf::from_bytes(&w.to_bytes()).unwrap();
        assert_eq!(g.tensor_count(), 0);
    }

    #[test]
    fn open_reads_a_file_through_mmap() {
        let dir = std::env::temp_dir().join(format!("sparse_tc_gguf_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sample.gguf");
        std::fs::write(&path, sample_writer().to_bytes()).unwrap();
        let g = Gguf::open(&path).unwrap();
        assert_eq!(g.tensor_f32("tiny.f16").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        std::fs::write(&path, b"GGUF\x03\x00\x00\x00").unwrap();
        let m = fmt_err(Gguf::open(&path));
        assert!(m.contains("tensor count") && m.contains("sample.gguf"), "{m}");
        assert!(matches!(Gguf::open(&dir.join("absent.gguf")), Err(Error::Io(_))));
        std::fs::remove_dir_all(&dir).ok();
    }

    // ---- malformed files --------------------------------------------------------------------

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample_writer().to_bytes();
        for len in 0..bytes.len() {
            let m = fmt_err(Gguf::from_bytes(&bytes[..len]));
            assert!(m.starts_with("GGUF: "), "{m}");
        }
        // At the section boundaries the message says which part is cut short.
        let kv_start = 24;
        assert!(fmt_err(Gguf::from_bytes(&bytes[..3])).contains("magic"));
        assert!(fmt_err(Gguf::from_bytes(&bytes[..6])).contains("version"));
        assert!(fmt_err(Gguf::from_bytes(&bytes[..12])).contains("tensor count"));
        assert!(fmt_err(Gguf::from_bytes(&bytes[..20])).contains("metadata key/value count"));
        assert!(fmt_err(Gguf::from_bytes(&bytes[..kv_start])).contains("metadata"));
        // (Early cuts fail the header's count check; a cut inside the last value names its key.)
        let last_key = bytes.windows(8).position(|w| w == b"t.nested").unwrap();
        let m = fmt_err(Gguf::from_bytes(&bytes[..last_key + 20]));
        assert!(m.contains("metadata value 't.nested'"), "{m}");
        let g = Gguf::from_bytes(&bytes).unwrap();
        let first = g.tensors().next().unwrap().file_offset() as usize;
        let m = fmt_err(Gguf::from_bytes(&bytes[..first - 40]));
        assert!(m.contains("tensor"), "{m}");
        let m = fmt_err(Gguf::from_bytes(&bytes[..bytes.len() - 1]));
        assert!(m.contains("tiny.f16") && m.contains("beyond the end of the file"), "{m}");
    }

    /// Raw pieces for files no writer would produce.
    struct RawInfo {
        name: &'static str,
        ne: Vec<u64>,
        type_id: u32,
        offset: u64,
    }

    fn raw_file(
        version: u32,
        kvs: &[u8],
        kv_count: u64,
        infos: &[RawInfo],
        data_len: usize,
    ) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend(version.to_le_bytes());
        b.extend((infos.len() as u64).to_le_bytes());
        b.extend(kv_count.to_le_bytes());
        b.extend_from_slice(kvs);
        for i in infos {
            write_str(&mut b, i.name);
            b.extend((i.ne.len() as u32).to_le_bytes());
            for d in &i.ne {
                b.extend(d.to_le_bytes());
            }
            b.extend(i.type_id.to_le_bytes());
            b.extend(i.offset.to_le_bytes());
        }
        b.resize(b.len().next_multiple_of(32) + data_len, 0);
        b
    }

    fn kv_bytes(key: &str, v: &MetaValue) -> Vec<u8> {
        let mut b = Vec::new();
        write_str(&mut b, key);
        b.extend(v.type_id().to_le_bytes());
        write_value(&mut b, v);
        b
    }

    fn info(name: &'static str, ne: &[u64], type_id: u32, offset: u64) -> RawInfo {
        RawInfo { name, ne: ne.to_vec(), type_id, offset }
    }

    #[test]
    fn header_errors() {
        let ok = raw_file(3, &[], 0, &[], 0);
        assert!(Gguf::from_bytes(&ok).is_ok());
        let mut bad = ok.clone();
        bad[0] = b'g';
        assert!(fmt_err(Gguf::from_bytes(&bad)).contains("bad magic"));
        assert!(fmt_err(Gguf::from_bytes(&raw_file(1, &[], 0, &[], 0))).contains("version 1"));
        assert!(fmt_err(Gguf::from_bytes(&raw_file(4, &[], 0, &[], 0)))
            .contains("unsupported version 4"));
        assert!(fmt_err(Gguf::from_bytes(&raw_file(3u32.swap_bytes(), &[], 0, &[], 0)))
            .contains("big-endian"));
        assert!(fmt_err(Gguf::from_bytes(b"")).contains("magic"));
    }

    #[test]
    fn huge_counts_are_rejected_before_allocating() {
        for count in [u64::MAX, u64::MAX / 13, 1 << 40, 2] {
            let m = fmt_err(Gguf::from_bytes(&raw_file(3, &[], count, &[], 0)));
            assert!(m.contains("metadata count") && m.contains(&count.to_string()), "{m}");
        }
        let mut b = raw_file(3, &[], 0, &[], 0);
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(fmt_err(Gguf::from_bytes(&b)).contains("tensor count"));
        // A string length of u64::MAX.
        let mut kv = Vec::new();
        kv.extend(u64::MAX.to_le_bytes());
        kv.extend(b"key");
        let m = fmt_err(Gguf::from_bytes(&raw_file(3, &kv, 1, &[], 0)));
        assert!(m.contains(&u64::MAX.to_string()) && m.contains("key of metadata entry 0"), "{m}");
        // An array claiming u64::MAX / 4 u32s, and 2^61 strings.
        for (et, count) in [(vt::U32, u64::MAX / 4), (vt::STR, 1u64 << 61), (vt::ARRAY, u64::MAX)] {
            let mut kv = Vec::new();
            write_str(&mut kv, "big");
            kv.extend(vt::ARRAY.to_le_bytes());
            kv.extend(et.to_le_bytes());
            kv.extend(count.to_le_bytes());
            let m = fmt_err(Gguf::from_bytes(&raw_file(3, &kv, 1, &[], 64)));
            assert!(
                m.contains("array metadata value 'big'") && m.contains(&count.to_string()),
                "{m}"
            );
        }
    }

    #[test]
    fn metadata_errors() {
        let dup = [kv_bytes("a", &MetaValue::U8(1)), kv_bytes("a", &MetaValue::U8(2))].concat();
        assert!(
            fmt_err(Gguf::from_bytes(&raw_file(3, &dup, 2, &[], 0))).contains("'a' appears twice")
        );
        let mut bad_type = Vec::new();
        write_str(&mut bad_type, "k");
        bad_type.extend(13u32.to_le_bytes());
        bad_type.extend([0u8; 8]);
        assert!(fmt_err(Gguf::from_bytes(&raw_file(3, &bad_type, 1, &[], 0)))
            .contains("unknown value type id 13"));
        let mut bad_bool = kv_bytes("b", &MetaValue::Bool(true));
        *bad_bool.last_mut().unwrap() = 2;
        assert!(
            fmt_err(Gguf::from_bytes(&raw_file(3, &bad_bool, 1, &[], 0))).contains("byte value 2")
        );
        let mut bad_utf8 = Vec::new();
        bad_utf8.extend(2u64.to_le_bytes());
        bad_utf8.extend([0xC3, 0x28]);
        bad_utf8.extend(vt::U8.to_le_bytes());
        bad_utf8.push(0);
        assert!(fmt_err(Gguf::from_bytes(&raw_file(3, &bad_utf8, 1, &[], 0))).contains("UTF-8"));
        // Arrays nested five deep.
        let mut a = MetaArray::U8(vec![1]);
        for _ in 0..5 {
            a = MetaArray::Array(vec![a]);
        }
        let deep = kv_bytes("deep", &MetaValue::Array(a));
        assert!(fmt_err(Gguf::from_bytes(&raw_file(3, &deep, 1, &[], 0))).contains("deeper"));
        for bad in [
            MetaValue::U32(48),
            MetaValue::U32(0),
            MetaValue::Str("32".into()),
            MetaValue::I32(-32),
        ] {
            let kv = kv_bytes("general.alignment", &bad);
            assert!(fmt_err(Gguf::from_bytes(&raw_file(3, &kv, 1, &[], 0)))
                .contains("general.alignment"));
        }
    }

    #[test]
    fn tensor_info_errors() {
        let t = |infos: &[RawInfo], data: usize| {
            fmt_err(Gguf::from_bytes(&raw_file(3, &[], 0, infos, data)))
        };
        assert!(Gguf::from_bytes(&raw_file(3, &[], 0, &[info("w", &[32, 2], 8, 0)], 68)).is_ok());
        assert!(
            t(&[info("w", &[32, 2], 77, 0)], 68).contains("tensor 'w': unknown ggml type id 77")
        );
        assert!(t(&[info("w", &[32, 2], 4, 0)], 68).contains("removed"));
        assert!(
            t(&[info("w", &[48, 2], 8, 0)], 200).contains("not a multiple of the block size 32")
        );
        assert!(t(&[info("w", &[1, 1, 1, 1, 1], 0, 0)], 4).contains("5 dimensions"));
        assert!(t(&[info("w", &[1 << 40, 1 << 40], 0, 0)], 4).contains("overflows"));
        assert!(t(&[info("w", &[u64::MAX], 0, 0)], 4).contains("i64::MAX"));
        assert!(t(&[info("w", &[4], 0, 16)], 64).contains("not a multiple of the alignment 32"));
        assert!(t(&[info("w", &[32, 2], 8, 0)], 67).contains("beyond the end of the file"));
        assert!(t(&[info("w", &[4], 0, u64::MAX - 31)], 64).contains("beyond the end of the file"));
        assert!(t(&[info("w", &[4], 0, 1 << 20)], 64).contains("beyond the end of the file"));
        let two = [info("a", &[16], 0, 0), info("b", &[4], 0, 32)];
        assert!(t(&two, 64).contains("overlap"));
        let dup = [info("a", &[4], 0, 0), info("a", &[4], 0, 32)];
        assert!(t(&dup, 64).contains("'a' appears twice"));
        // Zero-size tensors may share an offset.
        let empty = [info("a", &[0], 0, 0), info("b", &[4], 0, 0)];
        assert!(Gguf::from_bytes(&raw_file(3, &[], 0, &empty, 16)).is_ok());
    }

    // ---- the real SmolLM2 checkpoint --------------------------------------------------------

    #[test]
    fn smollm2_metadata_and_tensors() {
        let Some(path) = smollm2_path("smollm2_metadata_and_tensors") else { return };
        let g = Gguf::open(&path).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.architecture().unwrap(), "llama");
        assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
        assert_eq!(g.get_u64("llama.embedding_length").unwrap(), 576);
        assert_eq!(g.get_u64("llama.feed_forward_length").unwrap(), 1536);
        assert_eq!(g.get_u64("llama.attention.head_count").unwrap(), 9);
        assert_eq!(g.get_u64("llama.attention.head_count_kv").unwrap(), 3);
        assert_eq!(g.get_u64("llama.context_length").unwrap(), 8192);
        assert_eq!(g.get_u64("llama.vocab_size").unwrap(), 49152);
        assert_eq!(g.get_u64("llama.rope.dimension_count").unwrap(), 64);
        assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
        assert_eq!(g.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
        assert_eq!(g.get_u64("general.file_type").unwrap(), 3); // MOSTLY_Q4_1
        assert_eq!(g.tensor_count(), 272); // 30 × 9 + token_embd + output_norm (tied output)
        assert!(g.tensor_info("output.weight").is_none());

        let expect = |name: &str, ty: GgmlType, dims: &[u64]| {
            let t = g.tensor_info(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!((t.ggml_type(), t.dims().as_slice()), (ty, dims), "{name}");
        };
        expect("token_embd.weight", GgmlType::Q8_0, &[49152, 576]);
        expect("output_norm.weight", GgmlType::F32, &[576]);
        for l in 0..30 {
            let p = format!("blk.{l}.");
            expect(&format!("{p}attn_norm.weight"), GgmlType::F32, &[576]);
            expect(&format!("{p}ffn_norm.weight"), GgmlType::F32, &[576]);
            expect(&format!("{p}attn_q.weight"), GgmlType::Q4_1, &[576, 576]);
            expect(&format!("{p}attn_k.weight"), GgmlType::Q4_1, &[192, 576]);
            expect(&format!("{p}attn_v.weight"), GgmlType::Q4_1, &[192, 576]);
            expect(&format!("{p}attn_output.weight"), GgmlType::Q4_1, &[576, 576]);
            expect(&format!("{p}ffn_gate.weight"), GgmlType::Q4_1, &[1536, 576]);
            expect(&format!("{p}ffn_up.weight"), GgmlType::Q4_1, &[1536, 576]);
            expect(&format!("{p}ffn_down.weight"), GgmlType::Q4_1, &[576, 1536]);
        }
    }

    /// Values from the reference dequantizer of llama.cpp's Python package (`gguf` 0.19,
    /// `gguf.quants.dequantize`) on this file; sums in f64.
    #[test]
    fn smollm2_dequantizes_like_the_reference() {
        let Some(path) = smollm2_path("smollm2_dequantizes_like_the_reference") else { return };
        let g = Gguf::open(&path).unwrap();
        let check = |name: &str, cols: usize, sum: f64, abs: f64, row0: &[f32], last: &[f32]| {
            let v = g.tensor_f32(name).unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{name} has non-finite values");
            let s: f64 = v.iter().map(|&x| x as f64).sum();
            let a: f64 = v.iter().map(|&x| (x as f64).abs()).sum();
            assert!((s - sum).abs() <= 1e-6 * abs, "{name}: sum {s} vs {sum}");
            assert!((a - abs).abs() <= 1e-9 * abs, "{name}: abs sum {a} vs {abs}");
            assert_eq!(&v[..row0.len()], row0, "{name} first values");
            assert_eq!(&v[v.len() - last.len()..], last, "{name} last values");
            assert_eq!(v.len() % cols, 0);
        };
        check(
            "token_embd.weight",
            576,
            -15353.04449415207,
            2802153.619805813,
            &[
                -0.10654449462890625,
                0.032978057861328125,
                0.048198699951171875,
                -0.022830963134765625,
                -0.06849288940429688,
                -0.04566192626953125,
                0.020294189453125,
                -0.12176513671875,
            ],
            &[0.07819175720214844, 0.12858200073242188, -0.11989402770996094, -0.0417022705078125],
        );
        check(
            "blk.0.attn_q.weight",
            576,
            59.22322082519531,
            63395.39872741699,
            &[
                -0.0963134765625,
                0.1573486328125,
                -0.0963134765625,
                -0.73046875,
                1.1719970703125,
                -0.0963134765625,
                0.030517578125,
                0.6646728515625,
            ],
            &[0.009185791015625, -0.096832275390625, -0.14984130859375, -0.255859375],
        );
        check(
            "blk.29.ffn_down.weight",
            1536,
            49.83570861816406,
            126250.91435241699,
            &[
                -0.2733154296875,
                0.186279296875,
                0.186279296875,
                0.04840087890625,
                0.186279296875,
                0.186279296875,
                -0.31927490234375,
                -0.181396484375,
            ],
            &[0.056640625, 0.203125, -0.08984375, 0.056640625],
        );
        check(
            "output_norm.weight",
            576,
            1038.33203125,
            1045.09765625,
            &[1.7578125, 1.8203125, 1.78125, 1.6015625, 1.7421875, 1.71875, 1.828125, 1.75],
            &[],
        );
    }
}
