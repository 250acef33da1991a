//! The scaling mode of the long skips and the coefficient it gives each skip.

use std::fmt;
use std::str::FromStr;

/// How the long skips of a backbone are scaled before they are merged.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SkipScaling {
    /// No scaling ("Org" in the paper).
    #[default]
    None,
    /// Every skip multiplied by 1/sqrt(2).
    InvSqrt2,
    /// CS: skip `i` (1 = outermost) multiplied by `kappa^(i-1)`.
    Constant { kappa: f64 },
    /// LS: every skip gated by one shared calibration module.
    Learned,
    /// LS with one calibration module per skip.
    LearnedPerSkip,
}

/// How one skip is scaled (see [`SkipScaling::factor`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SkipFactor {
    /// Multiplied by this constant.
    Constant(f64),
    /// Multiplied by a calibration gate computed from the skip itself (LS).
    Gate,
}

/// A scaling mode that cannot be used, with what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScalingError {
    #[error(
        "unknown skip scaling `{0}`: expected one of `none`, `inv-sqrt2`, `cs`, `cs:KAPPA` \
         (e.g. `cs:0.5`), `ls`, `ls-per-skip`"
    )]
    Unknown(String),
    #[error("invalid kappa `{0}` in skip scaling: expected a finite number > 0, e.g. `cs:0.5`")]
    BadKappa(String),
    #[error("skip {skip} out of range: a backbone with {num_skips} long skips numbers them 1..={num_skips}")]
    SkipOutOfRange { skip: usize, num_skips: usize },
    #[error(
        "LS calibration over a width of {width} with reduction {reduction} leaves a hidden width \
         of 0: expected a reduction <= {width}"
    )]
    EmptyCalibration { width: usize, reduction: usize },
    #[error(
        "LS calibration cannot gate axis {axis} of a skip shaped {dims:?}: expected 1 <= axis < rank (0 is the batch)"
    )]
    GateAxis { axis: usize, dims: Vec<usize> },
}

impl SkipScaling {
    /// The paper's default CS coefficient.
    pub const DEFAULT_KAPPA: f64 = 0.5;

    /// CS with a validated `kappa` (warns once if it amplifies, see [`SkipScaling::amplifies`]).
    pub fn cs(kappa: f64) -> Result<Self, ScalingError> {
        Self::Constant { kappa }.checked()
    }

    /// Checks the mode can be used: kappa finite and > 0.
    pub fn validate(&self) -> Result<(), ScalingError> {
        match *self {
            Self::Constant { kappa } if !kappa.is_finite() || kappa <= 0.0 => {
                Err(ScalingError::BadKappa(kappa.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// CS with kappa > 1: legal, but it amplifies the inner skips instead of damping them.
    pub fn amplifies(&self) -> bool {
        matches!(*self, Self::Constant { kappa } if kappa > 1.0)
    }

    /// Validates, and logs a warning for an amplifying kappa: what user input goes through.
    fn checked(self) -> Result<Self, ScalingError> {
        self.validate()?;
        if self.amplifies() {
            tracing::warn!("skip scaling {self}: kappa > 1 amplifies the inner long skips instead of damping them");
        }
        Ok(self)
    }

    /// How skip `skip` of `num_skips` (1 = outermost) is scaled: a constant factor, or a learned
    /// gate that depends on the input; an error when `skip` is not in `1..=num_skips`.
    pub fn factor(&self, skip: usize, num_skips: usize) -> Result<SkipFactor, ScalingError> {
        if skip == 0 || skip > num_skips {
            return Err(ScalingError::SkipOutOfRange { skip, num_skips });
        }
        Ok(match *self {
            Self::None => SkipFactor::Constant(1.0),
            Self::InvSqrt2 => SkipFactor::Constant(std::f64::consts::FRAC_1_SQRT_2),
            Self::Constant { kappa } => SkipFactor::Constant(kappa.powi(skip as i32 - 1)),
            Self::Learned | Self::LearnedPerSkip => SkipFactor::Gate,
        })
    }

    /// Whether the mode gates skips with calibration modules (and so adds parameters).
    pub fn is_learned(&self) -> bool {
        matches!(self, Self::Learned | Self::LearnedPerSkip)
    }

    /// How many calibration modules a backbone with `num_skips` skips needs.
    pub fn num_calibrations(&self, num_skips: usize) -> usize {
        match self {
            Self::Learned => 1,
            Self::LearnedPerSkip => num_skips,
            _ => 0,
        }
    }

    /// The official code's `scalelong` flag (0 = none ... 4 = LS per skip).
    pub fn official_flag(&self) -> u8 {
        match self {
            Self::None => 0,
            Self::InvSqrt2 => 1,
            Self::Constant { .. } => 2,
            Self::Learned => 3,
            Self::LearnedPerSkip => 4,
        }
    }
}

impl FromStr for SkipScaling {
    type Err = ScalingError;

    /// Parses the command-line names; the official code's spellings (`inv_sqrt2`, `ls_per_skip`)
    /// are accepted too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let mode = match t.as_str() {
            "none" | "org" => Self::None,
            "inv-sqrt2" | "inv_sqrt2" => Self::InvSqrt2,
            "cs" => Self::Constant { kappa: Self::DEFAULT_KAPPA },
            "ls" => Self::Learned,
            "ls-per-skip" | "ls_per_skip" => Self::LearnedPerSkip,
            _ => match t.strip_prefix("cs:").or_else(|| t.strip_prefix("cs=")) {
                Some(k) => {
                    Self::Constant { kappa: k.trim().parse().map_err(|_| ScalingError::BadKappa(k.to_string()))? }
                }
                None => return Err(ScalingError::Unknown(s.to_string())),
            },
        };
        mode.checked()
    }
}

impl fmt::Display for SkipScaling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::InvSqrt2 => f.write_str("inv-sqrt2"),
            Self::Constant { kappa } => write!(f, "cs:{kappa}"),
            Self::Learned => f.write_str("ls"),
            Self::LearnedPerSkip => f.write_str("ls-per-skip"),
        }
    }
}

impl TryFrom<String> for SkipScaling {
    type Error = ScalingError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SkipScaling> for String {
    fn from(s: SkipScaling) -> Self {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_mode_and_round_trips() {
        for (text, mode) in [
            ("none", SkipScaling::None),
            ("inv-sqrt2", SkipScaling::InvSqrt2),
            ("cs:0.7", SkipScaling::Constant { kappa: 0.7 }),
            ("ls", SkipScaling::Learned),
            ("ls-per-skip", SkipScaling::LearnedPerSkip),
        ] {
            let parsed: SkipScaling = text.parse().unwrap();
            assert_eq!(parsed, mode);
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!("cs".parse::<SkipScaling>().unwrap(), SkipScaling::Constant { kappa: 0.5 });
        assert_eq!("LS_PER_SKIP".parse::<SkipScaling>().unwrap(), SkipScaling::LearnedPerSkip);
    }

    #[test]
    fn rejects_impossible_kappa_and_unknown_names() {
        for bad in ["cs:0", "cs:-0.5", "cs:nan", "cs:inf", "cs:abc", "cs:"] {
            let err = bad.parse::<SkipScaling>().unwrap_err();
            assert!(matches!(err, ScalingError::BadKappa(_)), "{bad}: {err}");
            assert!(err.to_string().contains("finite number > 0"), "{err}");
        }
        assert!(SkipScaling::cs(f64::NAN).is_err());
        let err = "cs0.5".parse::<SkipScaling>().unwrap_err();
        assert!(err.to_string().contains("`cs0.5`") && err.to_string().contains("ls-per-skip"));
        // Amplifying but legal.
        assert!(SkipScaling::cs(1.5).unwrap().amplifies());
        assert!(!SkipScaling::cs(0.9).unwrap().amplifies());
    }

    #[test]
    fn cs_coefficients_follow_the_paper() {
        let cs = SkipScaling::cs(0.5).unwrap();
        // Listed in decoder order (innermost first), as REFERENCE.md does.
        let decoder_order: Vec<SkipFactor> = (1..=6).rev().map(|i| cs.factor(i, 6).unwrap()).collect();
        let want = [1.0 / 32.0, 1.0 / 16.0, 1.0 / 8.0, 0.25, 0.5, 1.0].map(SkipFactor::Constant);
        assert_eq!(decoder_order, want);
        let SkipFactor::Constant(r) = SkipScaling::InvSqrt2.factor(3, 6).unwrap() else { panic!("constant") };
        assert!((r * r - 0.5).abs() < 1e-15);
        assert_eq!(SkipScaling::None.factor(4, 6), Ok(SkipFactor::Constant(1.0)));
        assert_eq!(SkipScaling::Learned.factor(4, 6), Ok(SkipFactor::Gate));
        assert!(matches!(cs.factor(0, 6), Err(ScalingError::SkipOutOfRange { .. })));
        assert!(matches!(cs.factor(7, 6), Err(ScalingError::SkipOutOfRange { .. })));
    }

    #[test]
    fn serde_uses_the_command_line_names() {
        let json = serde_json::to_string(&SkipScaling::Constant { kappa: 0.7 }).unwrap();
        assert_eq!(json, "\"cs:0.7\"");
        let back: SkipScaling = serde_json::from_str(&json).unwrap();
        assert_eq!(back, SkipScaling::Constant { kappa: 0.7 });
        let err = serde_json::from_str::<SkipScaling>("\"cs:-1\"").unwrap_err();
        assert!(err.to_string().contains("finite number > 0"), "{err}");
    }

    #[test]
    fn calibration_counts() {
        assert_eq!(SkipScaling::Learned.num_calibrations(6), 1);
        assert_eq!(SkipScaling::LearnedPerSkip.num_calibrations(6), 6);
        assert_eq!(SkipScaling::cs(0.5).unwrap().num_calibrations(6), 0);
        assert_eq!(SkipScaling::LearnedPerSkip.official_flag(), 4);
    }
}
