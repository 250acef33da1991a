//! Sampling a trained model with conditioning (labels, guidance, clipping).

use candle_core::{Result, Tensor};
use rand::RngCore;
use scalelong_backbones::{Backbone, Network};
use scalelong_diffusion::samplers::Sampler;
use scalelong_diffusion::{ClipX0, Guided, NoisePredictor, Schedule};

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
