//! LayerNorm and GroupNorm with their affine part, one pass forward and one backward.
//!
//! Both normalise runs of consecutive elements (`chunk`: a row of the last axis; a group's
//! channels and pixels, contiguous in NCHW) and scale each channel, whose elements come in runs
//! of `inner` (1 for LayerNorm, the pixels of a channel for GroupNorm).

use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::activation::Activation;
use super::{assume_init, fused, reduction_group, sum_by, sum_in_order, written_vec, Float};

/// `nn.LayerNorm` over the last axis: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    AffineNorm::layer(x, eps)?.apply(x, weight, bias)
}

/// `nn.GroupNorm` over `x (B, C, ...)`: statistics per image and group of `C / groups` channels.
pub fn group_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, groups: usize, eps: f64) -> Result<Tensor> {
    AffineNorm::group(x, groups, eps, false)?.apply(x, weight, bias)
}

/// `silu(group_norm(x))` in one pass (the UNet's ResNets), without the intermediate tensor.
pub fn group_norm_silu(x: &Tensor, weight: &Tensor, bias: &Tensor, groups: usize, eps: f64) -> Result<Tensor> {
    AffineNorm::group(x, groups, eps, true)?.apply(x, weight, bias)
}

#[derive(Debug, Clone, Copy)]
struct AffineNorm {
    chunk: usize,
    inner: usize,
    channels: usize,
    eps: f64,
    /// SiLU applied to the output.
    silu: bool,
    /// The channel axis (for candle's broadcasting on the composed path).
    axis: usize,
}

impl AffineNorm {
    fn layer(x: &Tensor, eps: f64) -> Result<Self> {
        let channels = x.dim(D::Minus1)?;
        Ok(AffineNorm { chunk: channels, inner: 1, channels, eps, silu: false, axis: x.rank() - 1 })
    }

    fn group(x: &Tensor, groups: usize, eps: f64, silu: bool) -> Result<Self> {
        let channels = x.dim(1)?;
        if groups == 0 || !channels.is_multiple_of(groups) {
            bail!("group_norm: {channels} channels do not split into {groups} groups");
        }
        let inner = x.dims()[2..].iter().product::<usize>();
        Ok(AffineNorm { chunk: channels / groups * inner, inner, channels, eps, silu, axis: 1 })
    }

    /// Runs the fused op, or candle's primitives where it does not apply.
    fn apply(self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        for (name, p) in [("weight", weight), ("bias", bias)] {
            if p.elem_count() != self.channels {
                bail!("norm: {name} {:?} does not match the {} channels of {:?}", p.shape(), self.channels, x.shape());
            }
        }
        if fused(x) && weight.dtype() == x.dtype() && bias.dtype() == x.dtype() {
            return x.contiguous()?.apply_op3(&weight.flatten_all()?, &bias.flatten_all()?, self);
        }
        self.composed_affine(x, weight, bias)
    }

    /// The whole function from candle's primitive ops (other devices and dtypes; the tests' reference).
    fn composed_affine(&self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let mut affine = vec![1; x.rank()];
        affine[self.axis] = self.channels;
        let normed = self.composed(x)?;
        let y = normed.broadcast_mul(&weight.reshape(affine.as_slice())?)?.broadcast_add(&bias.reshape(affine)?)?;
        if self.silu {
            y.silu()
        } else {
            Ok(y)
        }
    }

    /// The normalisation alone from candle's primitive ops.
    fn composed(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.reshape((x.elem_count() / self.chunk, self.chunk))?;
        let centred = rows.broadcast_sub(&rows.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred.broadcast_div(&(var + self.eps)?.sqrt()?)?.reshape(x.shape())
    }

    /// Channel of run `r` of chunk `ci`.
    #[inline(always)]
    fn channel(&self, ci: usize, r: usize) -> usize {
        (ci * (self.chunk / self.inner) + r) % self.channels
    }

    /// The gradient at the affine output: `g` itself, or `g silu'(z)` with z recomputed from x.
    #[inline(always)]
    fn pre_activation_grad<T: Float>(&self, ci: usize, x: &[T], w: &[T], b: &[T], g: &[T], dz: &mut Vec<T>) {
        let (mean, rstd) = moments(x, self.eps);
        dz.clear();
        dz.resize(x.len(), T::zero());
        let silu_grad = |z: T| Activation::Silu.eval(z, true);
        if self.inner == 1 {
            for ((((dz, &x), &g), &w), &b) in dz.iter_mut().zip(x).zip(g).zip(w).zip(b) {
                *dz = g * silu_grad((x - mean) * rstd * w + b);
            }
            return;
        }
        // One channel per run of `inner` elements: its scale and shift once, then a loop that
        // vectorises.
        let runs = dz.chunks_mut(self.inner).zip(x.chunks(self.inner)).zip(g.chunks(self.inner));
        for (r, ((dz, x), g)) in runs.enumerate() {
            let c = self.channel(ci, r);
            let (scale, shift) = (rstd * w[c], b[c] - mean * rstd * w[c]);
            dz.iter_mut().zip(x).zip(g).for_each(|((dz, &x), &g)| *dz = g * silu_grad(x * scale + shift));
        }
    }

    /// dx of one chunk: rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) with dxhat = g * w;
    /// adds the chunk's sum(g * xhat) and sum(g) per channel to `acc = [dweight, dbias]`.
    #[inline(always)]
    fn chunk_bwd<T: Float>(&self, ci: usize, x: &[T], w: &[T], g: &[T], dx: &mut [T], acc: &mut [T]) {
        let (mean, rstd) = moments(x, self.eps);
        let (dw, db) = acc.split_at_mut(self.channels);
        let (mut s1, mut s2) = (T::zero(), T::zero());
        if self.inner == 1 {
            for (i, (&x, &g)) in x.iter().zip(g).enumerate() {
                let xhat = (x - mean) * rstd;
                dw[i] = dw[i] + g * xhat;
                db[i] = db[i] + g;
                s1 = s1 + g * w[i];
                s2 = s2 + g * w[i] * xhat;
            }
        } else {
            for (r, (x, g)) in x.chunks(self.inner).zip(g.chunks(self.inner)).enumerate() {
                let ch = self.channel(ci, r);
                let (sum_g, sum_gx) = (sum_by(g, g, |g, _| g), sum_by(x, g, |x, g| g * (x - mean)) * rstd);
                dw[ch] = dw[ch] + sum_gx;
                db[ch] = db[ch] + sum_g;
                s1 = s1 + sum_g * w[ch];
                s2 = s2 + sum_gx * w[ch];
            }
        }
        let len = T::from_usize(x.len()).unwrap();
        let (m1, m2) = (s1 / len, s2 / len);
        if self.inner == 1 {
            for (((dx, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(w) {
                *dx = rstd * (g * w - m1 - (x - mean) * rstd * m2);
            }
            return;
        }
        let runs = dx.chunks_mut(self.inner).zip(x.chunks(self.inner)).zip(g.chunks(self.inner));
        for (r, ((dx, x), g)) in runs.enumerate() {
            let w = w[self.channel(ci, r)];
            for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                *dx = rstd * (g * w - m1 - (x - mean) * rstd * m2);
            }
        }
    }
}

simd_fn! {
    /// The normalised, affine (and SiLU'd) output.
    fn norm_fwd<T: Float>(norm: &AffineNorm, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
        // Every chunk writes all of its elements (a row of the last axis zips with weight and
        // bias, which must cover it).
        assert!(norm.inner != 1 || (w.len() >= norm.chunk && b.len() >= norm.chunk), "norm: weight shorter than a row");
        let write = |y: &mut [MaybeUninit<T>]| {
            y.par_chunks_mut(norm.chunk).zip(x.par_chunks(norm.chunk)).enumerate().for_each(|(ci, (y, x))| {
                let (mean, rstd) = moments(x, norm.eps);
                if norm.inner == 1 {
                    for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                        y.write((x - mean) * rstd * w + b);
                    }
                } else {
                    for (r, (y, x)) in y.chunks_mut(norm.inner).zip(x.chunks(norm.inner)).enumerate() {
                        let c = norm.channel(ci, r);
                        let (scale, shift) = (rstd * w[c], b[c] - mean * rstd * w[c]);
                        y.iter_mut().zip(x).for_each(|(y, &x)| {
                            y.write(x * scale + shift);
                        });
                    }
                }
                if norm.silu {
                    // SAFETY: the chunk's elements were all written above (y and x have one length).
                    let y = unsafe { assume_init(y) };
                    y.iter_mut().for_each(|y| *y = Activation::Silu.eval(*y, false));
                }
            })
        };
        // SAFETY: the chunks cover all of `y`, and each writes all of its elements.
        unsafe { written_vec(x.len(), write) }
    }
}

simd_fn! {
    /// `[dx, dweight, dbias]` flattened into one buffer; `wb` is `[weight, bias]`.
    fn norm_bwd<T: Float>(norm: &AffineNorm, x: &[T], wb: &[T], g: &[T]) -> Vec<T> {
        let (w, b) = wb.split_at(norm.channels);
        let (n, c) = (x.len(), norm.channels);
        let mut out = vec![T::zero(); n + 2 * c];
        let (dx, dparams) = out.split_at_mut(n);
        let (group, chunk) = (reduction_group(n / norm.chunk), norm.chunk);
        let groups = dx.par_chunks_mut(group * chunk).zip(x.par_chunks(group * chunk)).zip(g.par_chunks(group * chunk));
        let partials = groups.enumerate().map(|(gi, ((dx, x), g))| {
            let (mut acc, mut dz) = (vec![T::zero(); 2 * c], Vec::new());
            let chunks = dx.chunks_mut(chunk).zip(x.chunks(chunk)).zip(g.chunks(chunk));
            for (i, ((dx, x), g)) in chunks.enumerate() {
                let ci = gi * group + i;
                if norm.silu {
                    norm.pre_activation_grad(ci, x, w, b, g, &mut dz);
                    norm.chunk_bwd(ci, x, w, &dz, dx, &mut acc);
                } else {
                    norm.chunk_bwd(ci, x, w, g, dx, &mut acc);
                }
            }
            acc
        });
        let sum = sum_in_order(partials.collect(), 2 * c);
        dparams.copy_from_slice(&sum);
        out
    }
}

/// Mean and 1/sqrt(var + eps) of one chunk, two-pass for accuracy.
#[inline(always)]
fn moments<T: Float>(x: &[T], eps: f64) -> (T, T) {
    let n = T::from_usize(x.len()).unwrap();
    let mean = sum_by(x, x, |v, _| v) / n;
    let var = sum_by(x, x, |v, _| (v - mean) * (v - mean)) / n;
    (mean, (var + T::from_f64(eps).unwrap()).sqrt().recip())
}

impl CustomOp3 for AffineNorm {
    fn name(&self) -> &'static str {
        "affine-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let y = float_op!(op, (s1, l1) => x, (s2, l2) => w, (s3, l3) => b; norm_fwd(self, x, w, b));
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c) = (x.elem_count(), self.channels);
        let wb = Tensor::cat(&[w, b], 0)?;
        let all = x.apply_op3_no_bwd(&wb, &g.contiguous()?, &AffineNormGrad(*self))?;
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = all.narrow(0, n, c)?.reshape(w.shape())?;
        let db = all.narrow(0, n + c, c)?.reshape(b.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// The gradients of [`AffineNorm`] from (x, [weight, bias], output gradient), as `[dx, dweight, dbias]`.
struct AffineNormGrad(AffineNorm);

impl CustomOp3 for AffineNormGrad {
    fn name(&self) -> &'static str {
        "affine-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let out = float_op!(op, (s1, l1) => x, (s2, l2) => wb, (s3, l3) => g; norm_bwd(&self.0, x, wb, g));
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * self.0.channels)))
    }
}

#[cfg(test)]
pub(super) fn composed(x: &Tensor, w: &Tensor, b: &Tensor, groups: Option<usize>, eps: f64) -> Result<Tensor> {
    let norm = match groups {
        None => AffineNorm::layer(x, eps)?,
        Some(g) => AffineNorm::group(x, g, eps, false)?,
    };
    norm.composed_affine(x, w, b)
}
