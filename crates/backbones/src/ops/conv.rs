//! conv2d (groups 1, dilation 1) as im2col + GEMM per image, forward and both gradients.
//!
//! candle's CPU backward runs a direct transposed convolution for the input gradient and a
//! convolution with the whole gradient map as its kernel for the weight gradient; here all
//! three are one GEMM per image on an im2col buffer that lives only inside the call.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{contiguous, fused, gemm, reduction_group, sum_by, sum_in_order, Float};

/// Symmetric zero padding and stride of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub padding: usize,
    pub stride: usize,
}

/// `x (B, Cin, H, W)` convolved with `w (Cout, Cin, kh, kw)` plus `bias (Cout)`, as `F.conv2d`.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
    let cout = w.dim(0)?;
    if let Some(b) = bias.filter(|b| b.elem_count() != cout) {
        bail!("conv2d: bias {:?} does not match the {cout} output channels of weight {:?}", b.shape(), w.shape());
    }
    if fused(x) && x.dtype() == w.dtype() && bias.is_none_or(|b| b.dtype() == x.dtype()) {
        let bias = match bias {
            Some(b) => b.flatten_all()?,
            None => Tensor::zeros(cout, x.dtype(), x.device())?,
        };
        return x.contiguous()?.apply_op3(&w.contiguous()?, &bias, Conv { p });
    }
    let y = x.conv2d(w, p.padding, p.stride, 1, 1)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, cout, 1, 1))?),
        None => Ok(y),
    }
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    p: Conv2dParams,
}

impl Geom {
    fn new(x: &[usize], cout: usize, kernel: (usize, usize), p: Conv2dParams) -> Result<Self> {
        let &[b, cin, h, w] = x else { bail!("conv2d: input must be (B, C, H, W), got {x:?}") };
        let (kh, kw) = kernel;
        if p.stride == 0 || h + 2 * p.padding < kh || w + 2 * p.padding < kw {
            bail!("conv2d: kernel {kh}x{kw} with {p:?} does not fit an input of {h}x{w}");
        }
        let (oh, ow) = ((h + 2 * p.padding - kh) / p.stride + 1, (w + 2 * p.padding - kw) / p.stride + 1);
        Ok(Self { b, cin, h, w, cout, kh, kw, oh, ow, p })
    }

    fn from_weight(x: &[usize], wt: &[usize], p: Conv2dParams) -> Result<Self> {
        let &[cout, cin, kh, kw] = wt else { bail!("conv2d: weight must be (Cout, Cin, kh, kw), got {wt:?}") };
        if x.get(1) != Some(&cin) {
            bail!("conv2d: input {x:?} has not the weight's {cin} input channels");
        }
        Self::new(x, cout, (kh, kw), p)
    }

    /// Rows of the im2col matrix (Cin * kh * kw) and its columns (output pixels).
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    fn l(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1x1 convolution without stride or padding: the image itself is the im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p.stride == 1 && self.p.padding == 0
    }

    /// Output columns `ox` whose input column `ox * stride + j - padding` lies inside the image.
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        let (s, pad) = (self.p.stride, self.p.padding);
        let lo = pad.saturating_sub(j).div_ceil(s).min(self.ow);
        let hi = (self.w + pad).saturating_sub(j).div_ceil(s).clamp(lo, self.ow);
        (lo, hi)
    }

    /// Input row of output row `oy` and kernel row `i`, if inside the image.
    fn input_row(&self, oy: usize, i: usize) -> Option<usize> {
        (oy * self.p.stride + i).checked_sub(self.p.padding).filter(|&y| y < self.h)
    }

    /// Parallel over images, each GEMM single-threaded, when there are enough images to go round.
    fn parallelism(&self) -> Parallelism {
        let threads = candle_core::utils::get_num_threads();
        if self.b >= threads {
            Parallelism::None
        } else {
            Parallelism::Rayon(threads)
        }
    }
}

/// `col (K, L)` of one image `x (Cin, H, W)`.
fn im2col<T: Float>(x: &[T], g: &Geom, col: &mut [T]) {
    let (s, l) = (g.p.stride, g.l());
    for c in 0..g.cin {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut col[((c * g.kh + i) * g.kw + j) * l..][..l];
                let (lo, hi) = g.valid_cols(j);
                for oy in 0..g.oh {
                    let dst = &mut row[oy * g.ow..][..g.ow];
                    let Some(iy) = g.input_row(oy, i) else {
                        dst.fill(T::zero());
                        continue;
                    };
                    let src = &x[(c * g.h + iy) * g.w..][..g.w];
                    dst[..lo].fill(T::zero());
                    dst[hi..].fill(T::zero());
                    let x0 = lo * s + j - g.p.padding;
                    if s == 1 {
                        dst[lo..hi].copy_from_slice(&src[x0..x0 + hi - lo]);
                    } else {
                        dst[lo..hi].iter_mut().enumerate().for_each(|(n, d)| *d = src[x0 + n * s]);
                    }
                }
            }
        }
    }
}

/// Adds `col (K, L)` back onto the image `dx (Cin, H, W)` it was gathered from.
fn col2im<T: Float>(col: &[T], g: &Geom, dx: &mut [T]) {
    let (s, l) = (g.p.stride, g.l());
    dx.fill(T::zero());
    for c in 0..g.cin {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &col[((c * g.kh + i) * g.kw + j) * l..][..l];
                let (lo, hi) = g.valid_cols(j);
                for oy in 0..g.oh {
                    let Some(iy) = g.input_row(oy, i) else { continue };
                    let dst = &mut dx[(c * g.h + iy) * g.w..][..g.w];
                    let x0 = lo * s + j - g.p.padding;
                    for (n, &v) in row[oy * g.ow + lo..oy * g.ow + hi].iter().enumerate() {
                        dst[x0 + n * s] = dst[x0 + n * s] + v;
                    }
                }
            }
        }
    }
}

struct Conv {
    p: Conv2dParams,
}

fn conv_fwd<T: Float>(x: &[T], wt: &[T], bias: &[T], g: Geom) -> Vec<T> {
    let (k, l, par) = (g.k(), g.l(), g.parallelism());
    let mut out = vec![T::zero(); g.b * g.cout * l];
    let images = out.par_chunks_mut(g.cout * l).zip(x.par_chunks(g.cin * g.h * g.w));
    images.for_each_init(Vec::new, |col, (out, x)| {
        out.chunks_mut(l).zip(bias).for_each(|(row, &b)| row.fill(b));
        let col: &[T] = match g.pointwise() {
            true => x,
            false => {
                col.resize(k * l, T::zero());
                im2col(x, &g, col);
                col
            }
        };
        gemm((out, l), (g.cout, l, k), (wt, k, 1), (col, l, 1), true, par);
    });
    out
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
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
        let (g, op) = (Geom::from_weight(l1.dims(), l2.dims(), self.p)?, self.name());
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                CpuStorage::F32(conv_fwd(contiguous(x, l1, op)?, contiguous(w, l2, op)?, contiguous(b, l3, op)?, g))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                CpuStorage::F64(conv_fwd(contiguous(x, l1, op)?, contiguous(w, l2, op)?, contiguous(b, l3, op)?, g))
            }
            _ => bail!("{op}: f32 or f64 only, got {:?} and {:?}", s1.dtype(), s2.dtype()),
        };
        Ok((out, Shape::from((g.b, g.cout, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let x_dims: [usize; 4] = x.dims4()?.into();
        let (cout, cin, kh, kw) = w.dims4()?;
        let dx = grad.apply_op2_no_bwd(w, &InputGrad { p: self.p, x_dims })?;
        let dwb = x.apply_op2_no_bwd(&grad, &WeightGrad { p: self.p, kernel: (kh, kw) })?;
        let dw = dwb.narrow(0, 0, cout * cin * kh * kw)?.reshape(w.shape())?;
        let db = dwb.narrow(0, cout * cin * kh * kw, cout)?.reshape(b.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// dx from the output gradient `g (B, Cout, oh, ow)` and the weight: col2im(W^T g) per image.
struct InputGrad {
    p: Conv2dParams,
    x_dims: [usize; 4],
}

fn input_grad<T: Float>(grad: &[T], wt: &[T], g: Geom) -> Vec<T> {
    let (k, l, par) = (g.k(), g.l(), g.parallelism());
    let mut dx = vec![T::zero(); g.b * g.cin * g.h * g.w];
    let images = dx.par_chunks_mut(g.cin * g.h * g.w).zip(grad.par_chunks(g.cout * l));
    images.for_each_init(Vec::new, |col, (dx, grad)| match g.pointwise() {
        true => gemm((dx, l), (k, l, g.cout), (wt, 1, k), (grad, l, 1), false, par),
        false => {
            col.resize(k * l, T::zero());
            gemm((col, l), (k, l, g.cout), (wt, 1, k), (grad, l, 1), false, par);
            col2im(col, &g, dx);
        }
    });
    dx
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "conv2d-im2col-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geom::from_weight(&self.x_dims, l2.dims(), self.p)?;
        if l1.dims() != [g.b, g.cout, g.oh, g.ow] {
            bail!("{}: gradient {:?} does not match the output of {g:?}", self.name(), l1.dims());
        }
        let dx = match (s1, s2) {
            (CpuStorage::F32(d), CpuStorage::F32(w)) => {
                CpuStorage::F32(input_grad(contiguous(d, l1, self.name())?, contiguous(w, l2, self.name())?, g))
            }
            (CpuStorage::F64(d), CpuStorage::F64(w)) => {
                CpuStorage::F64(input_grad(contiguous(d, l1, self.name())?, contiguous(w, l2, self.name())?, g))
            }
            _ => bail!("{}: f32 or f64 only, got {:?} and {:?}", self.name(), s1.dtype(), s2.dtype()),
        };
        Ok((dx, Shape::from(self.x_dims.to_vec())))
    }
}

/// `[dW, dbias]` from the input and the output gradient: the sums over images of g col^T and of
/// g's rows.
struct WeightGrad {
    p: Conv2dParams,
    kernel: (usize, usize),
}

fn weight_grad<T: Float>(x: &[T], grad: &[T], g: Geom) -> Vec<T> {
    let (k, l, par) = (g.k(), g.l(), g.parallelism());
    let (image, len, group) = (g.cin * g.h * g.w, g.cout * (k + 1), reduction_group(g.b));
    let groups = x.par_chunks(group * image).zip(grad.par_chunks(group * g.cout * l));
    let partials = groups.map(|(x, grad)| {
        let (mut dw, mut col) = (vec![T::zero(); len], Vec::new());
        for (x, grad) in x.chunks(image).zip(grad.chunks(g.cout * l)) {
            let db = &mut dw[g.cout * k..];
            db.iter_mut().zip(grad.chunks(l)).for_each(|(db, row)| *db = *db + sum_by(row, row, |v, _| v));
            let col_ref: &[T] = match g.pointwise() {
                true => x,
                false => {
                    col.resize(k * l, T::zero());
                    im2col(x, &g, &mut col);
                    &col
                }
            };
            gemm((&mut dw, k), (g.cout, k, l), (grad, l, 1), (col_ref, 1, l), true, par);
        }
        dw
    });
    sum_in_order(partials.collect(), len)
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "conv2d-im2col-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let cout = l2.dims().get(1).copied().unwrap_or(0);
        let g = Geom::new(l1.dims(), cout, self.kernel, self.p)?;
        if l2.dims() != [g.b, g.cout, g.oh, g.ow] {
            bail!("{}: gradient {:?} does not match the output of {g:?}", self.name(), l2.dims());
        }
        let dw = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(d)) => {
                CpuStorage::F32(weight_grad(contiguous(x, l1, self.name())?, contiguous(d, l2, self.name())?, g))
            }
            (CpuStorage::F64(x), CpuStorage::F64(d)) => {
                CpuStorage::F64(weight_grad(contiguous(x, l1, self.name())?, contiguous(d, l2, self.name())?, g))
            }
            _ => bail!("{}: f32 or f64 only, got {:?} and {:?}", self.name(), s1.dtype(), s2.dtype()),
        };
        Ok((dw, Shape::from(g.cout * (g.k() + 1))))
    }
}
