//! Samplers: one small type each, all behind [`Sampler`].
//!
//! A sampler starts from noise `x_init` at its first time and walks to a sample, calling the
//! network through [`NoisePredictor`] at the network time inputs of its schedule. Stochastic
//! samplers draw their noise from the RNG they are given, so a seed fixes the sample.

mod ddim;
mod ddpm;
mod dpm_solver;
mod dpmpp_2m;
mod euler;
mod kind;

pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use dpm_solver::DpmSolverFast;
pub use dpmpp_2m::DpmSolverPP2M;
pub use euler::{EulerMaruyama, EulerOde};
pub use kind::SamplerKind;

use candle_core::{Result, Tensor};
use rand::RngCore;

use crate::NoisePredictor;

/// The interface every sampler shares.
pub trait Sampler {
    /// Runs from `x_init` (standard normal noise, (B, ...)) to samples of the same shape.
    fn sample(&self, model: &dyn NoisePredictor, x_init: &Tensor, rng: &mut dyn RngCore) -> Result<Tensor>;

    /// Network evaluations per call of [`Sampler::sample`].
    fn model_evaluations(&self) -> usize;
}

/// Calls the network at one time input for the whole batch.
fn predict(model: &dyn NoisePredictor, x: &Tensor, t_input: f64) -> Result<Tensor> {
    let t = Tensor::full(t_input as f32, x.dim(0)?, x.device())?.to_dtype(x.dtype())?;
    model.predict_noise(x, &t)
}

/// `a * x + b * y` with scalar coefficients.
fn axpby(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    (x * a)? + (y * b)?
}
