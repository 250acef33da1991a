//! AdamW exactly as `torch.optim.AdamW` (single-tensor path), with its moments exposed so that
//! checkpoints can hold them.

use candle_core::{Result, Tensor, Var};

/// Hyper-parameters; the learning rate is given per step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults.
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// AdamW over a fixed, ordered list of parameters.
pub struct AdamW {
    pub config: AdamWConfig,
    params: Vec<Var>,
    /// First and second moments, one per parameter, in float32.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Optimizer steps taken (bias correction uses it).
    pub step: u64,
}

impl AdamW {
    pub fn new(params: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let m = params.iter().map(|p| p.zeros_like()).collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self { config, params, m, v, step: 0 })
    }

    /// One step with learning rate `lr` and gradients `grads` (one per parameter, same order):
    /// `p *= 1 - lr wd; m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2;
    ///  p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            candle_core::bail!("AdamW: {} gradients for {} parameters", grads.len(), self.params.len());
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let (bc1, bc2_sqrt) = (1.0 - c.beta1.powi(t), (1.0 - c.beta2.powi(t)).sqrt());
        for ((p, g), (m, v)) in self.params.iter().zip(grads).zip(self.m.iter_mut().zip(self.v.iter_mut())) {
            // Detached: the update must not keep the autograd graph (and every activation) alive.
            let g = &g.detach();
            let decayed = (p.as_tensor().detach() * (1.0 - lr * c.weight_decay))?;
            *m = (&*m + ((g - &*m)? * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
            p.set(&(decayed - (m.div(&denom)? * (lr / bc1))?)?)?;
        }
        Ok(())
    }

    pub fn params(&self) -> &[Var] {
        &self.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Three steps on two scalars, computed by hand with PyTorch's formulas in f64.
    #[test]
    fn matches_hand_computed_pytorch_steps() -> Result<()> {
        let dev = Device::Cpu;
        let p = Var::new(&[1.0f64, -2.0], &dev)?;
        let cfg = AdamWConfig { beta1: 0.99, beta2: 0.999, eps: 1e-8, weight_decay: 0.03 };
        let mut opt = AdamW::new(vec![p.clone()], cfg)?;
        let grads = [[0.5f64, -0.1], [0.2, 0.3], [-0.4, 0.05]];
        let lrs = [0.0, 1e-3, 2e-3]; // warm-up from 0, as the official schedule starts
        let (mut want, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        for (k, (g, lr)) in grads.iter().zip(lrs).enumerate() {
            opt.step(&[Tensor::new(&g[..], &dev)?], lr)?;
            let t = (k + 1) as i32;
            for i in 0..2 {
                want[i] *= 1.0 - lr * cfg.weight_decay;
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g[i];
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g[i] * g[i];
                let m_hat = m[i] / (1.0 - cfg.beta1.powi(t));
                let v_hat = v[i] / (1.0 - cfg.beta2.powi(t));
                want[i] -= lr * m_hat / (v_hat.sqrt() + cfg.eps);
            }
            let got = p.as_tensor().to_vec1::<f64>()?;
            for i in 0..2 {
                assert!((got[i] - want[i]).abs() < 1e-12, "step {t}: {got:?} vs {want:?}");
            }
            let gm = opt.m[0].to_vec1::<f64>()?;
            assert!((gm[0] - m[0]).abs() < 1e-15 && (gm[1] - m[1]).abs() < 1e-15);
        }
        assert_eq!(opt.step, 3);
        assert!(AdamW::new(vec![p], cfg)?.step(&[], 1e-3).is_err());
        Ok(())
    }
}
