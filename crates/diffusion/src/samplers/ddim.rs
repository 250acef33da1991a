//! DDIM (Song et al. 2021) as diffusers' `DDIMScheduler`: "leading" timesteps with `steps_offset`,
//! `eta` = 0 deterministic, `eta` > 0 adding noise.

use candle_core::{Result, Tensor};
use rand::RngCore;

use super::{axpby, predict, Sampler};
use crate::noise::randn_like;
use crate::{DiscreteSchedule, NoisePredictor};

#[derive(Debug, Clone, PartialEq)]
pub struct Ddim {
    pub schedule: DiscreteSchedule,
    pub steps: usize,
    /// 0 for the deterministic sampler, 1 for DDPM-like noise.
    pub eta: f64,
    /// Added to every timestep (diffusers' Stable Diffusion and DDPM configs use 1).
    pub steps_offset: usize,
    /// alpha_bar after the last step: 1 if true, else alpha_bar at step 0 (diffusers: false).
    pub set_alpha_to_one: bool,
    /// Clip the predicted x0 to [-c, c] (diffusers' default clips at 1; None does not clip).
    pub clip_sample: Option<f64>,
}

impl Ddim {
    pub fn new(schedule: DiscreteSchedule, steps: usize, eta: f64) -> Self {
        Self { schedule, steps, eta, steps_offset: 1, set_alpha_to_one: false, clip_sample: None }
    }

    fn stride(&self) -> usize {
        // No steps, no timesteps (and no division by zero); `sample` refuses 0 steps.
        self.schedule.len() / self.steps.max(1)
    }

    /// The network time inputs, highest first.
    pub fn timesteps(&self) -> Vec<usize> {
        (0..self.steps).rev().map(|i| i * self.stride() + self.steps_offset).collect()
    }
}

impl Sampler for Ddim {
    fn sample(&self, model: &dyn NoisePredictor, x_init: &Tensor, rng: &mut dyn RngCore) -> Result<Tensor> {
        if self.steps == 0 || self.steps > self.schedule.len() {
            candle_core::bail!("DDIM steps must be in 1..={}, got {}", self.schedule.len(), self.steps);
        }
        let first = (self.steps - 1) * self.stride() + self.steps_offset;
        if first >= self.schedule.len() {
            candle_core::bail!(
                "DDIM with {} steps and steps_offset {} starts at timestep {first}, past the schedule's last ({}): use fewer steps",
                self.steps,
                self.steps_offset,
                self.schedule.len() - 1
            );
        }
        let final_alpha = if self.set_alpha_to_one { 1.0 } else { self.schedule.alpha_bar(0) };
        let mut x = x_init.clone();
        for t in self.timesteps() {
            let a_t = self.schedule.alpha_bar(t);
            let a_prev = t.checked_sub(self.stride()).map_or(final_alpha, |p| self.schedule.alpha_bar(p));
            let eps = predict(model, &x, t as f64)?;
            let mut x0 = axpby(1.0 / a_t.sqrt(), &x, -(1.0 - a_t).sqrt() / a_t.sqrt(), &eps)?;
            if let Some(c) = self.clip_sample {
                x0 = x0.clamp(-c, c)?;
            }
            let std = self.eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).sqrt();
            x = axpby(a_prev.sqrt(), &x0, (1.0 - a_prev - std * std).sqrt(), &eps)?;
            if self.eta > 0.0 {
                x = (x + (randn_like(&eps, rng)? * std)?)?;
            }
        }
        Ok(x)
    }

    fn model_evaluations(&self) -> usize {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn timesteps_follow_diffusers_and_bad_steps_are_errors() -> Result<()> {
        let ddim = Ddim::new(DiscreteSchedule::ddpm_linear(), 50, 0.0);
        let t = ddim.timesteps();
        assert_eq!((t.len(), t[0], t[1], t[49]), (50, 981, 961, 1));
        let x = Tensor::zeros((1, 2), candle_core::DType::F32, &Device::Cpu)?;
        let model = |x: &Tensor, _: &Tensor| x.zeros_like();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
        for steps in [0, 1000, 1001] {
            let err = Ddim::new(DiscreteSchedule::ddpm_linear(), steps, 0.0).sample(&model, &x, &mut rng).unwrap_err();
            assert!(err.to_string().contains("steps"), "{err}");
        }
        Ok(())
    }
}
