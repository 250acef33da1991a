//! A noise schedule of either kind, with the network-time contract of each.

use candle_core::{Result, Tensor};

use crate::objective::coefficients;
use crate::{DiscreteSchedule, VpSde};

/// Continuous VP-SDE (the official U-ViT models) or a discrete DDPM schedule (diffusers models).
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Vp(VpSde),
    Discrete(DiscreteSchedule),
}

impl Schedule {
    /// alpha_bar at the time a network is given as input: `t * 999` for VP, the step for discrete.
    pub fn alpha_bar_at_input(&self, t_input: f64) -> f64 {
        match self {
            Self::Vp(sde) => sde.alpha_bar(VpSde::time_from_model_input(t_input)),
            Self::Discrete(d) => d.alpha_bar((t_input.round().max(0.0) as usize).min(d.len() - 1)),
        }
    }

    /// Per-sample `(alpha, sigma)` at the network time inputs `t_input` (B,), shaped to broadcast
    /// against `x` (B, ...) on its device and in its dtype.
    pub fn alpha_sigma_at_inputs(&self, t_input: &Tensor, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = t_input.to_device(&candle_core::Device::Cpu)?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let ab: Vec<f64> = t.iter().map(|&t| self.alpha_bar_at_input(t)).collect();
        let alpha = coefficients(&ab.iter().map(|v| v.sqrt()).collect::<Vec<_>>(), x)?;
        let sigma = coefficients(&ab.iter().map(|v| (1.0 - v).sqrt()).collect::<Vec<_>>(), x)?;
        Ok((alpha, sigma))
    }

    /// Draws a training time: t ~ U(0, 1) for VP, n uniform in 0..len for discrete. Returns
    /// `(network time input, alpha_bar)`.
    pub(crate) fn sample_time(&self, u: f64) -> (f64, f64) {
        match self {
            Self::Vp(sde) => (VpSde::model_input(u), sde.alpha_bar(u)),
            Self::Discrete(d) => {
                let n = ((u * d.len() as f64) as usize).min(d.len() - 1);
                (n as f64, d.alpha_bar(n))
            }
        }
    }
}
