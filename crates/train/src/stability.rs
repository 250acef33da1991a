//! Measures over the series a run records (docs/stability.md has the definitions and why).

/// Mean absolute relative change between consecutive values, `mean_k |y_k - y_{k-1}| / |y_{k-1}|`:
/// how much a quantity jumps from one record to the next. NaN with fewer than two values.
pub fn mean_abs_relative_change(y: &[f64]) -> f64 {
    let changes: Vec<f64> = y.windows(2).map(|w| (w[1] - w[0]).abs() / w[0].abs()).collect();
    mean(&changes)
}

/// Mean over every window of `w` consecutive values of the coefficient of variation (population
/// standard deviation over |mean|): the oscillation around the local trend, scale-free.
/// NaN when there are fewer than `w` values.
pub fn windowed_spread(y: &[f64], w: usize) -> f64 {
    let w = w.max(2);
    let cvs: Vec<f64> = y
        .windows(w)
        .map(|win| {
            let m = mean(win);
            (win.iter().map(|v| (v - m).powi(2)).sum::<f64>() / w as f64).sqrt() / m.abs()
        })
        .collect();
    mean(&cvs)
}

/// Trailing moving average over `w` values (over fewer at the start).
pub fn moving_average(y: &[f64], w: usize) -> Vec<f64> {
    let w = w.max(1);
    (0..y.len()).map(|i| mean(&y[(i + 1).saturating_sub(w)..=i])).collect()
}

/// Mean of the last `k` values (all of them when there are fewer).
pub fn tail_mean(y: &[f64], k: usize) -> f64 {
    mean(&y[y.len().saturating_sub(k.max(1))..])
}

/// The first step at which the trailing moving average (over `w` records) of `y` is at or below
/// `target`; `None` if it never is.
pub fn steps_to_reach(steps: &[u64], y: &[f64], target: f64, w: usize) -> Option<u64> {
    moving_average(y, w).iter().zip(steps).find(|(v, _)| **v <= target).map(|(_, s)| *s)
}

/// The median of the finite values (NaN when there are none).
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn mean(y: &[f64]) -> f64 {
    y.iter().sum::<f64>() / y.len() as f64
}

/// A value's spread over seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for one value.
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// Over the finite values (NaN statistics when there are none).
    pub fn of(values: &[f64]) -> Self {
        let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        let m = mean(&v);
        let std = match v.len() {
            0 => f64::NAN,
            1 => 0.0,
            n => (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt(),
        };
        let min = v.iter().copied().fold(f64::NAN, f64::min);
        let max = v.iter().copied().fold(f64::NAN, f64::max);
        Self { mean: m, std, min, max, n: v.len() }
    }
}

impl std::fmt::Display for Spread {
    /// `mean ± std` with three significant digits.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.n == 0 {
            return f.write_str("n/a");
        }
        write!(f, "{} ± {}", sig3(self.mean), sig3(self.std))
    }
}

/// Three significant digits, scientific outside [1e-3, 1e5).
pub fn sig3(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 || (1e-3..1e5).contains(&v.abs()) {
        let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.2e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_change_by_hand() {
        // |2-1|/1 = 1, |1-2|/2 = 0.5, |1.5-1|/1 = 0.5 -> mean 2/3.
        assert!((mean_abs_relative_change(&[1.0, 2.0, 1.0, 1.5]) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(mean_abs_relative_change(&[3.0, 3.0, 3.0]), 0.0);
        assert!(mean_abs_relative_change(&[1.0]).is_nan());
    }

    #[test]
    fn windowed_spread_by_hand() {
        // Windows of 2: [1,3] std 1 mean 2 -> 0.5; [3,3] -> 0; [3,1] -> 0.5. Mean 1/3.
        assert!((windowed_spread(&[1.0, 3.0, 3.0, 1.0], 2) - 1.0 / 3.0).abs() < 1e-12);
        // A steady ramp oscillates less than a zig-zag with the same mean.
        let ramp = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let zigzag = [1.0, 6.0, 2.0, 5.0, 3.0, 4.0];
        assert!(windowed_spread(&ramp, 3) < windowed_spread(&zigzag, 3));
        // Scale-free: multiplying the series leaves it unchanged.
        let scaled: Vec<f64> = zigzag.iter().map(|v| v * 1e4).collect();
        assert!((windowed_spread(&zigzag, 3) - windowed_spread(&scaled, 3)).abs() < 1e-12);
        assert!(windowed_spread(&[1.0, 2.0], 3).is_nan());
    }

    #[test]
    fn reaching_a_target_by_hand() {
        let steps = [10, 20, 30, 40, 50];
        let loss = [1.0, 0.5, 0.7, 0.3, 0.2];
        assert_eq!(moving_average(&loss, 2), vec![1.0, 0.75, 0.6, 0.5, 0.25]);
        assert_eq!(steps_to_reach(&steps, &loss, 0.5, 1), Some(20));
        assert_eq!(steps_to_reach(&steps, &loss, 0.5, 2), Some(40));
        assert_eq!(steps_to_reach(&steps, &loss, 0.1, 1), None);
        assert!((tail_mean(&loss, 2) - 0.25).abs() < 1e-12);
        assert!((tail_mean(&loss, 99) - 0.54).abs() < 1e-12);
    }

    #[test]
    fn spread_over_seeds() {
        let s = Spread::of(&[1.0, 2.0, 3.0, f64::NAN]);
        assert_eq!((s.mean, s.std, s.min, s.max, s.n), (2.0, 1.0, 1.0, 3.0, 3));
        assert_eq!(s.to_string(), "2.00 ± 1.00");
        assert_eq!(Spread::of(&[5.0]).std, 0.0);
        assert_eq!(Spread::of(&[]).to_string(), "n/a");
        assert_eq!(sig3(12345.0), "12345");
        assert_eq!(sig3(2.0e5), "2.00e5");
    }
}
