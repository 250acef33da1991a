//! The Inception network's 3x3 pools as one CPU pass each (candle's pools need padded copies of
//! their input, and `count_include_pad=False` two more pools of a ones map).

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// A 3x3 pool over each channel plane.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pool3 {
    /// Stride 1, zero padding 1, the mean of the taps inside the image (`count_include_pad=False`).
    AvgSame,
    /// Maximum with `-inf` padding, as `F.max_pool2d(kernel_size=3, stride, padding)`.
    Max { stride: usize, padding: usize },
}

impl Pool3 {
    pub(crate) fn forward(self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if self.out_size(h, w).is_none() {
            bail!("3x3 pool {self:?} does not fit a {h}x{w} input");
        }
        match x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            true => x.contiguous()?.apply_op1_no_bwd(&self),
            false => self.composed(x),
        }
    }

    fn stride_padding(self) -> (usize, usize) {
        match self {
            Pool3::AvgSame => (1, 1),
            Pool3::Max { stride, padding } => (stride, padding),
        }
    }

    fn out_size(self, h: usize, w: usize) -> Option<(usize, usize)> {
        let (s, p) = self.stride_padding();
        let o = |n: usize| (n + 2 * p).checked_sub(3).map(|m| m / s + 1);
        Some((o(h)?, o(w)?))
    }

    /// The same pools from candle's ops (other devices and dtypes).
    fn composed(self, x: &Tensor) -> Result<Tensor> {
        let pad = |t: &Tensor, p: usize| t.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p);
        match self {
            Pool3::AvgSame => {
                let (_, _, h, w) = x.dims4()?;
                let sums = pad(x, 1)?.avg_pool2d_with_stride(3, 1)?;
                let ones = Tensor::ones((1, 1, h, w), x.dtype(), x.device())?;
                sums.broadcast_div(&pad(&ones, 1)?.avg_pool2d_with_stride(3, 1)?)
            }
            // Only ever applied to ReLU outputs (>= 0), where zero padding gives the same maxima.
            Pool3::Max { stride, padding } => pad(x, padding)?.max_pool2d_with_stride(3, stride),
        }
    }
}

impl CustomOp1 for Pool3 {
    fn name(&self) -> &'static str {
        "pool3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = s else { bail!("pool3x3: expects f32") };
        let Some((start, end)) = l.contiguous_offsets() else { bail!("pool3x3: expects a contiguous input") };
        let &[b, c, h, w] = l.dims() else { bail!("pool3x3: expects (B, C, H, W), got {:?}", l.dims()) };
        let Some((oh, ow)) = self.out_size(h, w) else { bail!("pool3x3: {self:?} does not fit {h}x{w}") };
        let (s, p) = self.stride_padding();
        let mut out = vec![0f32; b * c * oh * ow];
        // Taps of output position `o` along one axis of length `n`: input indices lo..hi.
        let taps = |o: usize, n: usize| ((o * s).saturating_sub(p), (o * s + 3 - p).min(n));
        out.par_chunks_mut(oh * ow).zip(x[start..end].par_chunks(h * w)).for_each(|(dst, src)| {
            for oy in 0..oh {
                let (y0, y1) = taps(oy, h);
                for ox in 0..ow {
                    let (x0, x1) = taps(ox, w);
                    let rows = (y0..y1).map(|y| &src[y * w + x0..y * w + x1]);
                    dst[oy * ow + ox] = match self {
                        Pool3::AvgSame => {
                            let sum: f32 = rows.map(|r| r.iter().sum::<f32>()).sum();
                            sum / ((y1 - y0) * (x1 - x0)) as f32
                        }
                        Pool3::Max { .. } => rows.flatten().fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
                    };
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The one-pass kernels against the composed candle ops.
    #[test]
    fn kernels_match_composed_pools() -> Result<()> {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 9, 8), &Device::Cpu)?.relu()?;
        for pool in [Pool3::AvgSame, Pool3::Max { stride: 2, padding: 0 }, Pool3::Max { stride: 1, padding: 1 }] {
            let (a, b) = (pool.forward(&x)?, pool.composed(&x)?);
            assert_eq!(a.dims(), b.dims(), "{pool:?}");
            let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{pool:?}: {diff}");
        }
        Ok(())
    }
}
