//! Which weights of a row to drop: the lowest scores, per output row (every row ends with the
//! same number of zeros) or N of every M consecutive columns (2:4).

use crate::error::{Error, Result};

/// The sparsity pattern of a pruned row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// `round(sparsity · cols)` zeros anywhere in each row.
    Unstructured,
    /// `n` zeros in every group of `m` consecutive columns (2:4 is `n = 2, m = 4`); a last
    /// partial group keeps `round(n · len / m)` zeros.
    NofM { n: usize, m: usize },
}

impl Pattern {
    /// The pattern's sparsity for a row of `cols` (the requested one when unstructured).
    pub fn sparsity(self, requested: f64) -> f64 {
        match self {
            Pattern::Unstructured => requested,
            Pattern::NofM { n, m } => n as f64 / m as f64,
        }
    }

    /// Checks `n < m` and `m ≥ 2` for N:M.
    pub fn validate(self) -> Result<()> {
        match self {
            Pattern::NofM { n, m } if m < 2 || n == 0 || n >= m => {
                Err(Error::InvalidArgument(format!("pattern {n}:{m}: need 0 < n < m")))
            }
            _ => Ok(()),
        }
    }
}

/// Zeros among the first `end` columns of a row when `sparsity` of them are dropped: the
/// running total rounds, so any split of a row into spans drops exactly
/// `zeros_before(cols)` in all.
pub fn zeros_before(end: usize, sparsity: f64) -> usize {
    ((end as f64) * sparsity).round() as usize
}

/// Positions (relative to `scores`) of the `k` lowest scores; ties go to the lower position,
/// NaN scores count as highest (never chosen before a number).
pub fn lowest(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let key = |&i: &usize| (if scores[i].is_nan() { f64::INFINITY } else { scores[i] }, i);
    let k = k.min(scores.len());
    if k == 0 {
        return vec![];
    }
    order.select_nth_unstable_by(k - 1, |a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1))
    });
    order.truncate(k);
    order.sort_unstable();
    order
}

/// The drop mask of one row from its scores (true = set to zero).
pub fn row_mask(scores: &[f64], sparsity: f64, pattern: Pattern) -> Vec<bool> {
    let mut mask = vec![false; scores.len()];
    match pattern {
        Pattern::Unstructured => {
            for i in lowest(scores, zeros_before(scores.len(), sparsity)) {
                mask[i] = true;
            }
        }
        Pattern::NofM { n, m } => {
            for (g, group) in scores.chunks(m).enumerate() {
                let k = ((n * group.len()) as f64 / m as f64).round() as usize;
                for i in lowest(group, k) {
                    mask[g * m + i] = true;
                }
            }
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_breaks_ties_by_position_and_skips_nan() {
        assert_eq!(lowest(&[3.0, 1.0, 1.0, 0.5], 2), vec![1, 3]);
        assert_eq!(lowest(&[f64::NAN, 2.0, 1.0], 2), vec![1, 2]);
        assert_eq!(lowest(&[1.0; 5], 3), vec![0, 1, 2]);
        assert!(lowest(&[1.0], 0).is_empty());
    }

    #[test]
    fn masks_have_the_pattern() {
        let s: Vec<f64> = (0..10).map(|i| ((i * 7) % 10) as f64).collect();
        let m = row_mask(&s, 0.5, Pattern::Unstructured);
        assert_eq!(m.iter().filter(|&&b| b).count(), 5);
        for (i, &b) in m.iter().enumerate() {
            assert_eq!(b, s[i] < 5.0);
        }
        let m = row_mask(&s, 0.0, Pattern::NofM { n: 2, m: 4 });
        for g in m.chunks(4).take(2) {
            assert_eq!(g.iter().filter(|&&b| b).count(), 2);
        }
        // Partial last group of 2: round(2·2/4) = 1 zero.
        assert_eq!(m[8..].iter().filter(|&&b| b).count(), 1);
        assert!(Pattern::NofM { n: 4, m: 4 }.validate().is_err());
        assert!(Pattern::NofM { n: 2, m: 4 }.validate().is_ok());
    }

    #[test]
    fn running_rounding_sums_to_the_row_total() {
        for cols in [1, 7, 128, 1000] {
            for s in [0.0, 0.33, 0.5, 0.7, 0.999] {
                let spans = [0, cols / 3, cols / 2, cols];
                let total: usize = spans.windows(2).map(|w| zeros_before(w[1], s) - zeros_before(w[0], s)).sum();
                assert_eq!(total, zeros_before(cols, s));
            }
        }
    }
}
