//! Choosing the next token of each row of logits: greedy ([`Gpu::argmax`]) or sampled
//! ([`Gpu::sample`]: temperature, top-k, top-p), deterministic given the seed and step.

use super::{dim, DeviceIndices, TOKEN_THREADS, SCRATCH_BYTES};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::linear::args;
use crate::matrix::DeviceMatrix;

pub use super::numerics::NO_TOKEN;

/// How [`Gpu::sample`] (and [`reference::sample`](crate::ops::reference::sample::sample))
/// picks a token from a row of logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature (finite, ≥ 0); 0 picks the largest logit ([`Gpu::argmax`]).
    pub temperature: f32,
    /// Keep only the `top_k` largest logits (all logits equal to the k-th largest are kept
    /// too, as in Hugging Face's `TopKLogitsWarper`); 0 = off.
    pub top_k: usize,
    /// Nucleus: keep the smallest set of the most likely tokens whose probability (after top-k)
    /// reaches `top_p` (all tokens as likely as the last one included), in [0, 1]; 1 = off,
    /// 0 keeps the most likely tokens only.
    pub top_p: f32,
    /// Seed of the counter-based random numbers (see [`Gpu::sample`]).
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Plain sampling from softmax(logits): temperature 1, no top-k or top-p, seed 0.
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    /// `Ok` when the parameters are in range, else an [`Error::InvalidArgument`] naming the
    /// field.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "sample: temperature = {} must be finite and ≥ 0",
                self.temperature
            )));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(Error::InvalidArgument(format!("sample: top_p = {} must be in [0, 1]", self.top_p)));
        }
        Ok(())
    }
}

impl Gpu {
    /// The index of the largest logit of each row of `logits` (`rows × vocab`) into `out`
    /// (which must hold `rows` indices; its length becomes `rows`). Ties go to the lowest
    /// index, NaN never wins (−Inf does), and a row of NaN only gives [`NO_TOKEN`].
    ///
    /// Errors: [`Error::Shape`] when `out`'s capacity is below the rows,
    /// [`Error::InvalidArgument`] for an operand of another handle.
    pub fn argmax<T: Element>(&self, logits: &DeviceMatrix<T>, out: &mut DeviceIndices) -> Result<()> {
        self.token_launch("argmax", logits, out, None, 0)
    }

    /// One token per row of `logits`, drawn from softmax(logits / temperature) restricted to
    /// the top-k logits and then to the top-p nucleus (see [`SamplingParams`]); temperature 0
    /// is [`Gpu::argmax`]. NaN logits are never drawn (probability 0), −Inf neither; a row of
    /// NaN only gives [`NO_TOKEN`]; if the largest logit is +Inf, the +Inf ones share all the
    /// probability.
    ///
    /// **Randomness.** Row r at `step` uses the 32-bit word `sample_bits(seed, step, r)`, a
    /// counter-based hash (three rounds of SplitMix64's mixing function over seed, step and
    /// row; `gpu/src/numerics.rs`), as the uniform number u = bits / 2³²: no generator state,
    /// so the same (seed, step, row) gives the same token on any device, in any batch order,
    /// and on the host. Pass the decoding step (or any counter) as `step`.
    ///
    /// **Exactness.** Probabilities are held as integer weights ⌊exp((v − max)/T) · 2^s⌋,
    /// s = 62 − bits(vocab) (43 for 256k tokens; the exponential accurate to 2 ulp), so every
    /// count, sum and cumulative sum is exact and order-independent: the token is the one
    /// whose cumulative weight in index order first exceeds ⌊u · M⌋ (M the total kept weight),
    /// and [`reference::sample`](crate::ops::reference::sample::sample) picks the same token
    /// from the same logits. Tokens less likely than 2^−s times the most likely one are never
    /// drawn.
    ///
    /// Cost: one block per row, at most 35 passes over the row (16 for top-k, 16 for top-p,
    /// each a bisection on the 16-bit value).
    ///
    /// Errors: as [`Gpu::argmax`], and [`Error::InvalidArgument`] for parameters out of range
    /// ([`SamplingParams::validate`]).
    pub fn sample<T: Element>(
        &self,
        logits: &DeviceMatrix<T>,
        params: &SamplingParams,
        step: u64,
        out: &mut DeviceIndices,
    ) -> Result<()> {
        params.validate()?;
        if params.temperature == 0.0 {
            return self.argmax(logits, out);
        }
        self.token_launch("sample", logits, out, Some(params), step)
    }

    /// Checks and launches `argmax` or `sample` (with `params`).
    fn token_launch<T: Element>(
        &self,
        op: &str,
        logits: &DeviceMatrix<T>,
        out: &mut DeviceIndices,
        params: Option<&SamplingParams>,
        step: u64,
    ) -> Result<()> {
        self.check_owner(&format!("{op}: logits"), &logits.buf)?;
        self.check_owner(&format!("{op}: out"), &out.buf)?;
        let n = logits.rows();
        if out.capacity() < n {
            return Err(Error::Shape(format!(
                "{op}: out has room for {} indices, logits has {n} rows",
                out.capacity()
            )));
        }
        let (lp, op_out) = (logits.device_ptr(), out.device_ptr());
        let (rows, cols, ld) = (dim(op, "rows", n)?, dim(op, "cols", logits.cols())?, dim(op, "ld", logits.ld())?);
        match params {
            None => {
                let mut a = args![lp, rows, cols, ld, op_out];
                self.launch_op::<T>(op, TOKEN_THREADS, SCRATCH_BYTES, n, &mut a)?;
            }
            Some(p) => {
                let (temperature, top_p, seed) = (p.temperature, p.top_p, p.seed);
                // Any top_k at or above the vocabulary keeps everything, like 0.
                let top_k = u32::try_from(p.top_k).unwrap_or(u32::MAX);
                let mut a = args![lp, rows, cols, ld, op_out, temperature, top_k, top_p, seed, step];
                self.launch_op::<T>(op, TOKEN_THREADS, SCRATCH_BYTES, n, &mut a)?;
            }
        }
        out.set_len(n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_validated() {
        assert!(SamplingParams::default().validate().is_ok());
        let ok = [
            SamplingParams { temperature: 0.0, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { top_k: usize::MAX, temperature: 1e-30, ..Default::default() },
        ];
        for p in ok {
            assert!(p.validate().is_ok(), "{p:?}");
        }
        let bad = [
            (SamplingParams { temperature: -0.5, ..Default::default() }, "temperature"),
            (SamplingParams { temperature: f32::NAN, ..Default::default() }, "temperature"),
            (SamplingParams { temperature: f32::INFINITY, ..Default::default() }, "temperature"),
            (SamplingParams { top_p: 1.5, ..Default::default() }, "top_p"),
            (SamplingParams { top_p: -0.1, ..Default::default() }, "top_p"),
            (SamplingParams { top_p: f32::NAN, ..Default::default() }, "top_p"),
        ];
        for (p, field) in bad {
            match p.validate() {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(field), "{m}"),
                r => panic!("{p:?}: {r:?}"),
            }
        }
    }
}
