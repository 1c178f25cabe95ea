//! Scalar arithmetic of the model operations that the kernels and their CPU references must
//! compute to the same bits: `exp` and SiLU, RoPE's inverse frequencies and sin/cos, and the
//! sampler's weights and counter-based random numbers.
//!
//! Plain `core` Rust with no PTX, like [`crate::layout`]: the host crate includes this file
//! too (`host/src/ops/mod.rs`, `#[path]`), so `sparse_tc::ops::reference` runs exactly this
//! code. Only IEEE 754 basic operations (`+ - * /`, correctly rounded, round to nearest even),
//! exact conversions and integer arithmetic are used: rustc never contracts `a * b + c` into a
//! fused multiply-add and sets no fast-math flags, so the device (`add/mul/div.rn`, no `.ftz`;
//! `.ci/check-ptx` verifies that the model-operation kernels hold no `fma`, `.approx` or
//! `.ftz`) and the host produce identical results from identical inputs.

#![allow(clippy::excessive_precision)]

// ---------------------------------------------------------------------------------------------
// exp and SiLU (f32)
// ---------------------------------------------------------------------------------------------

/// log2(e) rounded to f32.
const LOG2E_F32: f32 = core::f32::consts::LOG2_E;
/// ln 2 in two parts (Cody–Waite): 0.693359375 has 9 significant bits, so `n · LN2_HI_F32` is
/// exact for every |n| ≤ 150 used here; `LN2_HI_F32 + LN2_LO_F32` = ln 2 to about 2⁻³³.
const LN2_HI_F32: f32 = 0.693_359_375;
const LN2_LO_F32: f32 = -2.121_944_4e-4;
/// Minimax coefficients of (eʳ − 1 − r) / r² on |r| ≤ ln2 / 2 (Cephes `expf`, S. L. Moshier).
const EXP_P: [f32; 6] = [1.987_569_15e-4, 1.398_199_950_7e-3, 8.333_451_907_3e-3, 4.166_579_589_4e-2, 1.666_666_545_9e-1, 5.000_000_120_1e-1];

/// 2ⁿ as an f32, for −126 ≤ n ≤ 127.
#[inline(always)]
fn pow2i_f32(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

/// eˣ in f32, within 2 ulp of the exact value over the whole range (the host test
/// `exp_f32_is_accurate` measures the largest relative error against f64 `exp`: below
/// 1.5·2⁻²³ for normal results); exp(0) = 1 exactly, eˣ ≤ 1 for x ≤ 0, NaN stays NaN,
/// exp(+Inf) = +Inf, exp(−Inf) = 0, and results below the f32 range round to subnormals or 0.
///
/// x = n·ln2 + r with n = round(x·log2 e) and |r| ≲ ln2/2 (Cody–Waite, `n · LN2_HI_F32` exact),
/// eʳ from a degree-7 polynomial, and the result scaled by 2ⁿ in two exact steps (2^⌊n/2⌋,
/// then 2^(n−⌊n/2⌋), the second one rounding once into the subnormal range when it must).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    // ln(f32::MAX) ≈ 88.7228; below ln(2⁻¹⁵⁰) ≈ −103.9721 the result rounds to 0.
    if x > 88.722_84 {
        return f32::INFINITY;
    }
    if x < -103.972_08 {
        return 0.0;
    }
    let kf = x * LOG2E_F32;
    let n = if kf < 0.0 { (kf - 0.5) as i32 } else { (kf + 0.5) as i32 };
    let nf = n as f32;
    let r = (x - nf * LN2_HI_F32) - nf * LN2_LO_F32;
    let z = r * r;
    let p = ((((EXP_P[0] * r + EXP_P[1]) * r + EXP_P[2]) * r + EXP_P[3]) * r + EXP_P[4]) * r + EXP_P[5];
    let y = p * z + r + 1.0;
    // n ∈ [−150, 128]: both halves lie in [−76, 64], normal powers of two; y·2^n1 is exact.
    let n1 = n / 2;
    y * pow2i_f32(n1) * pow2i_f32(n - n1)
}

/// SiLU (swish): x · sigmoid(x) = x / (1 + e⁻ˣ), in f32 with `exp_f32` (within about 3 ulp).
/// Large negative x gives −0 (e⁻ˣ = +Inf), +Inf gives +Inf, NaN stays NaN; −Inf gives NaN
/// (−Inf / +Inf), as `torch.nn.functional.silu` does (−Inf · 0).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

// ---------------------------------------------------------------------------------------------
// RoPE: inverse frequencies and sin/cos (f64 inside, f32 results)
// ---------------------------------------------------------------------------------------------

/// ln 2 in two parts (fdlibm): `LN2_HI` has 32 significant bits, so `k · LN2_HI` is exact for
/// |k| < 2²¹.
const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);

/// 2ⁿ as an f64, for −1022 ≤ n ≤ 1023.
#[inline(always)]
fn pow2i_f64(n: i32) -> f64 {
    f64::from_bits(((n + 1023) as u64) << 52)
}

/// Natural logarithm of a positive, finite, normal f64, to about 2⁻⁵² relative.
///
/// x = m·2ᵏ with m ∈ [√½, √2), ln m = 2·atanh(s) with s = (m−1)/(m+1), |s| ≤ 0.1716, summed to
/// s²¹/21 (the next term is below 2⁻⁵⁸ of the sum).
fn ln_f64(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut k = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > core::f64::consts::SQRT_2 {
        m *= 0.5;
        k += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut p = 0.0;
    let mut i = 10;
    loop {
        p = 1.0 / (2 * i + 1) as f64 + s2 * p;
        if i == 0 {
            break;
        }
        i -= 1;
    }
    let kf = k as f64;
    kf * LN2_HI + (kf * LN2_LO + 2.0 * s * p)
}

/// eˣ for |x| ≤ 700 in f64, to about 2⁻⁵² relative: x = n·ln2 + r, |r| ≤ ln2/2, Taylor series of
/// eʳ to r¹⁶/16! (the remainder is below 2⁻⁶⁶).
fn exp_f64(x: f64) -> f64 {
    let kf = x * core::f64::consts::LOG2_E;
    let n = if kf < 0.0 { (kf - 0.5) as i32 } else { (kf + 0.5) as i32 };
    let nf = n as f64;
    let r = (x - nf * LN2_HI) - nf * LN2_LO;
    let mut sum = 1.0;
    let mut i = 16;
    while i > 0 {
        sum = 1.0 + r * sum / i as f64;
        i -= 1;
    }
    sum * pow2i_f64(n)
}

/// The inverse frequency of RoPE pair `j` of a head `head_dim` wide, computed as Hugging Face
/// `transformers` does (`1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))`, all f32):
/// e = (2j) / head_dim rounded to f32, p = θᵉ rounded to f32, and 1 / p rounded to f32.
///
/// θᵉ is evaluated as exp(e · ln θ) in f64 (relative error about 2⁻⁵⁰) and then rounded, so
/// `p` is the correctly rounded f32 power except when θᵉ lies within about 2⁻⁵⁰ (relative)
/// of a rounding boundary; PyTorch's `pow` is within 1 ulp of it. Requires θ > 0 finite.
#[inline(always)]
pub fn rope_inv_freq(theta: f32, j: u32, head_dim: u32) -> f32 {
    let e = (2 * j) as f32 / head_dim as f32;
    let p = exp_f64(e as f64 * ln_f64(theta as f64)) as f32;
    1.0 / p
}

/// π/2 in four parts: the first three have at most 21 significant bits (each the next bits of
/// π/2, on the grids 2⁻²⁰, 2⁻⁴¹ and 2⁻⁶²), so `k · PIO2_1`, `k · PIO2_2` and `k · PIO2_3` are
/// exact for |k| < 2³², and the first two subtractions are exact too (their results fit 53
/// bits on those grids); `PIO2_4` is the rest, rounded to f64.
const PIO2_1: f64 = f64::from_bits(0x3FF9_21FB_0000_0000);
const PIO2_2: f64 = f64::from_bits(0x3E95_110A_0000_0000);
const PIO2_3: f64 = f64::from_bits(0x3D54_611A_0000_0000);
const PIO2_4: f64 = f64::from_bits(0x3BF8_98CC_5170_1B84);

/// Taylor coefficients (−1)ⁱ/(2i+1)! (sine, i = 0..9) and (−1)ⁱ/(2i)! (cosine, i = 0..10),
/// evaluated at compile time (the same constants on the device and the host).
const SIN_C: [f64; 9] = taylor(1);
const COS_C: [f64; 10] = taylor(0);

const fn taylor<const N: usize>(first: u32) -> [f64; N] {
    let mut c = [0.0; N];
    let mut fact = 1.0f64;
    let mut k = 1u32;
    while k <= first {
        fact *= k as f64;
        k += 1;
    }
    let mut i = 0;
    while i < N {
        c[i] = if i % 2 == 0 { 1.0 / fact } else { -1.0 / fact };
        // Next: (2(i+1) + first)! = this · (2i+1+first) · (2i+2+first).
        fact *= ((2 * i as u32 + 1 + first) * (2 * i as u32 + 2 + first)) as f64;
        i += 1;
    }
    c
}

/// (sin a, cos a) of an f32 angle, each the f64 value rounded to f32: within 1 ulp of the
/// exact sine and cosine of `a` (correctly rounded but for values within about 2⁻⁴⁵ relative
/// of a rounding boundary). Non-finite `a` gives (NaN, NaN).
///
/// RoPE angles reach pos · inv_freq ≈ 10⁵–10⁶ rad, where `sin.approx` is useless and f32
/// range reduction loses every digit, so the reduction is done in f64: k = round(a · 2/π),
/// r = a − k·π/2 with π/2 in four parts, exact but for one rounding of 2⁻⁵⁴ rad for every
/// |a| < 2³²·π/2 ≈ 6.7·10⁹ (every angle of a u32 position with `inv_freq` ≤ 1; larger angles
/// err by up to |a|·2⁻⁶²), then Taylor series on |r| ≤ π/4 to r¹⁷ (sine) and r¹⁸ (cosine),
/// remainders below 10⁻¹⁹.
#[inline(always)]
pub fn sin_cos(a: f32) -> (f32, f32) {
    if !a.is_finite() {
        return (f32::NAN, f32::NAN);
    }
    let x = a as f64;
    let kf = x * core::f64::consts::FRAC_2_PI;
    let k = if kf < 0.0 { (kf - 0.5) as i64 } else { (kf + 0.5) as i64 };
    let kd = k as f64;
    let r = (((x - kd * PIO2_1) - kd * PIO2_2) - kd * PIO2_3) - kd * PIO2_4;
    let r2 = r * r;
    let mut s = SIN_C[8];
    let mut i = 8;
    while i > 0 {
        i -= 1;
        s = SIN_C[i] + r2 * s;
    }
    let mut c = COS_C[9];
    let mut i = 9;
    while i > 0 {
        i -= 1;
        c = COS_C[i] + r2 * c;
    }
    let s = r * s;
    let (sin, cos) = match k & 3 {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    };
    (sin as f32, cos as f32)
}

// ---------------------------------------------------------------------------------------------
// Sampling: weights in fixed point and counter-based random numbers
// ---------------------------------------------------------------------------------------------

/// The token id written for a row that has no candidate (every logit NaN): not a valid id of
/// any vocabulary (ids are below `i32::MAX`), and the embedding turns it into a NaN row.
pub const NO_TOKEN: u32 = u32::MAX;

/// SplitMix64's output function (Steele, Lea and Flood, 2014): a bijection of u64 whose output
/// bits each depend on every input bit.
#[inline(always)]
pub const fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The sampler's random word for `row` at `step` with `seed`: the high 32 bits of
/// `mix64(mix64(mix64(seed ^ 0x9E37_79B9_7F4A_7C15) ^ step) ^ row)`. Counter-based (no state:
/// any row of any step can be drawn in any order, on the device or the host), and the uniform
/// number it stands for is `bits / 2³²` ∈ [0, 1).
#[inline(always)]
pub const fn sample_bits(seed: u64, step: u64, row: u64) -> u32 {
    (mix64(mix64(mix64(seed ^ 0x9E37_79B9_7F4A_7C15) ^ step) ^ row) >> 32) as u32
}

/// The fixed-point scale (a power of two, `2^shift`) of the sampling weights of a row of
/// `vocab` logits: `shift = 62 − bits(vocab)`, so that `vocab` weights of at most `2^shift`
/// sum to less than 2⁶² (no u64 overflow, whatever order they are added in). 43 for a vocabulary
/// of 256k, 31 at the largest (2³¹ − 1).
#[inline(always)]
pub const fn weight_shift(vocab: u32) -> u32 {
    62 - (32 - vocab.leading_zeros())
}

/// The sampling weight of a logit `v` in a row whose largest is `vmax`, at `temperature` > 0:
/// w = exp((v − vmax) / temperature) ∈ [0, 1] (exactly 1 for `v == vmax`, so ±Inf maxima work),
/// in fixed point: ⌊w · 2^shift⌋ ([`weight_shift`]).
///
/// Integer weights make every sum exact and independent of the order of addition, so the
/// device's block-wide sums and scans and the host's sequential loops agree exactly: the same
/// thresholds and the same token. The price is a resolution of 2^−shift of the most likely
/// token's weight (≤ 2⁻³¹, 2⁻⁴³ at 256k): tokens less likely than that are never drawn.
#[inline(always)]
pub fn sample_weight(v: f32, vmax: f32, temperature: f32, shift: u32) -> u64 {
    let w = if v == vmax { 1.0 } else { exp_f32((v - vmax) / temperature) };
    (w * f32::from_bits((127 + shift) << 23)) as u64
}

/// Whether a candidate set of weight `mass` covers the share `top_p` of the total `total`
/// (nucleus sampling's test), compared in f64 (both sides exact for masses below 2⁵³, and the
/// same rounding on the device and the host above).
#[inline(always)]
pub fn covers(mass: u64, total: u64, top_p: f32) -> bool {
    mass as f64 >= top_p as f64 * total as f64
}

/// The point ⌊total · bits / 2³²⌋ ∈ [0, total) at which the cumulative weight is cut (for
/// `total` ≥ 1), computed exactly in u64: total = h·2³² + l, so the product is h·bits +
/// ⌊l·bits / 2³²⌋ with h < 2³⁰.
#[inline(always)]
pub const fn draw(total: u64, bits: u32) -> u64 {
    let b = bits as u64;
    (total >> 32) * b + (((total & 0xFFFF_FFFF) * b) >> 32)
}
