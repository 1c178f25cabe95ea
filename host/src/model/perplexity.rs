//! Perplexity of a model on a token stream: the exponential of the mean negative
//! log-likelihood of each token given the ones before it, over sliding windows.
//!
//! Windows of `context` tokens start every `stride` tokens; a window scores only the tokens
//! no earlier window scored (all of them for the first window), each with the whole window
//! before it as context. `stride == context` gives the non-overlapping windows of the
//! pruning papers' WikiText-2 numbers; a smaller stride gives every scored token more context.

use super::backend::Backend;
use super::transformer::{StepIo, Transformer};
use crate::error::{Error, Result};

/// Result of an evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Perplexity {
    /// exp(mean negative log-likelihood).
    pub perplexity: f64,
    /// Mean negative log-likelihood per scored token (nats).
    pub nll: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Windows run.
    pub windows: usize,
}

/// The windows of a stream of `len` tokens: `(start, end, first scored position)` with
/// positions relative to the stream; no token is scored twice.
pub fn windows(len: usize, context: usize, stride: usize) -> Result<Vec<(usize, usize, usize)>> {
    if context < 2 || stride == 0 || stride > context {
        return Err(Error::InvalidArgument(format!("perplexity: context {context} (≥ 2) and stride {stride} (1..=context)")));
    }
    if len < 2 {
        return Err(Error::InvalidArgument(format!("perplexity: the text has {len} tokens; at least 2 are needed")));
    }
    let mut out = vec![];
    let mut scored_to = 1; // token 0 has no context and is never scored
    let mut start = 0;
    loop {
        let end = (start + context).min(len);
        let first = scored_to.max(start + 1);
        if end > first {
            out.push((start, end, first));
            scored_to = end;
        }
        if end == len {
            return Ok(out);
        }
        start += stride;
    }
}

/// Perplexity of `model` on `tokens` (see the module doc); `progress(done, total)` per window.
pub fn perplexity<B: Backend>(
    backend: &B,
    model: &Transformer<B>,
    tokens: &[u32],
    context: usize,
    stride: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity> {
    let c = &model.config;
    if context > c.max_seq {
        return Err(Error::InvalidArgument(format!("perplexity: context {context} exceeds the model's {}", c.max_seq)));
    }
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
        return Err(Error::InvalidArgument(format!("perplexity: token {t} is outside the vocabulary of {}", c.vocab)));
    }
    let spans = windows(tokens.len(), context, stride)?;
    let mut cache = model.kv_cache(backend, 1, context)?;
    let (mut nll, mut scored) = (0.0f64, 0usize);
    for (i, &(start, end, first)) in spans.iter().enumerate() {
        let n = end - start;
        let arr = |v: &[u32]| -> Result<B::Ids> {
            let mut a = backend.ids(v.len())?;
            backend.write_ids(&mut a, v)?;
            Ok(a)
        };
        let positions: Vec<u32> = (0..n as u32).collect();
        // Logits of the rows that predict a scored token: row p predicts token p + 1.
        let rows: Vec<u32> = ((first - 1 - start) as u32..(n - 1) as u32).collect();
        let io = StepIo { ids: arr(&tokens[start..end])?, slots: arr(&vec![0; n])?, positions: arr(&positions)?, last: arr(&rows)? };
        let mut scratch = model.scratch(backend, n, rows.len())?;
        model.forward(backend, &mut scratch, &mut cache, &io)?;
        let logits = backend.read(&scratch.logits)?;
        for (r, row) in rows.iter().zip(logits.chunks_exact(c.vocab)) {
            let target = tokens[start + *r as usize + 1] as usize;
            nll += nll_of(row, target)?;
        }
        scored += rows.len();
        progress(i + 1, spans.len());
    }
    let mean = nll / scored as f64;
    Ok(Perplexity { perplexity: mean.exp(), nll: mean, tokens: scored, windows: spans.len() })
}

/// −log softmax(row)[target], in f64 with the maximum subtracted; non-finite logits are an
/// error naming the problem (a model that overflowed), not a silent infinity.
fn nll_of(row: &[f32], target: usize) -> Result<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    if !max.is_finite() || row.iter().any(|v| !v.is_finite()) {
        return Err(Error::InvalidArgument("perplexity: the model produced non-finite logits".into()));
    }
    let lse = max + row.iter().map(|&v| (f64::from(v) - max).exp()).sum::<f64>().ln();
    Ok(lse - f64::from(row[target]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_score_every_token_once() {
        for (len, context, stride) in [(10, 4, 4), (10, 4, 2), (11, 5, 3), (3, 8, 8), (2, 2, 1), (100, 16, 5)] {
            let w = windows(len, context, stride).unwrap();
            let mut seen = vec![0; len];
            for &(s, e, f) in &w {
                assert!(e - s <= context && s < f && f < e && e <= len, "{w:?}");
                for t in f..e {
                    seen[t] += 1;
                }
            }
            assert_eq!(seen[0], 0);
            for (t, &n) in seen.iter().enumerate().skip(1) {
                // Only a window's own first token goes unscored, and only without overlap.
                let want = usize::from(stride < context || t % context != 0);
                assert_eq!(n, want, "{len} {context} {stride}: token {t} in {w:?}");
            }
        }
        assert!(windows(1, 4, 4).is_err());
        assert!(windows(10, 4, 5).is_err());
        assert!(windows(10, 1, 1).is_err());
    }

    #[test]
    fn nll_is_the_log_softmax() {
        let row = [1.0f32, 2.0, 3.0];
        let z: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
        assert!((nll_of(&row, 1).unwrap() - (z.ln() - 2.0)).abs() < 1e-12);
        assert!(nll_of(&[f32::NAN, 1.0], 1).is_err());
    }
}
