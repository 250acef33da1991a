//! The sinusoidal timestep embedding, one type for every backbone (as candle's `Timesteps`).

use candle_core::{DType, Device, Result, Tensor};

/// `[cos(t f_k), sin(t f_k)]` (`flip_sin_to_cos`; else sin first), f_k = exp(-ln(10000) k /
/// (half - downscale_freq_shift)), half = dim / 2, zero-padded for an odd `dim`: the official
/// U-ViT's `timestep_embedding` (cos first, shift 0) and diffusers' `get_timestep_embedding`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timesteps {
    pub dim: usize,
    pub flip_sin_to_cos: bool,
    pub downscale_freq_shift: f64,
}

impl Timesteps {
    pub fn new(dim: usize, flip_sin_to_cos: bool, downscale_freq_shift: f64) -> Self {
        Self { dim, flip_sin_to_cos, downscale_freq_shift }
    }

    /// The embedding (B, dim) of times `t` (B,). Computed in f64 where the device has it: U-ViT's
    /// `t * 999` reaches 999 rad, where f32 loses 1e-4.
    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let half = self.dim / 2;
        let dtype = if matches!(t.device(), Device::Metal(_)) { DType::F32 } else { DType::F64 };
        let scale = half as f64 - self.downscale_freq_shift;
        let freqs: Vec<f64> = (0..half).map(|k| (-(10000f64.ln()) * k as f64 / scale).exp()).collect();
        let freqs = Tensor::new(freqs, t.device())?.to_dtype(dtype)?;
        let args = t.to_dtype(dtype)?.unsqueeze(1)?.broadcast_mul(&freqs.unsqueeze(0)?)?;
        let (sin, cos) = (args.sin()?, args.cos()?);
        let mut parts = if self.flip_sin_to_cos { vec![cos, sin] } else { vec![sin, cos] };
        if self.dim % 2 == 1 {
            parts.push(Tensor::zeros((t.dim(0)?, 1), dtype, t.device())?);
        }
        Tensor::cat(&parts, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() -> Result<()> {
        let t = Tensor::new(&[2f32], &Device::Cpu)?;
        // half = 2: f = [1, 10000^(-1/2)]; U-ViT's layout [cos, cos, sin, sin, 0].
        let f1 = 0.01f64;
        let e = Timesteps::new(5, true, 0.0).forward(&t)?.to_vec2::<f64>()?;
        let want = [2f64.cos(), (2.0 * f1).cos(), 2f64.sin(), (2.0 * f1).sin(), 0.0];
        for (a, b) in e[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{:?} vs {want:?}", e[0]);
        }
        // diffusers' default: sin first, shift 1 (f = [1, 10000^(-1/1)]).
        let e = Timesteps::new(4, false, 1.0).forward(&t)?.to_vec2::<f64>()?;
        let want = [2f64.sin(), (2.0 * 1e-4f64).sin(), 2f64.cos(), (2.0 * 1e-4f64).cos()];
        for (a, b) in e[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{:?} vs {want:?}", e[0]);
        }
        Ok(())
    }
}
