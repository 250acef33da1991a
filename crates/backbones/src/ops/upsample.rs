//! Nearest-neighbour 2x upsampling of `(B, C, H, W)`, whose backward sums each 2x2 block.
//!
//! candle's `upsample_nearest2d` backward overwrites instead of accumulating, and the broadcast
//! route (reshape, `broadcast_as`, reshape) has a correct but slow strided-sum backward.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{fused, Float};

/// Each pixel of `x (B, C, H, W)` repeated into a 2x2 block: `(B, C, 2H, 2W)`.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    match fused(x) {
        true => x.contiguous()?.apply_op1(Upsample { w }),
        false => x.reshape((b, c, h, 1, w, 1))?.broadcast_as((b, c, h, 2, w, 2))?.reshape((b, c, 2 * h, 2 * w)),
    }
}

/// Width of the input; rows are independent, so the rest of the shape does not matter.
struct Upsample {
    w: usize,
}

fn upsample<T: Float>(x: &[T], w: usize) -> Vec<T> {
    let mut y = vec![T::zero(); 4 * x.len()];
    y.par_chunks_mut(4 * w).zip(x.par_chunks(w)).for_each(|(out, row)| {
        let (top, bottom) = out.split_at_mut(2 * w);
        top.chunks_mut(2).zip(row).for_each(|(pair, &v)| pair.fill(v));
        bottom.copy_from_slice(top);
    });
    y
}

fn downsample_sum<T: Float>(g: &[T], w: usize) -> Vec<T> {
    let mut dx = vec![T::zero(); g.len() / 4];
    dx.par_chunks_mut(w).zip(g.par_chunks(4 * w)).for_each(|(dx, rows)| {
        let (top, bottom) = rows.split_at(2 * w);
        for ((d, t), b) in dx.iter_mut().zip(top.chunks(2)).zip(bottom.chunks(2)) {
            *d = t[0] + t[1] + b[0] + b[1];
        }
    });
    dx
}

impl CustomOp1 for Upsample {
    fn name(&self) -> &'static str {
        "upsample-nearest2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = float_op!(self.name(), (s, l) => x; upsample(x, self.w));
        let (b, c, h, w) = l.shape().dims4()?;
        Ok((y, Shape::from((b, c, 2 * h, 2 * w))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&Downsample { w: self.w })?))
    }
}

/// The gradient of [`Upsample`]: each 2x2 block summed.
struct Downsample {
    w: usize,
}

impl CustomOp1 for Downsample {
    fn name(&self) -> &'static str {
        "upsample-nearest2x-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dx = float_op!(self.name(), (s, l) => g; downsample_sum(g, self.w));
        let (b, c, h, w) = l.shape().dims4()?;
        Ok((dx, Shape::from((b, c, h / 2, w / 2))))
    }
}
