//! AdamW exactly as `torch.optim.AdamW` (single-tensor path), with its moments exposed so that
//! checkpoints can hold them.
//!
//! On the CPU the update runs in place, three passes per parameter (first moment, second moment,
//! parameter) instead of a dozen allocating tensor ops; elsewhere it is composed from tensor ops.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var};

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
    /// First and second moments, one per parameter.
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Optimizer steps taken (bias correction uses it).
    steps: u64,
    /// Use the in-place CPU update where it applies (tests switch it off to check the other path).
    in_place: bool,
}

impl AdamW {
    pub fn new(params: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        // Separate buffers: the CPU update writes the moments in place.
        let m = params.iter().map(|p| p.zeros_like()).collect::<Result<Vec<_>>>()?;
        let v = params.iter().map(|p| p.zeros_like()).collect::<Result<Vec<_>>>()?;
        Ok(Self { config, params, m, v, steps: 0, in_place: true })
    }

    /// One step with learning rate `lr` and gradients `grads` (one per parameter, same order):
    /// `p *= 1 - lr wd; m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2;
    ///  p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            candle_core::bail!("AdamW: {} gradients for {} parameters", grads.len(), self.params.len());
        }
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let (bc1, bc2_sqrt) = (1.0 - c.beta1.powi(t), (1.0 - c.beta2.powi(t)).sqrt());
        let update = Update { lr, wd: c.weight_decay, bc1, bc2_sqrt, eps: c.eps };
        for ((p, g), (m, v)) in self.params.iter().zip(grads).zip(self.m.iter_mut().zip(self.v.iter_mut())) {
            // Detached: the update must not keep the autograd graph (and every activation) alive.
            let g = &g.detach();
            match self.in_place && in_place(p, g, m, v) {
                true => {
                    let g = g.contiguous()?;
                    m.inplace_op2(&g, &Moment { decay: c.beta1, square: false })?;
                    v.inplace_op2(&g, &Moment { decay: c.beta2, square: true })?;
                    p.as_tensor().inplace_op3(m, v, &update)?;
                }
                false => {
                    let decayed = (p.as_tensor().detach() * (1.0 - lr * c.weight_decay))?;
                    *m = (&*m + ((g - &*m)? * (1.0 - c.beta1))?)?;
                    *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
                    p.set(&(decayed - (m.div(&denom)? * (lr / bc1))?)?)?;
                }
            }
        }
        Ok(())
    }

    pub fn params(&self) -> &[Var] {
        &self.params
    }

    /// The first and second moments, one per parameter, and the number of steps taken.
    pub fn state(&self) -> (&[Tensor], &[Tensor], u64) {
        (&self.m, &self.v, self.steps)
    }

    /// Restores a saved state (as [`AdamW::state`] gave it): one moment pair per parameter,
    /// each of its parameter's shape.
    pub fn restore(&mut self, m: Vec<Tensor>, v: Vec<Tensor>, steps: u64) -> Result<()> {
        if m.len() != self.params.len() || v.len() != self.params.len() {
            bail!("AdamW state: {} and {} moments for {} parameters", m.len(), v.len(), self.params.len());
        }
        for (i, p) in self.params.iter().enumerate() {
            if m[i].dims() != p.dims() || v[i].dims() != p.dims() {
                bail!(
                    "AdamW state: moments of parameter {i} are {:?} and {:?}, expected {:?}",
                    m[i].dims(),
                    v[i].dims(),
                    p.dims()
                );
            }
        }
        // Own buffers: the in-place update writes them.
        self.m = m.iter().map(|t| t.copy()).collect::<Result<_>>()?;
        self.v = v.iter().map(|t| t.copy()).collect::<Result<_>>()?;
        self.steps = steps;
        Ok(())
    }
}

/// Whether the in-place CPU update applies: CPU float tensors of one dtype and shape, the
/// parameter and moments contiguous and distinct.
fn in_place(p: &Var, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    let p = p.as_tensor();
    let all = [p, g, m, v];
    p.device().is_cpu()
        && matches!(p.dtype(), DType::F32 | DType::F64)
        && all.iter().all(|t| t.dtype() == p.dtype() && t.dims() == p.dims())
        && [p, m, v].iter().all(|t| t.is_contiguous())
        && p.id() != m.id()
        && p.id() != v.id()
        && m.id() != v.id()
}

/// The elements of a contiguous layout.
fn elems<'a, T>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => bail!("AdamW: expects contiguous tensors"),
    }
}

fn elems_mut<'a, T>(s: &'a mut [T], l: &Layout) -> Result<&'a mut [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut s[a..b]),
        None => bail!("AdamW: expects contiguous tensors"),
    }
}

/// `m = m + (g - m) (1 - decay)` (first moment, as torch's lerp) or `v = decay v + (1 - decay) g^2`.
struct Moment {
    decay: f64,
    square: bool,
}

impl Moment {
    fn apply<T: num_traits::Float>(&self, m: &mut [T], g: &[T]) {
        let (d, one_minus) = (T::from(self.decay).unwrap(), T::from(1.0 - self.decay).unwrap());
        if self.square {
            m.iter_mut().zip(g).for_each(|(v, &g)| *v = *v * d + g * g * one_minus);
        } else {
            m.iter_mut().zip(g).for_each(|(m, &g)| *m = *m + (g - *m) * one_minus);
        }
    }
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        match (dst, g) {
            (CpuStorage::F32(m), CpuStorage::F32(g)) => self.apply(elems_mut(m, dst_l)?, elems(g, gl)?),
            (CpuStorage::F64(m), CpuStorage::F64(g)) => self.apply(elems_mut(m, dst_l)?, elems(g, gl)?),
            (m, _) => bail!("AdamW: f32 or f64 only, got {:?}", m.dtype()),
        }
        Ok(())
    }
}

/// `p = p (1 - lr wd) - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)`.
struct Update {
    lr: f64,
    wd: f64,
    bc1: f64,
    bc2_sqrt: f64,
    eps: f64,
}

impl Update {
    fn apply<T: num_traits::Float>(&self, p: &mut [T], m: &[T], v: &[T]) {
        let c = |x: f64| T::from(x).unwrap();
        let (keep, step, inv_bc2, eps) =
            (c(1.0 - self.lr * self.wd), c(self.lr / self.bc1), c(1.0 / self.bc2_sqrt), c(self.eps));
        for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
            *p = *p * keep - step * (m / (v.sqrt() * inv_bc2 + eps));
        }
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        match (dst, m, v) {
            (CpuStorage::F32(p), CpuStorage::F32(m), CpuStorage::F32(v)) => {
                self.apply(elems_mut(p, dst_l)?, elems(m, ml)?, elems(v, vl)?)
            }
            (CpuStorage::F64(p), CpuStorage::F64(m), CpuStorage::F64(v)) => {
                self.apply(elems_mut(p, dst_l)?, elems(m, ml)?, elems(v, vl)?)
            }
            (p, _, _) => bail!("AdamW: f32 or f64 only, got {:?}", p.dtype()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Three steps on two scalars, computed by hand with PyTorch's formulas in f64.
    #[test]
    fn matches_hand_computed_pytorch_steps() -> Result<()> {
        hand_computed_steps(true)?;
        hand_computed_steps(false)
    }

    fn hand_computed_steps(in_place: bool) -> Result<()> {
        let dev = Device::Cpu;
        let p = Var::new(&[1.0f64, -2.0], &dev)?;
        let cfg = AdamWConfig { beta1: 0.99, beta2: 0.999, eps: 1e-8, weight_decay: 0.03 };
        let mut opt = AdamW::new(vec![p.clone()], cfg)?;
        opt.in_place = in_place;
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
        assert_eq!(opt.state().2, 3);
        assert!(AdamW::new(vec![p], cfg)?.step(&[], 1e-3).is_err());
        Ok(())
    }
}
