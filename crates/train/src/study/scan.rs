//! What a scan records of each run: whether it diverged, how often its loss spiked, how much its
//! feature norm grew and jumped, where its validation loss ended (docs/stability.md).

use super::{tail, RunRecord};
use crate::stability::{mean_abs_relative_change, median, sig3};

/// A loss record is a spike when it exceeds this many times the median of the records before it.
pub const SPIKE_FACTOR: f64 = 2.0;
/// How many earlier records that median takes (no spike is counted before there are this many).
pub const SPIKE_WINDOW: usize = 20;

/// Loss records above [`SPIKE_FACTOR`] x the median of the previous [`SPIKE_WINDOW`] finite
/// records; non-finite records are not counted here (they are skipped steps).
pub fn spikes(loss: &[(u64, f64)]) -> usize {
    let finite: Vec<f64> = loss.iter().map(|l| l.1).filter(|l| l.is_finite()).collect();
    (SPIKE_WINDOW..finite.len()).filter(|&k| finite[k] > SPIKE_FACTOR * median(&finite[k - SPIKE_WINDOW..k])).count()
}

/// One run's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub diverged_at: Option<u64>,
    /// Finished without learning ([`RunRecord::stalled`]).
    pub stalled: bool,
    pub skipped: u64,
    pub spikes: usize,
    /// Final feature norm over the first record's (NaN without records).
    pub norm_growth: f64,
    /// Mean absolute relative change of the feature norm between records (its oscillation).
    pub norm_change: f64,
    /// Mean of the last records of the EMA validation loss.
    pub final_val_loss: f64,
}

impl Outcome {
    pub fn of(r: &RunRecord) -> Self {
        Self {
            diverged_at: r.diverged_at,
            stalled: r.stalled(),
            skipped: r.skipped,
            spikes: spikes(&r.all_loss),
            norm_growth: r.feature_norm.first().map_or(f64::NAN, |first| tail(&r.feature_norm) / first),
            norm_change: mean_abs_relative_change(&r.feature_norm),
            final_val_loss: tail(&r.val_loss_ema),
        }
    }
}

/// Every run as a row, in the order given: cell, mode, seed and its [`Outcome`].
pub fn table(records: &[RunRecord]) -> String {
    let mut s = String::from(
        "| cell | mode | seed | diverged at | stalled | skipped steps | loss spikes | feature norm growth | feature norm change | final val loss (EMA) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let value = |v: f64| if v.is_finite() { sig3(v) } else { "-".to_string() };
    for r in records {
        let o = Outcome::of(r);
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.cell,
            r.mode,
            r.seed,
            o.diverged_at.map_or("-".to_string(), |s| s.to_string()),
            if o.stalled { "yes" } else { "-" },
            o.skipped,
            o.spikes,
            value(o.norm_growth),
            value(o.norm_change),
            value(o.final_val_loss)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalelong_backbones::SkipScaling;

    #[test]
    fn spikes_against_the_running_median() {
        let mut loss: Vec<(u64, f64)> = (0..40).map(|k| (k, if k % 2 == 0 { 1.0 } else { 1.2 })).collect();
        assert_eq!(spikes(&loss), 0);
        loss[10].1 = 5.0; // inside the first window: not counted
        loss[25].1 = 2.5; // the 20 before: nine 1.0, ten 1.2 and the 5.0; median 1.2, 2.5 > 2.4
        loss[30].1 = 2.1; // not above 2 x 1.2
        loss[33].1 = f64::NAN; // skipped step: ignored
        assert_eq!(spikes(&loss), 1);
    }

    #[test]
    fn outcome_of_a_run() {
        let mut r = RunRecord::new(SkipScaling::None, 1);
        r.feature_norm = vec![2.0, 3.0, 6.0];
        r.val_loss_ema = vec![0.5, 0.4, 0.3];
        r.val_loss = vec![1.0, 0.95, 0.95];
        r.skipped = 2;
        let o = Outcome::of(&r);
        // tail = mean of the last 5 (here all 3) records: 11/3 over 2.
        assert!((o.norm_growth - 11.0 / 6.0).abs() < 1e-12 && (o.final_val_loss - 0.4).abs() < 1e-12);
        assert!((o.norm_change - 0.75).abs() < 1e-12); // (0.5 + 1.0) / 2
        assert_eq!((o.skipped, o.spikes, o.diverged_at, o.stalled), (2, 0, None, true));
        r.val_loss[2] = 0.5; // final 0.8 of the first
        assert!(!Outcome::of(&r).stalled);
        r.diverged_at = Some(7);
        r.cell = "depth=12".into();
        assert!(table(&[r]).contains("| depth=12 | none | 1 | 7 | - | 2 | 0 | 1.83 | 0.750 | 0.400 |"));
    }
}
