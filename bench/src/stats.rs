//! Min, median and max of a series of measurements.

/// Summary of one series; `median` of an even count is the mean of the
/// two middle values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// `None` for an empty series.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            min: v[0],
            median,
            max: v[n - 1],
            n,
        })
    }
}

/// Index of the value closest to the median (for picking a representative run).
pub fn median_index(values: &[f64]) -> Option<usize> {
    let s = Summary::of(values)?;
    values
        .iter()
        .enumerate()
        .min_by(|a, b| (a.1 - s.median).abs().total_cmp(&(b.1 - s.median).abs()))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_and_even_medians() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max, s.n), (1.0, 2.0, 3.0, 3));
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn representative_run() {
        assert_eq!(median_index(&[10.0, 1.0, 5.0, 6.0, 100.0]), Some(3));
    }
}
