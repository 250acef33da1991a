//! Adding a bias along the last axis, whose backward sums the gradient's rows in one pass.
//!
//! candle's `broadcast_add` backward reduces over the leading axes with its generic strided
//! reduction: 57 ms for a (8224, 2048) gradient here, about eight times a plain pass.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{fused, reduction_group, sum_in_order, Float};

/// `x + bias` with `bias` of the size of `x`'s last axis.
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let n = x.dims().last().copied().unwrap_or(1);
    if bias.elem_count() != n {
        bail!("bias_add: bias {:?} does not match the last axis of {:?}", bias.shape(), x.shape());
    }
    match fused(x) && bias.dtype() == x.dtype() {
        true => x.contiguous()?.apply_op2(&bias.flatten_all()?, BiasAdd),
        false => x.broadcast_add(&bias.flatten_all()?),
    }
}

struct BiasAdd;

/// `x + b` row by row, in one pass that writes `y` (a copy of `x` then an add in place read `x`'s
/// size twice more).
fn add_rows<T: Float>(x: &[T], b: &[T]) -> Vec<T> {
    let n = b.len().max(1);
    // Whole rows per task, at least 16k elements: one task per row (128-512 elements in a U-ViT)
    // spent 1.7% of a small U-ViT's training step in rayon's splitting.
    let rows = (1usize << 14).div_ceil(n);
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut().par_chunks_mut(n * rows).zip(x.par_chunks(n * rows)).for_each(|(out, x)| {
        for (out, row) in out.chunks_mut(n).zip(x.chunks(n)) {
            out.iter_mut().zip(row).zip(b).for_each(|((out, &x), &b)| {
                out.write(x + b);
            })
        }
    });
    // SAFETY: the loop above wrote every one of the `x.len()` elements.
    unsafe { y.set_len(x.len()) };
    y
}

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = float_op!(self.name(), (s1, l1) => x, (s2, l2) => b; add_rows(x, b));
        Ok((y, l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, bias: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = g.contiguous()?.apply_op1_no_bwd(&SumRows { n: bias.elem_count() })?;
        Ok((Some(g.clone()), Some(db)))
    }
}

/// Sum of the rows (of `n` elements) of a contiguous tensor, in a fixed order.
struct SumRows {
    n: usize,
}

fn sum_rows<T: Float>(g: &[T], n: usize) -> Vec<T> {
    let group = reduction_group(g.len() / n.max(1)) * n;
    let partials = g.par_chunks(group.max(1)).map(|rows| {
        let mut acc = vec![T::zero(); n];
        rows.chunks(n).for_each(|row| acc.iter_mut().zip(row).for_each(|(a, &v)| *a = *a + v));
        acc
    });
    sum_in_order(partials.collect(), n)
}

impl candle_core::CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "sum-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = float_op!(self.name(), (s, l) => g; sum_rows(g, self.n));
        Ok((out, Shape::from(self.n)))
    }
}
