//! DPM-Solver++ 2M (Lu et al. 2022) as diffusers' `DPMSolverMultistepScheduler` with its defaults:
//! data prediction, second-order multistep with the midpoint rule, "linspace" timesteps, a final
//! sigma of zero reached with a first-order step.

use candle_core::{Result, Tensor};
use rand::RngCore;

use super::{axpby, predict, Sampler};
use crate::discrete::linspace;
use crate::{DiscreteSchedule, NoisePredictor};

#[derive(Debug, Clone, PartialEq)]
pub struct DpmSolverPP2M {
    pub schedule: DiscreteSchedule,
    pub steps: usize,
}

impl DpmSolverPP2M {
    pub fn new(schedule: DiscreteSchedule, steps: usize) -> Self {
        Self { schedule, steps }
    }

    /// `linspace(0, N - 1, steps + 1)` rounded half to even (as numpy), highest first, 0 dropped.
    pub fn timesteps(&self) -> Vec<usize> {
        let n = self.schedule.len();
        let mut t: Vec<usize> =
            linspace(0.0, (n - 1) as f64, self.steps + 1).into_iter().map(|v| v.round_ties_even() as usize).collect();
        t.reverse();
        t.pop();
        t
    }

    /// (alpha, sigma, lambda) of the data at step `n`, or of the clean data (sigma 0) for `None`.
    fn coefficients(&self, n: Option<usize>) -> (f64, f64, f64) {
        match n {
            Some(n) => {
                let ab = self.schedule.alpha_bar(n);
                let (alpha, sigma) = (ab.sqrt(), (1.0 - ab).sqrt());
                (alpha, sigma, alpha.ln() - sigma.ln())
            }
            None => (1.0, 0.0, f64::INFINITY),
        }
    }
}

impl Sampler for DpmSolverPP2M {
    fn sample(&self, model: &dyn NoisePredictor, x_init: &Tensor, _rng: &mut dyn RngCore) -> Result<Tensor> {
        if self.steps == 0 || self.steps > self.schedule.len() {
            candle_core::bail!("DPM-Solver++ steps must be in 1..={}, got {}", self.schedule.len(), self.steps);
        }
        let timesteps = self.timesteps();
        let mut x = x_init.clone();
        let mut prev: Option<(Tensor, f64)> = None; // previous x0 prediction and its lambda
        for (i, &t) in timesteps.iter().enumerate() {
            let (alpha_s, sigma_s, lambda_s) = self.coefficients(Some(t));
            let eps = predict(model, &x, t as f64)?;
            let x0 = axpby(1.0 / alpha_s, &x, -sigma_s / alpha_s, &eps)?;
            let (alpha_t, sigma_t, lambda_t) = self.coefficients(timesteps.get(i + 1).copied());
            let last = i + 1 == timesteps.len();
            // -alpha_t (exp(-h) - 1); at sigma_t = 0, h is infinite and this is alpha_t.
            let phi = -alpha_t * (-(lambda_t - lambda_s)).exp_m1();
            let mut d = x0.clone();
            if let (Some((x0_prev, lambda_prev)), false) = (&prev, last) {
                let r0 = (lambda_s - lambda_prev) / (lambda_t - lambda_s);
                // D0 + 0.5 D1 with D1 = (x0 - x0_prev) / r0.
                d = axpby(1.0 + 0.5 / r0, &x0, -0.5 / r0, x0_prev)?;
            }
            x = axpby(sigma_t / sigma_s, &x, phi, &d)?;
            prev = Some((x0, lambda_s));
        }
        Ok(x)
    }

    fn model_evaluations(&self) -> usize {
        self.steps
    }
}
