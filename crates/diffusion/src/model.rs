//! What samplers call: a noise-prediction network, with or without classifier-free guidance.

use candle_core::{Result, Tensor};

/// A network that predicts the noise in `x` at the network time input `t_input` (shape (B,);
/// `t * 999` for the continuous VP-SDE, the integer step for discrete schedules).
///
/// Any `Fn(&Tensor, &Tensor) -> Result<Tensor>` is one, so a closure over a backbone will do:
/// `|x, t| unet.forward(x, t, None)`.
pub trait NoisePredictor {
    fn predict_noise(&self, x: &Tensor, t_input: &Tensor) -> Result<Tensor>;
}

impl<F: Fn(&Tensor, &Tensor) -> Result<Tensor>> NoisePredictor for F {
    fn predict_noise(&self, x: &Tensor, t_input: &Tensor) -> Result<Tensor> {
        self(x, t_input)
    }
}

/// Clips the network's implied clean image to [-1, 1] and returns the noise consistent with the
/// clipped image: `x0 = (x_t - sigma eps) / a`, `eps' = (x_t - a clip(x0)) / sigma`. This is DDPM's
/// `clip_denoised` for any sampler; it keeps a briefly trained model's small noise bias, which
/// `1 / a` amplifies at high noise, from pushing samples out of the data range. Off in the official
/// samplers; parity holds without it.
pub struct ClipX0<'a> {
    pub model: &'a dyn NoisePredictor,
    pub schedule: &'a crate::Schedule,
}

impl NoisePredictor for ClipX0<'_> {
    fn predict_noise(&self, x: &Tensor, t_input: &Tensor) -> Result<Tensor> {
        let eps = self.model.predict_noise(x, t_input)?;
        let (a, s) = self.schedule.alpha_sigma_at_inputs(t_input, x)?;
        let x0 = (x - eps.broadcast_mul(&s)?)?.broadcast_div(&a)?.clamp(-1f32, 1f32)?;
        (x - x0.broadcast_mul(&a)?)?.broadcast_div(&s)
    }
}

/// Classifier-free guidance over a class-conditional network `model(x, t_input, labels)`:
/// `eps = eps_uncond + scale * (eps_cond - eps_uncond)`, both halves in one batched call.
pub struct Guided<F> {
    model: F,
    labels: Tensor,
    null_labels: Tensor,
    scale: f64,
}

impl<F: Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>> Guided<F> {
    /// `labels` (B,) are the classes to sample; `null_labels` (B,) the "no class" label the
    /// network was trained with (dropped with probability p_uncond); `scale` 1 means no guidance.
    pub fn new(model: F, labels: Tensor, null_labels: Tensor, scale: f64) -> Self {
        Self { model, labels, null_labels, scale }
    }
}

impl<F: Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>> NoisePredictor for Guided<F> {
    fn predict_noise(&self, x: &Tensor, t_input: &Tensor) -> Result<Tensor> {
        if self.scale == 1.0 {
            return (self.model)(x, t_input, &self.labels);
        }
        let b = x.dim(0)?;
        let both = (self.model)(
            &Tensor::cat(&[x, x], 0)?,
            &Tensor::cat(&[t_input, t_input], 0)?,
            &Tensor::cat(&[&self.labels, &self.null_labels], 0)?,
        )?;
        let (cond, uncond) = (both.narrow(0, 0, b)?, both.narrow(0, b, b)?);
        &uncond + ((cond - &uncond)? * self.scale)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn guidance_combines_conditional_and_unconditional() -> Result<()> {
        let dev = Device::Cpu;
        // A "network" whose prediction is x + label, so both halves are easy to tell apart.
        let net = |x: &Tensor, _t: &Tensor, y: &Tensor| x.broadcast_add(&y.to_dtype(x.dtype())?.unsqueeze(1)?);
        let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev)?;
        let t = Tensor::new(&[5f32, 5.0], &dev)?;
        let (y, null) = (Tensor::new(&[2u32, 1], &dev)?, Tensor::new(&[0u32, 0], &dev)?);
        let g = Guided::new(net, y.clone(), null.clone(), 3.0);
        // eps_u = x, eps_c = x + y -> x + 3 y.
        assert_eq!(g.predict_noise(&x, &t)?.to_vec2::<f32>()?, [[7.0, 8.0], [6.0, 7.0]]);
        let plain = Guided::new(net, y, null, 1.0);
        assert_eq!(plain.predict_noise(&x, &t)?.to_vec2::<f32>()?, [[3.0, 4.0], [4.0, 5.0]]);
        Ok(())
    }

    #[test]
    fn clipping_keeps_the_implied_image_in_range() -> Result<()> {
        let dev = Device::Cpu;
        let schedule = crate::Schedule::Vp(crate::VpSde::LINEAR);
        let ab = schedule.alpha_bar_at_input(500.0);
        let (a, s) = (ab.sqrt(), (1.0 - ab).sqrt());
        // x0 = [0.5, 3.0] with eps = [0.2, -0.1]: the second is out of range.
        let x = Tensor::new(&[[0.5 * a + 0.2 * s, 3.0 * a - 0.1 * s]], &dev)?;
        let model =
            |x: &Tensor, _t: &Tensor| -> Result<Tensor> { (x - Tensor::new(&[[0.5 * a, 3.0 * a]], x.device())?)? / s };
        let clipped = ClipX0 { model: &model, schedule: &schedule };
        let eps = clipped.predict_noise(&x, &Tensor::new(&[500.0], &dev)?)?.to_vec2::<f64>()?;
        assert!((eps[0][0] - 0.2).abs() < 1e-9, "in-range image untouched: {eps:?}");
        let x0 = (x.to_vec2::<f64>()?[0][1] - s * eps[0][1]) / a;
        assert!((x0 - 1.0).abs() < 1e-9, "implied x0 {x0}");
        Ok(())
    }
}
