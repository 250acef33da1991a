//! Normalisation over contiguous chunks: LayerNorm normalises each row of the last axis, GroupNorm
//! each group's channels and pixels (contiguous in NCHW). The affine part stays with the caller.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{contiguous, fused, sum_by, Float};

/// `(x - mean) / sqrt(var + eps)` over each run of `chunk` consecutive elements of `x` (in
/// row-major order), with the biased variance, as PyTorch's layer and group norms.
pub fn normalize_chunks(x: &Tensor, chunk: usize, eps: f64) -> Result<Tensor> {
    if chunk == 0 || !x.elem_count().is_multiple_of(chunk) {
        bail!("normalize_chunks: chunk {chunk} does not divide the {} elements of {:?}", x.elem_count(), x.shape());
    }
    match fused(x) {
        true => x.contiguous()?.apply_op1(Normalize { chunk, eps }),
        false => composed(x, chunk, eps),
    }
}

/// The same from candle's primitive ops (other devices and dtypes; the tests' reference).
pub(super) fn composed(x: &Tensor, chunk: usize, eps: f64) -> Result<Tensor> {
    let rows = x.reshape((x.elem_count() / chunk, chunk))?;
    let centred = rows.broadcast_sub(&rows.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(x.shape())
}

/// Mean and 1/sqrt(var + eps) of one chunk, two-pass for accuracy.
fn moments<T: Float>(x: &[T], eps: f64) -> (T, T) {
    let n = T::from_usize(x.len()).unwrap();
    let mean = sum_by(x, x, |v, _| v) / n;
    let var = sum_by(x, x, |v, _| (v - mean) * (v - mean)) / n;
    (mean, (var + T::from_f64(eps).unwrap()).sqrt().recip())
}

struct Normalize {
    chunk: usize,
    eps: f64,
}

impl Normalize {
    fn fwd<T: Float>(&self, x: &[T]) -> Vec<T> {
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(self.chunk).zip(x.par_chunks(self.chunk)).for_each(|(y, x)| {
            let (mean, rstd) = moments(x, self.eps);
            y.iter_mut().zip(x).for_each(|(y, &x)| *y = (x - mean) * rstd);
        });
        y
    }
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "normalize-chunks"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = match s {
            CpuStorage::F32(x) => CpuStorage::F32(self.fwd(contiguous(x, l, self.name())?)),
            CpuStorage::F64(x) => CpuStorage::F64(self.fwd(contiguous(x, l, self.name())?)),
            _ => bail!("{}: f32 or f64 only, got {:?}", self.name(), s.dtype()),
        };
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let grad = x.apply_op2_no_bwd(&g.contiguous()?, &NormalizeGrad { chunk: self.chunk, eps: self.eps })?;
        Ok(Some(grad))
    }
}

/// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) per chunk, xhat recomputed from x.
struct NormalizeGrad {
    chunk: usize,
    eps: f64,
}

impl NormalizeGrad {
    fn bwd<T: Float>(&self, x: &[T], g: &[T]) -> Vec<T> {
        let mut dx = vec![T::zero(); x.len()];
        let n = T::from_usize(self.chunk).unwrap();
        let chunks = dx.par_chunks_mut(self.chunk).zip(x.par_chunks(self.chunk)).zip(g.par_chunks(self.chunk));
        chunks.for_each(|((dx, x), g)| {
            let (mean, rstd) = moments(x, self.eps);
            let mean_g = sum_by(g, g, |g, _| g) / n;
            let mean_gx = sum_by(x, g, |x, g| g * (x - mean)) * rstd / n;
            for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                *dx = rstd * (g - mean_g - (x - mean) * rstd * mean_gx);
            }
        });
        dx
    }
}

impl CustomOp2 for NormalizeGrad {
    fn name(&self) -> &'static str {
        "normalize-chunks-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dx = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                CpuStorage::F32(self.bwd(contiguous(x, l1, self.name())?, contiguous(g, l2, self.name())?))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                CpuStorage::F64(self.bwd(contiguous(x, l1, self.name())?, contiguous(g, l2, self.name())?))
            }
            _ => bail!("{}: f32 or f64 only, got {:?} and {:?}", self.name(), s1.dtype(), s2.dtype()),
        };
        Ok((dx, l1.shape().clone()))
    }
}
