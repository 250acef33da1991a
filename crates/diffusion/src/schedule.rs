//! A noise schedule of either kind, with the network-time contract of each.

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
