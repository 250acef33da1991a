//! An exactly solvable model, for checking samplers: data x0 ~ N(mu, s^2) per dimension.

use candle_core::{Result, Tensor};

use crate::{NoisePredictor, Schedule};

/// The exact noise prediction for Gaussian data under a schedule:
/// `eps*(x_t) = sigma (x_t - a mu) / (a^2 s^2 + sigma^2)` with `a = sqrt(alpha_bar)`, `sigma = sqrt(1 - alpha_bar)`.
/// A perfect sampler driven by it returns samples of N(mu, s^2).
#[derive(Debug, Clone)]
pub struct GaussianData {
    /// Per-dimension mean and standard deviation, shaped like one sample (e.g. (C, H, W)).
    pub mu: Tensor,
    pub s: Tensor,
    pub schedule: Schedule,
}

impl NoisePredictor for GaussianData {
    fn predict_noise(&self, x: &Tensor, t_input: &Tensor) -> Result<Tensor> {
        let (a, sigma) = self.schedule.alpha_sigma_at_inputs(t_input, x)?;
        let (mu, s2) = (self.mu.to_dtype(x.dtype())?.unsqueeze(0)?, self.s.to_dtype(x.dtype())?.sqr()?.unsqueeze(0)?);
        let centred = x.broadcast_sub(&mu.broadcast_mul(&a)?)?;
        let denom = s2.broadcast_mul(&a.sqr()?)?.broadcast_add(&sigma.sqr()?)?;
        centred.broadcast_mul(&sigma)?.broadcast_div(&denom)
    }
}
