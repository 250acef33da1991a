//! Euler steps on the VP-SDE, as the official `euler_maruyama`: the probability-flow ODE, and the
//! reverse SDE with noise on every step but the last. Times `[0, linspace(eps, T, steps)]`, walked down.

use candle_core::{Result, Tensor};
use rand::RngCore;

use super::{axpby, predict, Sampler};
use crate::discrete::linspace;
use crate::noise::randn_like;
use crate::{NoisePredictor, VpSde};

fn official_times(sde: &VpSde, steps: usize, eps: f64) -> Result<Vec<f64>> {
    if steps == 0 || !(eps > 0.0 && eps < sde.t_max()) {
        candle_core::bail!(
            "Euler sampler needs steps >= 1 and 0 < eps < {}, got steps {steps}, eps {eps}",
            sde.t_max()
        );
    }
    let mut times = vec![0.0];
    times.extend(linspace(eps, sde.t_max(), steps));
    Ok(times)
}

/// One Euler step from t to s < t of `dx = [-beta x / 2 + k beta eps / sigma] dt` (k = 1/2 for the
/// ODE, 1 for the reverse SDE), with the score -eps / sigma.
fn euler_mean(sde: &VpSde, x: &Tensor, eps: &Tensor, t: f64, s: f64, k: f64) -> Result<Tensor> {
    let (beta, dt) = (sde.beta(t), s - t);
    axpby(1.0 - 0.5 * beta * dt, x, k * beta * dt / sde.sigma(t), eps)
}

/// The probability-flow ODE with Euler steps (the official training-time sample grids: 50 steps).
#[derive(Debug, Clone, PartialEq)]
pub struct EulerOde {
    pub sde: VpSde,
    pub steps: usize,
    /// Last time before 0 (official: 1e-3).
    pub eps: f64,
}

impl EulerOde {
    pub fn new(sde: VpSde, steps: usize) -> Self {
        Self { sde, steps, eps: 1e-3 }
    }
}

impl Sampler for EulerOde {
    fn sample(&self, model: &dyn NoisePredictor, x_init: &Tensor, _rng: &mut dyn RngCore) -> Result<Tensor> {
        let times = official_times(&self.sde, self.steps, self.eps)?;
        let mut x = x_init.clone();
        for w in times.windows(2).rev() {
            let (s, t) = (w[0], w[1]);
            let eps = predict(model, &x, VpSde::model_input(t))?;
            x = euler_mean(&self.sde, &x, &eps, t, s, 0.5)?;
        }
        Ok(x)
    }

    fn model_evaluations(&self) -> usize {
        self.steps
    }
}

/// The reverse SDE with Euler-Maruyama steps (the official final FID sampler: 1000 steps).
#[derive(Debug, Clone, PartialEq)]
pub struct EulerMaruyama {
    pub sde: VpSde,
    pub steps: usize,
    pub eps: f64,
}

impl EulerMaruyama {
    pub fn new(sde: VpSde, steps: usize) -> Self {
        Self { sde, steps, eps: 1e-3 }
    }
}

impl Sampler for EulerMaruyama {
    fn sample(&self, model: &dyn NoisePredictor, x_init: &Tensor, rng: &mut dyn RngCore) -> Result<Tensor> {
        let times = official_times(&self.sde, self.steps, self.eps)?;
        let mut x = x_init.clone();
        for w in times.windows(2).rev() {
            let (s, t) = (w[0], w[1]);
            let eps = predict(model, &x, VpSde::model_input(t))?;
            let mean = euler_mean(&self.sde, &x, &eps, t, s, 1.0)?;
            x = if s == 0.0 { mean } else { (mean + (randn_like(&x, rng)? * (self.sde.beta(t) * (t - s)).sqrt())?)? };
        }
        Ok(x)
    }

    fn model_evaluations(&self) -> usize {
        self.steps
    }
}
