//! The training objective: noise an image at a random time and regress the network on the target.

use candle_core::{DType, Result, Tensor};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::noise::{randn_like, uniform};
use crate::Schedule;

/// What the network is trained to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise eps (the official models).
    #[default]
    Eps,
    /// The clean image x0.
    X0,
    /// v = alpha eps - sigma x0 (Salimans & Ho).
    V,
}

/// Converts a network output between parametrisations. With `x_t = alpha x0 + sigma eps`
/// (alpha^2 + sigma^2 = 1): `x0 = (x_t - sigma eps) / alpha`, `v = alpha eps - sigma x0`.
/// `alpha` and `sigma` are per-sample, shape (B,).
pub fn convert(
    from: Prediction,
    to: Prediction,
    out: &Tensor,
    x_t: &Tensor,
    alpha: &Tensor,
    sigma: &Tensor,
) -> Result<Tensor> {
    let (a, s) = (per_sample(alpha, x_t)?, per_sample(sigma, x_t)?);
    let eps = match from {
        Prediction::Eps => out.clone(),
        Prediction::X0 => (x_t - out.broadcast_mul(&a)?)?.broadcast_div(&s)?,
        Prediction::V => (x_t.broadcast_mul(&s)? + out.broadcast_mul(&a)?)?,
    };
    match to {
        Prediction::Eps => Ok(eps),
        Prediction::X0 => (x_t - eps.broadcast_mul(&s)?)?.broadcast_div(&a),
        Prediction::V => {
            let x0 = (x_t - eps.broadcast_mul(&s)?)?.broadcast_div(&a)?;
            eps.broadcast_mul(&a)? - x0.broadcast_mul(&s)?
        }
    }
}

/// (B,) coefficients reshaped to broadcast against `x` (B, ...), in its dtype.
pub(crate) fn per_sample(c: &Tensor, x: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1; x.rank()];
    shape[0] = x.dim(0)?;
    c.to_dtype(x.dtype())?.reshape(shape)
}

/// Host-side f64 coefficients, one per sample, as a tensor that broadcasts against `x` on its
/// device and in its dtype (built on the CPU: Metal has no f64).
pub(crate) fn coefficients(values: &[f64], x: &Tensor) -> Result<Tensor> {
    let c = Tensor::new(values, &candle_core::Device::Cpu)?.to_dtype(x.dtype())?.to_device(x.device())?;
    per_sample(&c, x)
}

/// One noised training batch.
#[derive(Debug, Clone)]
pub struct NoisedBatch {
    /// The noisy images.
    pub x_t: Tensor,
    /// The network's time input, (B,).
    pub t_input: Tensor,
    /// The noise that was added.
    pub noise: Tensor,
    /// What the network should output.
    pub target: Tensor,
}

/// The official objective: t ~ U(0, 1) (or a uniform step), eps ~ N(0, I),
/// loss = per-sample mean of squared error, then batch mean.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingObjective {
    pub schedule: Schedule,
    pub prediction: Prediction,
}

impl TrainingObjective {
    pub fn new(schedule: Schedule, prediction: Prediction) -> Self {
        Self { schedule, prediction }
    }

    /// Draws a time and noise per image of `x0` (B, ...) and builds the network's input and target.
    pub fn noise_batch(&self, x0: &Tensor, rng: &mut dyn RngCore) -> Result<NoisedBatch> {
        let u = uniform(x0.dim(0)?, rng);
        let noise = randn_like(x0, rng)?;
        self.noised(x0, &u, noise)
    }

    /// The batch for given uniform draws `u` (one per image: the time t for VP schedules) and
    /// noise, as [`TrainingObjective::noise_batch`] builds it from its own draws.
    pub fn noised(&self, x0: &Tensor, u: &[f64], noise: Tensor) -> Result<NoisedBatch> {
        let (inputs, alpha_bars): (Vec<f64>, Vec<f64>) = u.iter().map(|&u| self.schedule.sample_time(u)).unzip();
        let alpha = coefficients(&alpha_bars.iter().map(|a| a.sqrt()).collect::<Vec<_>>(), x0)?;
        let sigma = coefficients(&alpha_bars.iter().map(|a| (1.0 - a).sqrt()).collect::<Vec<_>>(), x0)?;
        let x_t = (x0.broadcast_mul(&alpha)? + noise.broadcast_mul(&sigma)?)?;
        let target = match self.prediction {
            Prediction::Eps => noise.clone(),
            Prediction::X0 => x0.clone(),
            Prediction::V => (noise.broadcast_mul(&alpha)? - x0.broadcast_mul(&sigma)?)?,
        };
        let t_input =
            Tensor::new(inputs.iter().map(|&t| t as f32).collect::<Vec<_>>(), x0.device())?.to_dtype(x0.dtype())?;
        Ok(NoisedBatch { x_t, t_input, noise, target })
    }

    /// Mean over every non-batch dimension of the squared error, then mean over the batch.
    pub fn loss(&self, output: &Tensor, target: &Tensor) -> Result<Tensor> {
        (output - target)?.sqr()?.flatten_from(1)?.mean(1)?.mean(0)
    }
}

/// Replaces each label by `null_label` with probability `p_uncond` (classifier-free guidance
/// training); the dtype of `labels` is kept.
pub fn drop_labels(labels: &Tensor, p_uncond: f64, null_label: i64, rng: &mut dyn RngCore) -> Result<Tensor> {
    let values = labels.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    let kept: Vec<i64> = values
        .iter()
        .zip(uniform(values.len(), rng))
        .map(|(&y, u)| if u < p_uncond { null_label } else { y })
        .collect();
    Tensor::new(kept, labels.device())?.to_dtype(labels.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiscreteSchedule, VpSde};
    use candle_core::Device;
    use rand::SeedableRng;

    #[test]
    fn conversions_round_trip() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let x0 = crate::noise::randn((3, 2, 4), DType::F64, &dev, &mut rng)?;
        let eps = crate::noise::randn((3, 2, 4), DType::F64, &dev, &mut rng)?;
        let ab = [0.9f64, 0.5, 0.01];
        let alpha = Tensor::new(ab.map(f64::sqrt).to_vec(), &dev)?;
        let sigma = Tensor::new(ab.map(|a| (1.0 - a).sqrt()).to_vec(), &dev)?;
        let x_t = (x0.broadcast_mul(&per_sample(&alpha, &x0)?)? + eps.broadcast_mul(&per_sample(&sigma, &x0)?)?)?;
        let close =
            |a: &Tensor, b: &Tensor| -> Result<f64> { (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>() };
        assert!(close(&convert(Prediction::Eps, Prediction::X0, &eps, &x_t, &alpha, &sigma)?, &x0)? < 1e-12);
        let v = convert(Prediction::Eps, Prediction::V, &eps, &x_t, &alpha, &sigma)?;
        let v_def = (eps.broadcast_mul(&per_sample(&alpha, &x0)?)? - x0.broadcast_mul(&per_sample(&sigma, &x0)?)?)?;
        assert!(close(&v, &v_def)? < 1e-12);
        assert!(close(&convert(Prediction::V, Prediction::Eps, &v, &x_t, &alpha, &sigma)?, &eps)? < 1e-12);
        assert!(close(&convert(Prediction::X0, Prediction::V, &x0, &x_t, &alpha, &sigma)?, &v)? < 1e-12);
        Ok(())
    }

    #[test]
    fn noised_batch_follows_the_schedule_and_loss_is_per_sample_mean() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let x0 = crate::noise::randn((5, 1, 2, 2), DType::F64, &dev, &mut rng)?;
        for schedule in [Schedule::Vp(VpSde::LINEAR), Schedule::Discrete(DiscreteSchedule::ddpm_linear())] {
            let obj = TrainingObjective::new(schedule.clone(), Prediction::Eps);
            let b = obj.noise_batch(&x0, &mut rng)?;
            let t = b.t_input.to_vec1::<f64>()?;
            for (i, &ti) in t.iter().enumerate() {
                let ab = schedule.alpha_bar_at_input(ti);
                let want = ((x0.get(i)? * ab.sqrt())? + (b.noise.get(i)? * (1.0 - ab).sqrt())?)?;
                let err = (want - b.x_t.get(i)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
                assert!(err < 1e-6, "{schedule:?}: x_t off by {err}");
                assert!((0.0..=999.0).contains(&ti));
            }
        }
        // Per-sample means [1, 4] -> batch mean 2.5.
        let out = Tensor::new(&[[1f64, 1.0], [2.0, 2.0]], &dev)?;
        let loss =
            TrainingObjective::new(Schedule::Vp(VpSde::LINEAR), Prediction::Eps).loss(&out, &out.zeros_like()?)?;
        assert_eq!(loss.to_scalar::<f64>()?, 2.5);
        Ok(())
    }

    #[test]
    fn labels_are_dropped_at_the_requested_rate() -> Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let y = Tensor::new(vec![3u32; 10_000], &Device::Cpu)?;
        let dropped = drop_labels(&y, 0.1, 10, &mut rng)?.to_vec1::<u32>()?;
        let n = dropped.iter().filter(|&&v| v == 10).count();
        assert!(dropped.iter().all(|&v| v == 3 || v == 10));
        assert!((n as f64 - 1000.0).abs() < 5.0 * (10_000f64 * 0.1 * 0.9).sqrt(), "{n} dropped");
        Ok(())
    }
}
