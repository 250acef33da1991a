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
    // A half-precision model computes in its dtype; the sampler's state stays in x_init's.
    let dtype = model.dtype();
    let forward =
        |x: &Tensor, t: &Tensor, y: Option<&Tensor>| model.forward(&x.to_dtype(dtype)?, t, y)?.to_dtype(x.dtype());
    match (&cond.labels, cond.guidance) {
        (None, _) => run(&|x: &Tensor, t: &Tensor| forward(x, t, None), rng),
        (Some(y), None) => run(&|x: &Tensor, t: &Tensor| forward(x, t, Some(y)), rng),
        (Some(y), Some((scale, null))) => {
            let null = Tensor::full(null, y.dims(), y.device())?;
            let guided =
                Guided::new(|x: &Tensor, t: &Tensor, y: &Tensor| forward(x, t, Some(y)), y.clone(), null, scale);
            run(&guided, rng)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};
    use rand::SeedableRng;
    use scalelong_backbones::{Architecture, UViTConfig};
    use scalelong_diffusion::{SamplerKind, VpSde};

    use super::*;

    /// A model in another dtype computes in it, and the sampler's state keeps the noise's dtype:
    /// the same weights in f64 and f32 give the same samples to f32 precision.
    #[test]
    fn a_model_in_another_dtype_samples_the_same_images() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = UViTConfig {
            img_size: 8,
            patch_size: 2,
            in_chans: 1,
            embed_dim: 16,
            depth: 2,
            num_heads: 2,
            mlp_ratio: 2.0,
            qkv_bias: false,
            mlp_time_embed: false,
            num_classes: None,
            scaling: Default::default(),
            ls_reduction: 4,
        };
        let vars = VarMap::new();
        cfg.build(VarBuilder::from_varmap(&vars, DType::F32, &dev))?;
        let weights: HashMap<String, Tensor> =
            vars.data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        let f32_model = Backbone::from(cfg.build(VarBuilder::from_tensors(weights.clone(), DType::F32, &dev))?);
        let f64_model = Backbone::from(cfg.build(VarBuilder::from_tensors(weights, DType::F64, &dev))?);
        assert_eq!(f64_model.dtype(), DType::F64);
        let schedule = Schedule::Vp(VpSde::LINEAR);
        let sampler = SamplerKind::DpmSolver.build(4, &schedule)?;
        let x = Tensor::randn(0f32, 1., (2, 1, 8, 8), &dev)?;
        let cond = Conditioning { labels: None, guidance: None, clip_x0: None };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let a = sample(&f32_model, sampler.as_ref(), &x, &cond, &mut rng)?;
        let b = sample(&f64_model, sampler.as_ref(), &x, &cond, &mut rng)?;
        assert_eq!(b.dtype(), DType::F32);
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "f32 and f64 models differ by {diff}");
        Ok(())
    }
}
