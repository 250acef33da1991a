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

impl Pool3 {
    /// Taps of output position `o` along an axis of length `n`: input indices lo..hi.
    fn taps(self, o: usize, n: usize) -> (usize, usize) {
        let (s, p) = self.stride_padding();
        ((o * s).saturating_sub(p), (o * s + 3 - p).min(n))
    }

    /// The taps' sum (from -0.0, as `Iterator::sum`) or maximum (from -inf), left to right.
    fn combine(self, acc: f32, v: f32) -> f32 {
        match self {
            Pool3::AvgSame => acc + v,
            Pool3::Max { .. } => acc.max(v),
        }
    }

    fn identity(self) -> f32 {
        match self {
            Pool3::AvgSame => -0.0,
            Pool3::Max { .. } => f32::NEG_INFINITY,
        }
    }

    /// One channel plane `src (h, w)` into `dst (oh, ow)` (`ow` wide): each input row's taps per output column
    /// into `rows (h, ow)`, then each output row from its input rows, whole rows at a time so that
    /// the loops vectorise (a loop per output pixel ran scalar: a tenth of an FID evaluation). The
    /// taps combine in the per-pixel order, so the results are the same bit for bit.
    fn plane(self, src: &[f32], (h, w): (usize, usize), dst: &mut [f32], ow: usize, rows: &mut Vec<f32>) {
        let (s, p) = self.stride_padding();
        rows.resize(h * ow, 0.0);
        // Output columns whose three taps all lie inside the row.
        let (lo, hi) = (p.div_ceil(s), ((w + p).saturating_sub(3) / s + 1).min(ow));
        for (row, out) in src.chunks(w).zip(rows.chunks_mut(ow)) {
            let edge = |ox: usize| {
                let (x0, x1) = self.taps(ox, w);
                row[x0..x1].iter().fold(self.identity(), |m, &v| self.combine(m, v))
            };
            (0..lo.min(ow)).for_each(|ox| out[ox] = edge(ox));
            (hi.max(lo)..ow).for_each(|ox| out[ox] = edge(ox));
            if hi > lo {
                let start = lo * s - p;
                let (a, b, c) = (&row[start..], &row[start + 1..], &row[start + 2..]);
                for (k, o) in out[lo..hi].iter_mut().enumerate() {
                    let i = k * s;
                    *o = self.combine(self.combine(self.combine(self.identity(), a[i]), b[i]), c[i]);
                }
            }
        }
        for (oy, out) in dst.chunks_mut(ow).enumerate() {
            let (y0, y1) = self.taps(oy, h);
            out.fill(self.identity());
            for y in y0..y1 {
                out.iter_mut().zip(&rows[y * ow..][..ow]).for_each(|(o, &v)| *o = self.combine(*o, v));
            }
            if let Pool3::AvgSame = self {
                for (ox, o) in out.iter_mut().enumerate() {
                    let (x0, x1) = self.taps(ox, w);
                    *o /= ((y1 - y0) * (x1 - x0)) as f32;
                }
            }
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
        let mut out = vec![0f32; b * c * oh * ow];
        let planes = out.par_chunks_mut(oh * ow).zip(x[start..end].par_chunks(h * w));
        planes.for_each_init(Vec::new, |rows, (dst, src)| self.plane(src, (h, w), dst, ow, rows));
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The per-pixel loop the row/column passes replaced, as the reference they must equal bit for bit.
    fn per_pixel(pool: Pool3, x: &[f32], (h, w): (usize, usize)) -> Vec<f32> {
        let (oh, ow) = pool.out_size(h, w).unwrap();
        let mut out = Vec::new();
        for src in x.chunks(h * w) {
            for oy in 0..oh {
                let (y0, y1) = pool.taps(oy, h);
                for ox in 0..ow {
                    let (x0, x1) = pool.taps(ox, w);
                    let rows = (y0..y1).map(|y| &src[y * w + x0..y * w + x1]);
                    out.push(match pool {
                        Pool3::AvgSame => {
                            rows.map(|r| r.iter().sum::<f32>()).sum::<f32>() / ((y1 - y0) * (x1 - x0)) as f32
                        }
                        Pool3::Max { .. } => rows.flatten().fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
                    });
                }
            }
        }
        out
    }

    #[test]
    fn row_and_column_passes_equal_the_per_pixel_loop() -> Result<()> {
        let pools = [Pool3::AvgSame, Pool3::Max { stride: 2, padding: 0 }, Pool3::Max { stride: 1, padding: 1 }];
        let more = [Pool3::Max { stride: 2, padding: 1 }, Pool3::Max { stride: 3, padding: 0 }];
        for (h, w) in [(9, 8), (3, 3), (4, 7), (35, 35), (17, 16)] {
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &Device::Cpu)?;
            for pool in pools.into_iter().chain(more) {
                let got = pool.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
                let want = per_pixel(pool, &x.flatten_all()?.to_vec1::<f32>()?, (h, w));
                let same = got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{pool:?} on {h}x{w}:\n{got:?}\n{want:?}");
            }
        }
        Ok(())
    }

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
