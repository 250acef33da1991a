//! Softmax over the last axis, one pass forward and one backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{fused, sum_by, Float};

/// Softmax over the last axis (max-subtracted, so it does not overflow).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    match fused(x) {
        true => x.contiguous()?.apply_op1(Softmax),
        false => composed(x),
    }
}

/// The same from candle's primitive ops (other devices and dtypes; the tests' reference).
pub(super) fn composed(x: &Tensor) -> Result<Tensor> {
    // The max is detached: softmax is shift-invariant, so no gradient flows through it.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

fn row_len(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

struct Softmax;

simd_fn! {
    fn softmax<T: Float>(x: &[T], n: usize) -> Vec<T> {
        let mut y = x.to_vec();
        y.par_chunks_mut(n).for_each(|y| rows_in_place(y, n));
        y
    }
}

/// Softmax of each row (of `n` elements) of `x`, in place. Max, exponentials and sum are
/// separate passes over eight lanes each, so that every one vectorises.
#[inline(always)]
pub(super) fn rows_in_place<T: Float>(x: &mut [T], n: usize) {
    for row in x.chunks_mut(n) {
        let max = max_by_lanes(row);
        row.iter_mut().for_each(|v| *v = (*v - max).exp_vec());
        let inv = sum_by(row, row, |v, _| v).recip();
        row.iter_mut().for_each(|v| *v = *v * inv);
    }
}

/// The largest element, over eight independent running maxima.
#[inline(always)]
fn max_by_lanes<T: Float>(row: &[T]) -> T {
    const LANES: usize = 8;
    let mut acc = [T::neg_infinity(); LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder().iter().copied().fold(T::neg_infinity(), T::max);
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().copied().fold(rest, T::max)
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = row_len(l);
        let y = float_op!(self.name(), (s, l) => x; softmax(x, n));
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxGrad)?))
    }
}

/// dx = y * (g - sum(g * y)) per row.
struct SoftmaxGrad;

simd_fn! {
    fn softmax_grad<T: Float>(y: &[T], g: &[T], n: usize) -> Vec<T> {
        let mut dx = vec![T::zero(); y.len()];
        dx.par_chunks_mut(n).zip(y.par_chunks(n)).zip(g.par_chunks(n)).for_each(|((dx, y), g)| {
            let dot = sum_by(y, g, |y, g| y * g);
            for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                *dx = y * (g - dot);
            }
        });
        dx
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-last-dim-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = row_len(l1);
        let dx = float_op!(self.name(), (s1, l1) => y, (s2, l2) => g; softmax_grad(y, g, n));
        Ok((dx, l1.shape().clone()))
    }
}
