//! The activations GELU (exact erf form, `nn.GELU()`) and SiLU, one pass forward and one backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{fused, written_vec, Float};

/// Elements per parallel task: large enough that scheduling costs nothing beside the work.
const GRAIN: usize = 1 << 14;

/// `0.5 x (1 + erf(x / sqrt 2))`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    match fused(x) {
        true => x.contiguous()?.apply_op1(Activation::Gelu),
        false => x.gelu_erf(),
    }
}

/// `x * sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    match fused(x) {
        true => x.contiguous()?.apply_op1(Activation::Silu),
        false => x.silu(),
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Activation {
    Gelu,
    Silu,
}

impl Activation {
    /// `f(x)`, and `f'(x)` when `grad`.
    #[inline(always)]
    pub(super) fn eval<T: Float>(self, x: T, grad: bool) -> T {
        let c = |v: f64| T::from_f64(v).unwrap();
        match self {
            Activation::Gelu => {
                let cdf = c(0.5) * (T::one() + (x * c(std::f64::consts::FRAC_1_SQRT_2)).erf());
                match grad {
                    false => x * cdf,
                    // Phi(x) + x phi(x), phi the standard normal density.
                    true => cdf + x * c(0.3989422804014327) * (c(-0.5) * x * x).exp_vec(),
                }
            }
            Activation::Silu => {
                let s = (T::one() + (-x).exp_vec()).recip();
                match grad {
                    false => x * s,
                    true => s * (T::one() + x * (T::one() - s)),
                }
            }
        }
    }
}

simd_fn! {
    /// `f(x)` element by element.
    fn forward<T: Float>(act: Activation, x: &[T]) -> Vec<T> {
        // SAFETY: the chunks of y pair with those of x (one length) and write each element.
        unsafe {
            written_vec(x.len(), |y| {
                y.par_chunks_mut(GRAIN).zip(x.par_chunks(GRAIN)).for_each(|(y, x)| {
                    y.iter_mut().zip(x).for_each(|(y, &x)| {
                        y.write(act.eval(x, false));
                    });
                })
            })
        }
    }
}

simd_fn! {
    /// `g f'(x)` element by element.
    fn backward<T: Float>(act: Activation, x: &[T], g: &[T]) -> Vec<T> {
        assert_eq!(x.len(), g.len(), "activation gradient: input and gradient differ in length");
        // SAFETY: the chunks of dx pair with those of x and g (one length) and write each element.
        unsafe {
            written_vec(x.len(), |dx| {
                dx.par_chunks_mut(GRAIN).zip(x.par_chunks(GRAIN)).zip(g.par_chunks(GRAIN)).for_each(|((dx, x), g)| {
                    dx.iter_mut().zip(x).zip(g).for_each(|((dx, &x), &g)| {
                        dx.write(g * act.eval(x, true));
                    });
                })
            })
        }
    }
}

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        match self {
            Activation::Gelu => "gelu-erf",
            Activation::Silu => "silu",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = float_op!(self.name(), (s, l) => x; forward(*self, x));
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&g.contiguous()?, &ActivationGrad(*self))?))
    }
}

/// dx = g f'(x).
struct ActivationGrad(Activation);

impl CustomOp2 for ActivationGrad {
    fn name(&self) -> &'static str {
        "activation-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dx = float_op!(self.name(), (s1, l1) => x, (s2, l2) => g; backward(self.0, x, g));
        Ok((dx, l1.shape().clone()))
    }
}
