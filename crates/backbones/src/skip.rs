//! How one decoder stage scales the long skip it merges; shared by every backbone.

use candle_core::{Result, Tensor};
use scalelong_lsc_scaling::Calibration;

use crate::taps::Taps;

#[derive(Debug, Clone)]
pub(crate) enum SkipScale {
    Identity,
    Constant(f64),
    Gate(Calibration),
}

impl SkipScale {
    /// The constant-mode scale of skip `i` of `n` (1 = outermost); learned modes return `None`.
    pub(crate) fn constant(scaling: scalelong_lsc_scaling::SkipScaling, i: usize, n: usize) -> Option<Self> {
        match scaling.constant_coefficient(i, n)? {
            1.0 => Some(Self::Identity),
            c => Some(Self::Constant(c)),
        }
    }

    /// The scaled skip; an LS gate is recorded in `taps` (innermost first, as the decoder runs).
    pub(crate) fn apply(&self, skip: &Tensor, taps: Option<&mut Taps>) -> Result<Tensor> {
        match self {
            Self::Identity => Ok(skip.clone()),
            Self::Constant(c) => skip * *c,
            Self::Gate(cal) => {
                let gate = cal.gate(skip)?;
                if let Some(taps) = taps {
                    taps.gates.push(gate.clone());
                }
                skip.broadcast_mul(&gate)
            }
        }
    }
}
