//! GELU with the exact erf form (`nn.GELU()`), one pass forward and one backward.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous, fused, Float};

/// Elements per parallel task: large enough that scheduling costs nothing beside the work.
const GRAIN: usize = 1 << 14;

/// `0.5 x (1 + erf(x / sqrt 2))`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    match fused(x) {
        true => x.contiguous()?.apply_op1(Gelu),
        false => x.gelu_erf(),
    }
}

struct Gelu;

fn gelu<T: Float>(x: &[T]) -> Vec<T> {
    let (half, frac_1_sqrt2) = (T::from_f64(0.5).unwrap(), T::from_f64(std::f64::consts::FRAC_1_SQRT_2).unwrap());
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(GRAIN).zip(x.par_chunks(GRAIN)).for_each(|(y, x)| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = half * x * (T::one() + (x * frac_1_sqrt2).erf());
        }
    });
    y
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = match s {
            CpuStorage::F32(x) => CpuStorage::F32(gelu(contiguous(x, l, self.name())?)),
            CpuStorage::F64(x) => CpuStorage::F64(gelu(contiguous(x, l, self.name())?)),
            _ => bail!("{}: f32 or f64 only, got {:?}", self.name(), s.dtype()),
        };
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&g.contiguous()?, &GeluGrad)?))
    }
}

/// dx = g * (Phi(x) + x phi(x)), Phi and phi the standard normal cdf and density.
struct GeluGrad;

fn gelu_grad<T: Float>(x: &[T], g: &[T]) -> Vec<T> {
    let c = |v: f64| T::from_f64(v).unwrap();
    let (half, frac_1_sqrt2, inv_sqrt_2pi) = (c(0.5), c(std::f64::consts::FRAC_1_SQRT_2), c(0.3989422804014327));
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(GRAIN).zip(x.par_chunks(GRAIN)).zip(g.par_chunks(GRAIN)).for_each(|((dx, x), g)| {
        for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
            let cdf = half * (T::one() + (x * frac_1_sqrt2).erf());
            *dx = g * (cdf + x * inv_sqrt_2pi * (-half * x * x).exp());
        }
    });
    dx
}

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dx = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                CpuStorage::F32(gelu_grad(contiguous(x, l1, self.name())?, contiguous(g, l2, self.name())?))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                CpuStorage::F64(gelu_grad(contiguous(x, l1, self.name())?, contiguous(g, l2, self.name())?))
            }
            _ => bail!("{}: f32 or f64 only, got {:?} and {:?}", self.name(), s1.dtype(), s2.dtype()),
        };
        Ok((dx, l1.shape().clone()))
    }
}
