//! `metrics.jsonl`: one JSON object per log interval. [`MetricsLine`] is what the trainer writes
//! and the study reads back (`scalelong plot` reads any numeric field by name). JSON has no NaN:
//! a non-finite value is written as `null` and read back as NaN.

use crate::ConfigError;
use serde::{Deserialize, Deserializer, Serialize};

use crate::diagnostics::Diagnostics;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    /// Steps completed.
    pub step: u64,
    /// Mean loss of the interval's steps that were not skipped (NaN if all were).
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    /// Global gradient norm of the last step (before clipping).
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    /// Images per second over the interval.
    #[serde(deserialize_with = "nan_if_null")]
    pub img_per_s: f64,
    /// Steps skipped for a non-finite loss or gradient since the run began.
    pub skipped_total: u64,
    /// FID of the EMA weights' samples, on the steps `eval.every` asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid: Option<f64>,
    /// KID (mean over subsets) and its standard deviation, where the reference has features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid_std: Option<f64>,
    /// Written once, on the line of the step where the run stopped for `train.max_nonfinite`
    /// non-finite steps in a row: the run has diverged (resuming would diverge again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub diverged: bool,
    /// The stability record, on the steps `diagnostics.every` asks for (its fields sit beside the
    /// others in the same object).
    #[serde(skip)]
    pub diagnostics: Option<Diagnostics>,
}

impl MetricsLine {
    /// The line as written (one JSON object, no newline).
    pub fn to_json(&self) -> String {
        let mut line = serde_json::to_value(self).expect("metrics serialise");
        if let (Some(d), Some(obj)) = (&self.diagnostics, line.as_object_mut()) {
            if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(d) {
                obj.extend(fields);
            }
        }
        line.to_string()
    }

    /// The line's numbers by name, for TensorBoard (diagnostics: the feature norm and validation losses).
    pub fn scalars(&self) -> Vec<(&'static str, f64)> {
        let mut v =
            vec![("loss", self.loss), ("lr", self.lr), ("grad_norm", self.grad_norm), ("img_per_s", self.img_per_s)];
        v.extend(self.fid.map(|f| ("fid", f)));
        v.extend(self.kid.map(|k| ("kid", k)));
        if let Some(d) = &self.diagnostics {
            v.extend([("feature_norm", d.feature_norm), ("val_loss", d.val_loss), ("val_loss_ema", d.val_loss_ema)]);
        }
        v
    }

    /// Reads one line; a line with diagnostics (it has `feature_norm`) must have all of them.
    pub fn parse(line: &str) -> Result<Self, ConfigError> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let mut m: Self = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        if v.get("feature_norm").is_some() {
            m.diagnostics = Some(serde_json::from_value(v).map_err(|e| format!("diagnostics: {e}"))?);
        }
        Ok(m)
    }
}

/// A float that may have been written as `null` (non-finite).
pub(crate) fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A list of floats, any of which may have been written as `null`.
pub(crate) fn nans_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Ok(Vec::<Option<f64>>::deserialize(d)?.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_with_non_finite_values() {
        let mut line = MetricsLine {
            step: 7,
            loss: f64::NAN,
            lr: 1e-3,
            grad_norm: f64::INFINITY,
            img_per_s: 12.5,
            skipped_total: 2,
            fid: None,
            kid: None,
            kid_std: None,
            diverged: false,
            diagnostics: None,
        };
        assert!(
            !line.to_json().contains("fid") && !line.to_json().contains("diverged"),
            "no evaluation, no field: {}",
            line.to_json()
        );
        let back = MetricsLine::parse(&line.to_json()).unwrap();
        assert!(back.loss.is_nan() && back.grad_norm.is_nan() && back.diagnostics.is_none());
        assert_eq!((back.step, back.lr, back.skipped_total), (7, 1e-3, 2));
        line.loss = 0.5;
        line.grad_norm = 1.0;
        line.diagnostics = Some(Diagnostics {
            feature_norm: 3.0,
            block_feature_norms: vec![1.0, f64::NAN],
            skip_norms: vec![1.0],
            scaled_skip_norms: vec![0.5],
            block_grad_norms: vec![0.1, 0.2],
            gates: vec![crate::diagnostics::GateStats { mean: 0.5, min: 0.4, max: 0.6 }],
            val_loss: 0.4,
            val_loss_ema: f64::NAN,
            robustness: vec![1.0, 2.0],
        });
        (line.fid, line.kid, line.kid_std) = (Some(12.5), Some(0.01), Some(0.002));
        let text = line.to_json();
        assert!(text.contains("\"feature_norm\":3.0") && text.contains("\"step\":7"), "{text}");
        assert_eq!(MetricsLine::parse(&text).unwrap().fid, Some(12.5));
        let back = MetricsLine::parse(&text).unwrap();
        let d = back.diagnostics.unwrap();
        assert!(d.val_loss_ema.is_nan() && d.block_feature_norms[1].is_nan());
        assert_eq!((d.gates[0].max, d.robustness.clone()), (0.6, vec![1.0, 2.0]));
        // A diagnostics line that lacks one of its fields is an error, not a line without them.
        let broken = text.replace("\"val_loss\":0.4,", "");
        assert!(MetricsLine::parse(&broken).unwrap_err().to_string().contains("val_loss"));
    }
}
