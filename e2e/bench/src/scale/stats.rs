//! Pure statistics over instants: windows, gaps, medians.

/// The most instants in any window `[t, t + width)`.
pub fn max_in_window(times: &[f64], width: f64) -> u32 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut best = 0;
    let mut j = 0;
    for i in 0..sorted.len() {
        while j < sorted.len() && sorted[j] < sorted[i] + width {
            j += 1;
        }
        best = best.max(j - i);
    }
    best as u32
}

/// The smallest gap between consecutive instants.
pub fn min_gap(times: &[f64]) -> Option<f64> {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .windows(2)
        .map(|w| w[1] - w[0])
        .min_by(f64::total_cmp)
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_gaps_and_medians() {
        assert_eq!(max_in_window(&[], 1.0), 0);
        assert_eq!(max_in_window(&[0.0, 1.0, 2.0, 3.0], 1.0), 1);
        assert_eq!(max_in_window(&[0.0, 0.99, 2.0], 1.0), 2);
        assert_eq!(max_in_window(&[3.0, 0.2, 0.1, 0.3, 5.0], 1.0), 3);
        assert!((min_gap(&[0.0, 1.5, 1.1]).unwrap() - 0.4).abs() < 1e-9);
        assert_eq!(min_gap(&[1.0]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
