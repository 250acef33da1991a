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
}
