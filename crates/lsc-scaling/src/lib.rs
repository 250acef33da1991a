//! ScaleLong scaling of the long skip connections (LSCs) of UNet-like diffusion backbones.
//!
//! A backbone with `N` long skips numbers them `i = 1..=N` from the outermost (the first encoder
//! block's output, merged last by the decoder) to the innermost. Before a skip is merged it is
//! multiplied by a coefficient chosen by [`SkipScaling`]:
//!
//! | mode | command line | coefficient on skip `i` |
//! |---|---|---|
//! | [`SkipScaling::None`] | `none` | 1 |
//! | [`SkipScaling::InvSqrt2`] | `inv-sqrt2` | 2^-0.5 |
//! | [`SkipScaling::Constant`] (CS) | `cs:0.5` | kappa^(i-1) |
//! | [`SkipScaling::Learned`] (LS) | `ls` | gate from one shared [`Calibration`] |
//! | [`SkipScaling::LearnedPerSkip`] | `ls-per-skip` | gate from calibration module `i` |
//!
//! This crate knows nothing of backbones: a backbone asks [`SkipScaling::factor`]
//! for each skip, or builds [`Calibration`] gates over whichever axis it wants gated.
//!
//! ```
//! use scalelong_lsc_scaling::{SkipFactor, SkipScaling};
//! let cs: SkipScaling = "cs:0.5".parse().unwrap();
//! // Six skips, innermost (i = 6) gets the smallest factor.
//! assert_eq!(cs.factor(6, 6), Ok(SkipFactor::Constant(1.0 / 32.0)));
//! assert_eq!(cs.factor(1, 6), Ok(SkipFactor::Constant(1.0)));
//! ```

mod calibration;
mod scaling;

pub use calibration::{Calibration, DEFAULT_REDUCTION};
pub use scaling::{ScalingError, SkipFactor, SkipScaling};
