//! Small statistics over benchmark samples: median with min–max ([`Summary`]) and ratios
//! paired round by round (each round runs every snapshotter once, so a ratio of two values
//! from the same round cancels the machine's load drift between rounds).

use std::collections::BTreeMap;

/// Median and range of a set of values.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// Summarizes `values` (NaNs ignored); `None` when nothing is left.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Summary> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            n,
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// Ratios `a[round] / b[round]` over the rounds both have (and `b` is non-zero).
pub fn paired_ratios(a: &BTreeMap<usize, f64>, b: &BTreeMap<usize, f64>) -> Vec<f64> {
    a.iter()
        .filter_map(|(round, x)| b.get(round).filter(|y| **y > 0.0).map(|y| x / y))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_and_range() {
        let s = Summary::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 2.0, 1.0, 3.0));
        let s = Summary::of([4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of([]).is_none());
        assert!(Summary::of([f64::NAN]).is_none());
        assert_eq!(Summary::of([f64::NAN, 5.0]).unwrap().median, 5.0);
    }

    #[test]
    fn ratios_pair_by_round_only() {
        let a = BTreeMap::from([(0, 1.0), (1, 2.0), (2, 9.0)]);
        let b = BTreeMap::from([(0, 2.0), (1, 4.0), (3, 1.0)]);
        assert_eq!(paired_ratios(&a, &b), vec![0.5, 0.5]);
        let zero = BTreeMap::from([(0, 0.0)]);
        assert!(paired_ratios(&a, &zero).is_empty());
    }
}
