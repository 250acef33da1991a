//! Ancestral DDPM sampling (Ho et al. 2020) as diffusers' `DDPMScheduler` with the "fixed_small"
//! variance and "leading" timesteps.

use candle_core::{Result, Tensor};
use rand::RngCore;

use super::{axpby, predict, Sampler};
use crate::noise::randn_like;
use crate::{DiscreteSchedule, NoisePredictor};

#[derive(Debug, Clone, PartialEq)]
pub struct Ddpm {
    pub schedule: DiscreteSchedule,
    /// Inference steps (the schedule's length for the original sampler).
    pub steps: usize,
    /// Clip the predicted x0 to [-c, c] (diffusers' default clips at 1; None does not clip).
    pub clip_sample: Option<f64>,
    /// Added to every timestep (diffusers' `steps_offset`, default 0).
    pub steps_offset: usize,
}

impl Ddpm {
    pub fn new(schedule: DiscreteSchedule, steps: usize) -> Self {
        Self { schedule, steps, clip_sample: None, steps_offset: 0 }
    }

    fn stride(&self) -> usize {
        // No steps, no timesteps (and no division by zero); `sample` refuses 0 steps.
        self.schedule.len() / self.steps.max(1)
    }

    pub fn timesteps(&self) -> Vec<usize> {
        (0..self.steps).rev().map(|i| i * self.stride() + self.steps_offset).collect()
    }
}

impl Sampler for Ddpm {
    fn sample(&self, model: &dyn NoisePredictor, x_init: &Tensor, rng: &mut dyn RngCore) -> Result<Tensor> {
        if self.steps == 0 || self.steps > self.schedule.len() {
            candle_core::bail!("DDPM steps must be in 1..={}, got {}", self.schedule.len(), self.steps);
        }
        if self.timesteps()[0] >= self.schedule.len() {
            candle_core::bail!("DDPM with steps_offset {} starts past the schedule's last timestep", self.steps_offset);
        }
        let mut x = x_init.clone();
        for t in self.timesteps() {
            let a_t = self.schedule.alpha_bar(t);
            let a_prev = t.checked_sub(self.stride()).map_or(1.0, |p| self.schedule.alpha_bar(p));
            let (alpha, beta) = (a_t / a_prev, 1.0 - a_t / a_prev);
            let eps = predict(model, &x, t as f64)?;
            let mut x0 = axpby(1.0 / a_t.sqrt(), &x, -(1.0 - a_t).sqrt() / a_t.sqrt(), &eps)?;
            if let Some(c) = self.clip_sample {
                x0 = x0.clamp(-c, c)?;
            }
            x = axpby(a_prev.sqrt() * beta / (1.0 - a_t), &x0, alpha.sqrt() * (1.0 - a_prev) / (1.0 - a_t), &x)?;
            if t > 0 {
                let variance = ((1.0 - a_prev) / (1.0 - a_t) * beta).max(1e-20);
                x = (x + (randn_like(&eps, rng)? * variance.sqrt())?)?;
            }
        }
        Ok(x)
    }

    fn model_evaluations(&self) -> usize {
        self.steps
    }
}
