//! Euler steps on the VP-SDE, as the official `euler_maruyama`: the probability-flow ODE, and the
//! reverse SDE with noise on every step but the last. Times `[0, linspace(eps, T, steps)]`, walked down.

use candle_core::{Result, Tensor};
use rand::RngCore;

use super::{axpby, predict, Sampler};
use crate::discrete::linspace;
use crate::noise::randn_like;
use crate::vp_arith::{with_marginals, Marginals, TimeArithmetic};
use crate::{NoisePredictor, VpSde};

/// The official times `[0, linspace(eps, T, steps)]` (numpy, float64).
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

/// Walks the times down with Euler steps of `dx = [-beta x / 2 + k g^2 eps / sigma] dt` (k = 1/2
/// for the ODE, 1 for the reverse SDE; the score is -eps / sigma), in the arithmetic of `m`.
/// `noise(x, g^2 (t - s))` adds the reverse SDE's noise of that variance on all but the last step.
fn walk<M: Marginals>(
    m: &M,
    model: &dyn NoisePredictor,
    x_init: &Tensor,
    times: &[f64],
    k: f64,
    noise: &mut dyn FnMut(Tensor, f64) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut x = x_init.clone();
    for w in times.windows(2).rev() {
        // The official code holds the times in a float32 tensor (`torch.tensor(timesteps).to(x)`).
        let (s, t) = (m.c(w[0]), m.c(w[1]));
        let eps = predict(model, &x, VpSde::model_input(t.into()))?;
        let ((beta, g2), dt) = (m.beta_g2(t), s - t);
        let a = m.c(1.0) - m.c(0.5) * beta * dt;
        let b = m.c(k) * g2 * m.inv_sigma_sde(t) * dt;
        let mean = axpby(a.into(), &x, b.into(), &eps)?;
        x = if w[0] == 0.0 { mean } else { noise(mean, (g2 * (t - s)).into())? };
    }
    Ok(x)
}

/// The probability-flow ODE with Euler steps (the official training-time sample grids: 50 steps).
#[derive(Debug, Clone, PartialEq)]
pub struct EulerOde {
    pub sde: VpSde,
    pub steps: usize,
    /// Last time before 0 (official: 1e-3).
    pub eps: f64,
    pub arithmetic: TimeArithmetic,
}

impl EulerOde {
    pub fn new(sde: VpSde, steps: usize) -> Self {
        Self { sde, steps, eps: 1e-3, arithmetic: TimeArithmetic::Official }
    }

    pub fn with_arithmetic(self, arithmetic: TimeArithmetic) -> Self {
        Self { arithmetic, ..self }
    }
}

impl Sampler for EulerOde {
    fn sample(&self, model: &dyn NoisePredictor, x_init: &Tensor, _rng: &mut dyn RngCore) -> Result<Tensor> {
        let times = official_times(&self.sde, self.steps, self.eps)?;
        let mut no_noise = |mean: Tensor, _: f64| Ok(mean);
        with_marginals!(self.arithmetic, self.sde, |m| walk(&m, model, x_init, &times, 0.5, &mut no_noise))
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
    pub arithmetic: TimeArithmetic,
}

impl EulerMaruyama {
    pub fn new(sde: VpSde, steps: usize) -> Self {
        Self { sde, steps, eps: 1e-3, arithmetic: TimeArithmetic::Official }
    }

    pub fn with_arithmetic(self, arithmetic: TimeArithmetic) -> Self {
        Self { arithmetic, ..self }
    }
}

impl Sampler for EulerMaruyama {
    fn sample(&self, model: &dyn NoisePredictor, x_init: &Tensor, rng: &mut dyn RngCore) -> Result<Tensor> {
        let times = official_times(&self.sde, self.steps, self.eps)?;
        let mut noise = |mean: Tensor, var: f64| {
            let z = randn_like(&mean, rng)?;
            mean + (z * var.sqrt())?
        };
        with_marginals!(self.arithmetic, self.sde, |m| walk(&m, model, x_init, &times, 1.0, &mut noise))
    }

    fn model_evaluations(&self) -> usize {
        self.steps
    }
}
