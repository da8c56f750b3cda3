//! Medians and ratios. A ratio is taken per round (postern and the
//! reference measured minutes apart under the same background load) and
//! only then summarised by its median, so one noisy round moves it little.

/// The median of the finite values; `None` if there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// `a / b`, if both are known and `b` is positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// The median over rounds of the per-round ratio `a[i] / b[i]` (rounds in
/// which either side is missing are left out).
pub fn median_ratio(a: &[Option<f64>], b: &[Option<f64>]) -> Option<f64> {
    median(&ratios(a, b))
}

/// The per-round ratios `a[i] / b[i]` that exist.
pub fn ratios(a: &[Option<f64>], b: &[Option<f64>]) -> Vec<f64> {
    a.iter().zip(b).filter_map(|(x, y)| ratio(*x, *y)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratios_need_both_sides() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }

    #[test]
    fn ratio_is_per_round_then_median() {
        // Round 2 ran under load: both sides slow, the ratio still 0.5.
        let postern = [Some(100.0), Some(10.0), Some(110.0)];
        let stunnel = [Some(200.0), Some(20.0), Some(200.0)];
        assert_eq!(median_ratio(&postern, &stunnel), Some(0.5));
        // The ratio of medians would differ: 100 / 200 vs per-round 0.5, 0.5, 0.55.
        let missing = [Some(1.0), None, Some(3.0)];
        let other = [Some(2.0), Some(2.0), Some(2.0)];
        assert_eq!(median_ratio(&missing, &other), Some(1.0));
    }
}
