//! Sampling a trained model: samplers by name, and grids of samples.

use candle_core::{Result, Tensor};
use rand::RngCore;
use scalelong_backbones::Backbone;
use scalelong_diffusion::samplers::{Ddim, Ddpm, DpmSolverFast, DpmSolverPP2M, EulerMaruyama, EulerOde, Sampler};
use scalelong_diffusion::{ClipX0, DiscreteSchedule, Guided, NoisePredictor, Schedule, VpSde};

/// The samplers that fit a continuous VP-SDE model, by command-line name.
pub const VP_SAMPLERS: &[&str] = &["dpm-solver", "euler-ode", "euler-sde"];

/// The samplers that fit a discrete (DDPM-style) schedule, by command-line name.
pub const DISCRETE_SAMPLERS: &[&str] = &["ddim", "dpm-solver++", "ddpm"];

pub fn discrete_sampler(name: &str, steps: usize, schedule: DiscreteSchedule) -> Result<Box<dyn Sampler>> {
    Ok(match name {
        "ddim" => Box::new(Ddim::new(schedule, steps, 0.0)),
        "dpm-solver++" | "dpmpp-2m" => Box::new(DpmSolverPP2M::new(schedule, steps)),
        "ddpm" => Box::new(Ddpm::new(schedule, steps)),
        _ => candle_core::bail!(
            "unknown sampler `{name}` for a discrete-schedule model: expected one of {}",
            DISCRETE_SAMPLERS.join(", ")
        ),
    })
}

pub fn vp_sampler(name: &str, steps: usize, sde: VpSde) -> Result<Box<dyn Sampler>> {
    Ok(match name {
        "dpm-solver" => Box::new(DpmSolverFast::new(sde, steps)),
        "euler-ode" => Box::new(EulerOde::new(sde, steps)),
        "euler-sde" | "euler-maruyama" => Box::new(EulerMaruyama::new(sde, steps)),
        _ => candle_core::bail!(
            "unknown sampler `{name}` for a VP-SDE model: expected one of {}",
            VP_SAMPLERS.join(", ")
        ),
    })
}

/// What to condition on: labels for class-conditional models, with optional guidance; and
/// whether to clip the implied clean image to [-1, 1] at every step (see [`ClipX0`]).
pub struct Conditioning {
    pub labels: Option<Tensor>,
    /// (scale, null label) for classifier-free guidance.
    pub guidance: Option<(f64, u32)>,
    /// The schedule, to clip the predicted x0 with; `None` samples as the official code does.
    pub clip_x0: Option<Schedule>,
}

/// Samples `x_init.dim(0)` images from `model`.
pub fn sample(
    model: &Backbone,
    sampler: &dyn Sampler,
    x_init: &Tensor,
    cond: &Conditioning,
    rng: &mut dyn RngCore,
) -> Result<Tensor> {
    let run = |net: &dyn NoisePredictor, rng: &mut dyn RngCore| match &cond.clip_x0 {
        Some(schedule) => sampler.sample(&ClipX0 { model: net, schedule }, x_init, rng),
        None => sampler.sample(net, x_init, rng),
    };
    match (&cond.labels, cond.guidance) {
        (None, _) => run(&|x: &Tensor, t: &Tensor| model.forward(x, t, None), rng),
        (Some(y), None) => run(&|x: &Tensor, t: &Tensor| model.forward(x, t, Some(y)), rng),
        (Some(y), Some((scale, null))) => {
            let null = Tensor::full(null, y.dims(), y.device())?;
            let guided =
                Guided::new(|x: &Tensor, t: &Tensor, y: &Tensor| model.forward(x, t, Some(y)), y.clone(), null, scale);
            run(&guided, rng)
        }
    }
}
