//! How one decoder stage scales the long skip it merges; shared by every backbone.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use scalelong_lsc_scaling::{Calibration, SkipFactor, SkipScaling};

use crate::architecture::GATE_PREFIX;
use crate::taps::Taps;

#[derive(Debug, Clone)]
pub(crate) enum SkipScale {
    Identity,
    Constant(f64),
    Gate(Calibration),
}

impl SkipScale {
    /// The scale of every skip of `n`, outermost (i = 1) first. LS gates come from `gate(i, vb)`:
    /// one shared under `se`, or one per skip under `se.{n - i}` (`k = 0` for the skip merged first).
    pub(crate) fn for_skips<'a>(
        scaling: SkipScaling,
        n: usize,
        vb: &VarBuilder<'a>,
        gate: impl Fn(usize, VarBuilder<'a>) -> Result<Calibration>,
    ) -> Result<Vec<Self>> {
        if scaling == SkipScaling::Learned {
            return Ok(vec![Self::Gate(gate(1, vb.pp(GATE_PREFIX))?); n]);
        }
        (1..=n)
            .map(|i| match scaling.factor(i, n).map_err(candle_core::Error::wrap)? {
                SkipFactor::Constant(1.0) => Ok(Self::Identity),
                SkipFactor::Constant(c) => Ok(Self::Constant(c)),
                SkipFactor::Gate => Ok(Self::Gate(gate(i, vb.pp(format!("{GATE_PREFIX}.{}", n - i)))?)),
            })
            .collect()
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
