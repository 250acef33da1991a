//! conv2d (groups 1, dilation 1) as im2col + GEMM per image, forward and both gradients, and
//! an inference-only variant with asymmetric padding and the ReLU fused into its output pass.
//!
//! candle's CPU backward runs a direct transposed convolution for the input gradient and a
//! convolution with the whole gradient map as its kernel for the weight gradient; here all
//! three are one GEMM per image on an im2col buffer that lives only inside the call.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::bf16_matmul::{conv_taps_bf16, gemm_bf16_operands, gemm_bf16_operands_into, Operand, PairPlanes};
use super::direct_conv::{self, DirectConv};
use super::implicit_im2col::{Im2col, Im2colTable};
use super::winograd;
use super::{
    amx_available, as_f32, as_f32_mut, as_f32_uninit, assume_init, autocast_bf16_active, from_f32, fused, gemm, grown,
    reduction_group, sum_by, sum_in_order, written_vec, Float, Scratch,
};

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
        let conv = Conv { pad: (p.padding, p.padding), stride: p.stride, relu: false, bf16: autocast_bf16_active() };
        return x.contiguous()?.apply_op3(&w.contiguous()?, &bias, conv);
    }
    let y = x.conv2d(w, p.padding, p.stride, 1, 1)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, cout, 1, 1))?),
        None => Ok(y),
    }
}

/// Inference only (no gradient): `conv(x, w) + bias`, then a ReLU if `relu`, with zero padding
/// `(rows, columns)` (Inception's 1x7 and 7x1 kernels pad one side only) and no padded copy of
/// the input; bias and ReLU are applied in the pass that writes the output.
pub fn conv2d_inference(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    pad: (usize, usize),
    stride: usize,
    relu: bool,
) -> Result<Tensor> {
    let cout = w.dim(0)?;
    if bias.elem_count() != cout {
        bail!("conv2d: bias {:?} does not match the {cout} output channels of weight {:?}", bias.shape(), w.shape());
    }
    if fused(x) && x.dtype() == w.dtype() && bias.dtype() == x.dtype() {
        let conv = Conv { pad, stride, relu, bf16: autocast_bf16_active() };
        return x.contiguous()?.apply_op3_no_bwd(&w.contiguous()?, &bias.flatten_all()?, &conv);
    }
    let x = x.pad_with_zeros(2, pad.0, pad.0)?.pad_with_zeros(3, pad.1, pad.1)?;
    let y = x.conv2d(w, 0, stride, 1, 1)?.broadcast_add(&bias.reshape((1, cout, 1, 1))?)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// Sizes of one convolution, and whether its GEMMs take bf16 operands (autocast).
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
    /// Zero padding (rows, columns).
    pad: (usize, usize),
    stride: usize,
    bf16: bool,
}

impl Geom {
    fn new(x: &[usize], cout: usize, kernel: (usize, usize), pad: (usize, usize), stride: usize) -> Result<Self> {
        let &[b, cin, h, w] = x else { bail!("conv2d: input must be (B, C, H, W), got {x:?}") };
        let (kh, kw) = kernel;
        if stride == 0 || h + 2 * pad.0 < kh || w + 2 * pad.1 < kw {
            bail!("conv2d: kernel {kh}x{kw} with padding {pad:?} and stride {stride} does not fit an input of {h}x{w}");
        }
        let (oh, ow) = ((h + 2 * pad.0 - kh) / stride + 1, (w + 2 * pad.1 - kw) / stride + 1);
        Ok(Self { b, cin, h, w, cout, kh, kw, oh, ow, pad, stride, bf16: false })
    }

    fn from_weight(x: &[usize], wt: &[usize], pad: (usize, usize), stride: usize) -> Result<Self> {
        let &[cout, cin, kh, kw] = wt else { bail!("conv2d: weight must be (Cout, Cin, kh, kw), got {wt:?}") };
        if x.get(1) != Some(&cin) {
            bail!("conv2d: input {x:?} has not the weight's {cin} input channels");
        }
        Self::new(x, cout, (kh, kw), pad, stride)
    }

    fn autocast(self, bf16: bool) -> Self {
        Self { bf16, ..self }
    }

    /// Rows of the im2col matrix (Cin * kh * kw) and its columns (output pixels).
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    fn l(&self) -> usize {
        self.oh * self.ow
    }

    /// Output columns `ox` whose input column `ox * stride + j - padding` lies inside the image.
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        let (s, pad) = (self.stride, self.pad.1);
        let lo = pad.saturating_sub(j).div_ceil(s).min(self.ow);
        let hi = (self.w + pad).saturating_sub(j).div_ceil(s).clamp(lo, self.ow);
        (lo, hi)
    }

    /// Input row of output row `oy` and kernel row `i`, if inside the image.
    fn input_row(&self, oy: usize, i: usize) -> Option<usize> {
        (oy * self.stride + i).checked_sub(self.pad.0).filter(|&y| y < self.h)
    }

    /// Images per GEMM: enough for 256-2048 output columns (small feature maps then still make
    /// wide GEMMs; much wider ones ran slower here), one where an image alone has 512 (its GEMM
    /// then reads and writes the image's own gradient and output, without a copy to or from the
    /// GEMM's layout); fixed by the shape, so results are reproducible.
    fn group(&self) -> usize {
        if self.l() >= 512 {
            return 1;
        }
        // The im2col buffer stays near 8 MB (at batch 32, a 512-channel 8x8 convolution ran 1.8x
        // faster with 6 images per GEMM than with all 32).
        const COL_ELEMENTS: usize = 1 << 21;
        let columns = (COL_ELEMENTS / self.k()).clamp(256, 2048);
        (columns / self.l()).clamp(1, self.b)
    }

    fn image(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// The im2col matrix of the `n` images `x` (as [`im2col`] writes it), for the AMX GEMM to
    /// read in place, through `table` ([`Geom::im2col_table`] of n).
    fn im2col_operand<'a>(&self, x: &'a [f32], table: &'a Im2colTable) -> Im2col<'a> {
        Im2col::new(x, (self.cin, self.h * self.w), table)
    }

    /// Where the im2col matrix of `n` images of this geometry reads, kept per thread for the
    /// last few geometries (one table serves every group of images and every step).
    fn im2col_table(&self, n: usize) -> Arc<Im2colTable> {
        thread_local! {
            static TABLES: RefCell<Vec<([usize; 10], Arc<Im2colTable>)>> = const { RefCell::new(Vec::new()) };
        }
        let key = [self.cin, self.h, self.w, self.kh, self.kw, self.pad.0, self.pad.1, self.stride, n, self.oh];
        if let Some(table) = TABLES.with_borrow(|t| t.iter().find(|(k, _)| *k == key).map(|(_, t)| t.clone())) {
            return table;
        }
        let l = self.l();
        let table = Arc::new(Im2colTable::new((self.kh * self.kw, n * l), |t, col| {
            let (b, p) = (col / l, col % l);
            let (i, j) = (t / self.kw, t % self.kw);
            let iy = self.input_row(p / self.ow, i)?;
            let ix = ((p % self.ow) * self.stride + j).checked_sub(self.pad.1).filter(|&ix| ix < self.w)?;
            Some(b * self.image() + iy * self.w + ix)
        }));
        TABLES.with_borrow_mut(|tables| {
            // The most recent last; a network has a handful of geometries.
            if tables.len() == 16 {
                tables.remove(0);
            }
            tables.push((key, table.clone()));
        });
        table
    }

    /// Whether this convolution's GEMMs read the im2col matrix in place: autocast on AMX (the
    /// f32 GEMM packs its operands itself, from a written-out matrix).
    fn implicit(&self) -> bool {
        self.bf16 && amx_available()
    }

    /// The weight `(Cout, Cin, kh, kw)` as `(Cout, kh kw, Cin)` (k in tap, channel order), where
    /// [`conv_taps_group`] computes this convolution: autocast on AMX, stride 1, channels a
    /// multiple of 32 (one k-step of the tiles is 32 channels at one tap), f32.
    fn by_taps<T: Float>(&self, wt: &[T]) -> Option<Vec<f32>> {
        let n = self.group().min(self.b);
        // Positions in the padding cost as much as real ones: at most an eighth more (a 32x32
        // image's two padding columns; at 16x16 in groups it was a quarter, and slower).
        let few_padded = self.tap_positions(n).2 * 8 <= n * self.l() * 9;
        let wt =
            as_f32(wt).filter(|_| self.implicit() && self.stride == 1 && self.cin.is_multiple_of(32) && few_padded)?;
        let (taps, cin) = (self.kh * self.kw, self.cin);
        let mut w = vec![0f32; wt.len()];
        for (dst, src) in w.chunks_mut(taps * cin).zip(wt.chunks(taps * cin)) {
            for (c, taps_of_c) in src.chunks(taps).enumerate() {
                taps_of_c.iter().enumerate().for_each(|(t, &v)| dst[t * cin + c] = v);
            }
        }
        Some(w)
    }

    /// Padded height and width of an image, and the output positions [`conv_taps_group`]
    /// computes for `n` images: whole padded rows, image after image (the last one's padding
    /// rows left out), to a multiple of 32.
    fn tap_positions(&self, n: usize) -> (usize, usize, usize) {
        let (hp, wp) = (self.h + 2 * self.pad.0, self.w + 2 * self.pad.1);
        (hp, wp, ((n - 1) * hp * wp + self.oh * wp).div_ceil(32) * 32)
    }

    /// This convolution for [`direct_conv`], where its kernels can run it: f32 outside autocast
    /// (the caller checks the type), stride 1, a kernel larger than 1x1, a CPU with the kernels.
    /// Each pass then asks whether they run it faster than im2col and the GEMM.
    fn direct(&self) -> Option<DirectConv> {
        let suits = !self.bf16 && self.stride == 1 && self.kh * self.kw > 1 && direct_conv::available();
        let (b, cin, h, w, cout, kh, kw, pad) =
            (self.b, self.cin, self.h, self.w, self.cout, self.kh, self.kw, self.pad);
        suits.then_some(DirectConv { b, cin, h, w, cout, kh, kw, pad })
    }

    /// Channel, kernel row and kernel column of im2col row `r`.
    fn tap(&self, r: usize) -> (usize, usize, usize) {
        (r / (self.kh * self.kw), (r / self.kw) % self.kh, r % self.kw)
    }
}

/// How one image group runs: its own loops and GEMM spread over the threads (few groups), or
/// all on the calling thread (one task of a parallel loop over many groups: one fork-join per
/// convolution instead of several per group, which dominated small convolutions).
#[derive(Clone, Copy)]
struct Inner(bool);

impl Inner {
    /// The split of a convolution with `groups` image groups.
    fn of(groups: usize) -> Self {
        Inner(groups < 2 * candle_core::utils::get_num_threads())
    }

    fn gemm(self) -> Parallelism {
        match self.0 {
            true => Parallelism::Rayon(candle_core::utils::get_num_threads()),
            false => Parallelism::None,
        }
    }

    /// `f(index, chunk)` over the `size`-element chunks of `v`, in parallel if this is the
    /// parallel split.
    fn chunks<T: Send>(self, v: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
        match self.0 {
            true => v.par_chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c)),
            false => v.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c)),
        }
    }
}

simd_fn! {
    /// `col (K, n L)` of the `n` images `x`: row (c, i, j), columns image by image.
    fn im2col<T: Float>(x: &[T], g: &Geom, n: usize, col: &mut [T], inner: Inner) {
        let (s, l) = (g.stride, g.l());
        inner.chunks(col, n * l, |r, row| {
            let (c, i, j) = g.tap(r);
            let (lo, hi) = g.valid_cols(j);
            for (b, row) in row.chunks_mut(l).enumerate() {
                let channel = &x[b * g.image() + c * g.h * g.w..][..g.h * g.w];
                if s == 1 && (g.oh, g.ow) == (g.h, g.w) {
                    shifted_copy(channel, g, i, j, row);
                    continue;
                }
                for (oy, dst) in row.chunks_mut(g.ow).enumerate() {
                    let Some(iy) = g.input_row(oy, i) else {
                        dst.fill(T::zero());
                        continue;
                    };
                    let src = &channel[iy * g.w..][..g.w];
                    dst[..lo].fill(T::zero());
                    dst[hi..].fill(T::zero());
                    let x0 = lo * s + j - g.pad.1;
                    if s == 1 {
                        dst[lo..hi].copy_from_slice(&src[x0..x0 + hi - lo]);
                    } else {
                        dst[lo..hi].iter_mut().enumerate().for_each(|(m, d)| *d = src[x0 + m * s]);
                    }
                }
            }
        });
    }
}

/// One im2col row of a stride-1 convolution whose output has the input's size: the whole channel
/// shifted by the tap's offset, in one copy (instead of one short copy per output row), then the
/// taps that fall outside the image zeroed.
#[inline(always)]
fn shifted_copy<T: Float>(channel: &[T], g: &Geom, i: usize, j: usize, dst: &mut [T]) {
    let shift = (i as isize - g.pad.0 as isize) * g.w as isize + j as isize - g.pad.1 as isize;
    let len = dst.len() as isize;
    let (d0, d1) = ((-shift).clamp(0, len) as usize, (len - shift).clamp(0, len) as usize);
    let d1 = d1.max(d0);
    dst[..d0].iter_mut().for_each(|d| *d = T::zero());
    dst[d1..].iter_mut().for_each(|d| *d = T::zero());
    let s0 = (d0 as isize + shift) as usize;
    dst[d0..d1].copy_from_slice(&channel[s0..s0 + d1 - d0]);
    // Output columns whose tap column lies left or right of the image read the neighbouring row.
    let (lo, hi) = g.valid_cols(j);
    if lo > 0 || hi < g.ow {
        for row in dst.chunks_mut(g.ow) {
            let (left, rest) = row.split_at_mut(lo);
            left.iter_mut().chain(&mut rest[hi - lo..]).for_each(|d| *d = T::zero());
        }
    }
}

simd_fn! {
    /// The `n` images `dx` whose im2col gradient is `col (K, n L)`: each pixel the sum of its taps.
    /// Zeroes `col`'s taps that lie outside the image first where that lets a stride-1 same-size
    /// convolution add each tap's whole channel in one shifted pass (not one short run per row).
    fn col2im<T: Float>(col: &mut [T], g: &Geom, n: usize, dx: &mut [T], inner: Inner) {
        let (s, l) = (g.stride, g.l());
        let same = s == 1 && (g.oh, g.ow) == (g.h, g.w);
        if same {
            inner.chunks(col, n * l, |r, row| {
                let (lo, hi) = g.valid_cols(g.tap(r).2);
                if lo > 0 || hi < g.ow {
                    for out_row in row.chunks_mut(g.ow) {
                        let (left, rest) = out_row.split_at_mut(lo);
                        left.iter_mut().chain(&mut rest[hi - lo..]).for_each(|v| *v = T::zero());
                    }
                }
            });
        }
        let col = &*col;
        inner.chunks(dx, g.h * g.w, |bc, dst| {
            let (b, c) = (bc / g.cin, bc % g.cin);
            dst.fill(T::zero());
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let row = &col[((c * g.kh + i) * g.kw + j) * n * l + b * l..][..l];
                    if same {
                        // Output pixel p reads input pixel p + shift (those off the image are zero).
                        let shift = (i as isize - g.pad.0 as isize) * g.w as isize + j as isize - g.pad.1 as isize;
                        let len = l as isize;
                        let (p0, p1) = ((-shift).clamp(0, len), (len - shift).clamp(0, len));
                        if p1 > p0 {
                            let (p0, p1, d0) = (p0 as usize, p1 as usize, (p0 + shift) as usize);
                            dst[d0..d0 + p1 - p0].iter_mut().zip(&row[p0..p1]).for_each(|(d, &v)| *d = *d + v);
                        }
                        continue;
                    }
                    let (lo, hi) = g.valid_cols(j);
                    let x0 = lo * s + j - g.pad.1;
                    for (oy, src) in row.chunks(g.ow).enumerate() {
                        let Some(iy) = g.input_row(oy, i) else { continue };
                        let dst = &mut dst[iy * g.w..][..g.w];
                        if s == 1 {
                            dst[x0..x0 + hi - lo].iter_mut().zip(&src[lo..hi]).for_each(|(d, &v)| *d = *d + v);
                        } else {
                            src[lo..hi].iter().enumerate().for_each(|(m, &v)| dst[x0 + m * s] = dst[x0 + m * s] + v);
                        }
                    }
                }
            }
        });
    }
}

simd_fn! {
    /// `(Cout, n L)` from `n` images `(Cout, L)` each (the GEMM's layout of an output gradient).
    fn to_rows<T: Float>(images: &[T], g: &Geom, n: usize, rows: &mut [T], inner: Inner) {
        let l = g.l();
        inner.chunks(rows, n * l, |co, row| {
            for (b, dst) in row.chunks_mut(l).enumerate() {
                dst.copy_from_slice(&images[(b * g.cout + co) * l..][..l]);
            }
        });
    }
}

/// The forward op; `relu` (inference only) has no backward. `bf16`: made inside autocast, so its
/// GEMMs (and its backward's) take bf16 operands.
struct Conv {
    pad: (usize, usize),
    stride: usize,
    relu: bool,
    bf16: bool,
}

/// Whether [`fast_forward`] runs `d`: Winograd or the direct kernels fit it.
fn fast_fits(d: &DirectConv) -> bool {
    winograd::fits(d) || d.forward_fits()
}

/// The stride-1 f32 forward on Winograd where it fits, else on the direct kernels, with `wt` as
/// it is or flipped and transposed (the input gradient's); every element of `out` written.
/// False (nothing written) where [`fast_fits`] is false.
fn fast_forward(
    x: &[f32],
    wt: (&[f32], bool),
    bias: &[f32],
    d: DirectConv,
    relu: bool,
    out: &mut [MaybeUninit<f32>],
) -> bool {
    match winograd::fits(&d) {
        true => winograd::forward(x, wt, bias, d, relu, out),
        false => d.forward_fits() && direct_conv::forward(x, wt, bias, d, relu, out),
    }
}

fn conv_fwd<T: Float>(x: &[T], wt: &[T], bias: &[T], g: Geom, relu: bool) -> Vec<T> {
    let direct = g.direct().filter(fast_fits);
    if let (Some(d), Some(x), Some(wt), Some(bias)) = (direct, as_f32(x), as_f32(wt), as_f32(bias)) {
        let write = |out: &mut [MaybeUninit<T>]| {
            let out = as_f32_uninit(out).expect("T is f32 (x is)");
            assert!(fast_forward(x, (wt, false), bias, d, relu, out), "`fast_fits` checked it");
        };
        // SAFETY: `forward` wrote every element (it returned true).
        return unsafe { written_vec(g.b * g.cout * g.l(), write) };
    }
    let (l, group) = (g.l(), g.group());
    let inner = Inner::of(g.b.div_ceil(group));
    let by_taps = g.by_taps(wt);
    let run = |(x, out): (&[T], &mut [MaybeUninit<T>]), bufs: &mut (Vec<T>, Vec<T>)| {
        if let Some(w) = &by_taps {
            if let (Some(x), Some(out), Some(bias)) = (as_f32(x), as_f32_uninit(out), as_f32(bias)) {
                return conv_taps_group(x, w, bias, &g, relu, out, inner);
            }
        }
        conv_group(x, wt, bias, &g, relu, out, bufs, inner)
    };
    let write = |out: &mut [MaybeUninit<T>]| {
        let pairs = x.chunks(group * g.image()).zip(out.chunks_mut(group * g.cout * l));
        match inner.0 {
            true => {
                let mut bufs = Scratch::take();
                pairs.for_each(|p| run(p, &mut bufs))
            }
            false => pairs.collect::<Vec<_>>().into_par_iter().for_each_init(Scratch::take, |bufs, p| run(p, bufs)),
        }
    };
    // SAFETY: the groups cover the output (x holds b images) and `conv_group` writes all of its part.
    unsafe { written_vec(g.b * g.cout * l, write) }
}

/// The output of one group of images on AMX without any im2col: the tiles read the images
/// themselves, zero-padded, in bf16 channel pairs, at each tap's shift. Output positions run over
/// whole padded rows (the columns past `ow` are computed and dropped), then the bias (and ReLU)
/// are added while the output is written.
fn conv_taps_group(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    g: &Geom,
    relu: bool,
    out: &mut [MaybeUninit<f32>],
    inner: Inner,
) {
    let n = x.len() / g.image();
    let (hp, wp, positions) = g.tap_positions(n);
    let shifts: Vec<usize> = (0..g.kh * g.kw).map(|t| t / g.kw * wp + t % g.kw).collect();
    let plane = positions + shifts.last().copied().unwrap_or(0);
    let planes = PairPlanes::new(x, (n, g.cin, g.h, g.w), g.pad, plane).expect("`by_taps` checked AMX");
    let write = |tmp: &mut [MaybeUninit<f32>]| {
        assert!(conv_taps_bf16(tmp, (g.cout, positions), w, &planes, &shifts), "`by_taps` checked AMX");
    };
    // SAFETY: `conv_taps_bf16` wrote all Cout rows of `positions` (it returned true).
    let rows = unsafe { written_vec(g.cout * positions, write) };
    inner.chunks(out, g.l(), |bc, dst| {
        let (b, co) = (bc / g.cout, bc % g.cout);
        for (oy, dst) in dst.chunks_mut(g.ow).enumerate() {
            let src = &rows[co * positions + b * hp * wp + oy * wp..][..g.ow];
            dst.iter_mut().zip(src).for_each(|(d, &v)| {
                d.write(if relu { (v + bias[co]).max(0.0) } else { v + bias[co] });
            });
        }
    });
}

simd_fn! {
    /// The output of one group of images, every element of `out` written; `bufs` are scratch
    /// (im2col matrix, output rows).
    #[allow(clippy::too_many_arguments)]
    fn conv_group<T: Float>(
        x: &[T],
        wt: &[T],
        bias: &[T],
        g: &Geom,
        relu: bool,
        out: &mut [MaybeUninit<T>],
        bufs: &mut (Vec<T>, Vec<T>),
        inner: Inner,
    ) {
        let (col, rows) = bufs;
        let (k, l) = (g.k(), g.l());
        let n = x.len() / g.image();
        let finish = |v: T, co: usize| match relu {
            true => (v + bias[co]).max(T::zero()),
            false => v + bias[co],
        };
        // `dst (Cout, n L) = W col`, every element written: on AMX with the im2col matrix read in
        // place, else im2col and the GEMM (both into the uninitialised `dst`).
        let mut gemm_into = |dst: &mut [MaybeUninit<T>]| {
            if g.implicit() {
                if let (Some(x), Some(wt), Some(dst)) = (as_f32(x), as_f32(wt), as_f32_uninit(dst)) {
                    let table = g.im2col_table(n);
                    let (w, im) = (Operand::Matrix((wt, k, 1)), g.im2col_operand(x, &table));
                    if gemm_bf16_operands_into((dst, n * l), (g.cout, n * l, k), w, Operand::Im2col(&im), inner.gemm()) {
                        return;
                    }
                }
            }
            // A 1x1 stride-1 convolution of one image reads the image itself as its im2col matrix.
            let col: &[T] = match n == 1 && g.kh * g.kw == 1 && g.stride == 1 {
                true => x,
                false => {
                    let col = grown(col, k * n * l);
                    im2col(x, g, n, col, inner);
                    col
                }
            };
            super::gemm_into((dst, n * l), (g.cout, n * l, k), (wt, k, 1), (col, n * l, 1), g.bf16, inner.gemm());
        };
        if n == 1 {
            // One image: the GEMM writes the output itself.
            gemm_into(&mut *out);
            // SAFETY: `gemm_into` wrote every element.
            let out = unsafe { assume_init(out) };
            inner.chunks(out, l, |co, dst| dst.iter_mut().for_each(|d| *d = finish(*d, co)));
            return;
        }
        rows.clear();
        rows.reserve(g.cout * n * l);
        gemm_into(&mut rows.spare_capacity_mut()[..g.cout * n * l]);
        // SAFETY: `gemm_into` wrote every element.
        unsafe { rows.set_len(g.cout * n * l) };
        inner.chunks(out, l, |bc, dst| {
            let (b, co) = (bc / g.cout, bc % g.cout);
            dst.iter_mut().zip(&rows[co * n * l + b * l..][..l]).for_each(|(d, &v)| {
                d.write(finish(v, co));
            });
        });
    }
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
        let g = Geom::from_weight(l1.dims(), l2.dims(), self.pad, self.stride)?.autocast(self.bf16);
        let op = self.name();
        let out = float_op!(op, (s1, l1) => x, (s2, l2) => w, (s3, l3) => b; conv_fwd(x, w, b, g, self.relu));
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
        if self.relu {
            bail!("conv2d_inference has no backward pass");
        }
        let grad = grad.contiguous()?;
        let x_dims: [usize; 4] = x.dims4()?.into();
        let (cout, cin, kh, kw) = w.dims4()?;
        let (pad, stride, bf16) = (self.pad, self.stride, self.bf16);
        let dx = grad.apply_op2_no_bwd(w, &InputGrad { pad, stride, x_dims, bf16 })?;
        let dwb = x.apply_op2_no_bwd(&grad, &WeightGrad { pad, stride, kernel: (kh, kw), bf16 })?;
        let dw = dwb.narrow(0, 0, cout * cin * kh * kw)?.reshape(w.shape())?;
        let db = dwb.narrow(0, cout * cin * kh * kw, cout)?.reshape(b.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// dx from the output gradient `g (B, Cout, oh, ow)` and the weight: col2im(W^T g) per image.
struct InputGrad {
    pad: (usize, usize),
    stride: usize,
    x_dims: [usize; 4],
    bf16: bool,
}

simd_fn! {
    fn input_grad<T: Float>(grad: &[T], wt: &[T], g: Geom) -> Vec<T> {
        if let Some(dx) = input_grad_as_conv(grad, wt, &g) {
            return dx;
        }
        // The forward convolution of `grad` with the kernel flipped and transposed.
        let transposed = g.direct().and_then(|d| d.transposed()).filter(fast_fits);
        if let (Some(t), Some(grad), Some(wt)) = (transposed, as_f32(grad), as_f32(wt)) {
            let write = |dx: &mut [MaybeUninit<T>]| {
                let dx = as_f32_uninit(dx).expect("T is f32 (grad is)");
                assert!(fast_forward(grad, (wt, true), &vec![0.0; t.cout], t, false, dx), "`fast_fits` checked it");
            };
            // SAFETY: `fast_forward` wrote every element (it returned true).
            return unsafe { written_vec(g.b * g.image(), write) };
        }
        let (k, l, group) = (g.k(), g.l(), g.group());
        let mut dx = vec![T::zero(); g.b * g.image()];
        let pairs = grad.chunks(group * g.cout * l).zip(dx.chunks_mut(group * g.image()));
        let inner = Inner::of(g.b.div_ceil(group));
        let run = |(grad, dx): (&[T], &mut [T]), (col, rows): &mut (Vec<T>, Vec<T>)| {
            let n = dx.len() / g.image();
            let col = grown(col, k * n * l);
            // One image's gradient is already in the GEMM's layout.
            let rows: &[T] = match n {
                1 => grad,
                _ => {
                    let rows = grown(rows, g.cout * n * l);
                    to_rows(grad, &g, n, rows, inner);
                    rows
                }
            };
            gemm((col, n * l), (k, n * l, g.cout), (wt, 1, k), (rows, n * l, 1), false, g.bf16, inner.gemm());
            col2im(col, &g, n, dx, inner);
        };
        match inner.0 {
            true => {
                let mut bufs = Scratch::take();
                pairs.for_each(|p| run(p, &mut bufs))
            }
            false => pairs.collect::<Vec<_>>().into_par_iter().for_each_init(Scratch::take, |bufs, p| run(p, bufs)),
        }
        dx
    }
}

/// Under autocast on AMX, dx of a stride-1 convolution as the forward convolution of the output
/// gradient with the kernel flipped and transposed (padding `k - 1 - pad`): it then runs on the
/// forward's paths (images read in place), not as a GEMM into a nine-times-larger matrix and a
/// col2im pass over it.
fn input_grad_as_conv<T: Float>(grad: &[T], wt: &[T], g: &Geom) -> Option<Vec<T>> {
    if !g.implicit() || g.stride != 1 || g.pad.0 >= g.kh || g.pad.1 >= g.kw {
        return None;
    }
    let pad = (g.kh - 1 - g.pad.0, g.kw - 1 - g.pad.1);
    let gt = Geom::new(&[g.b, g.cout, g.oh, g.ow], g.cin, (g.kh, g.kw), pad, 1).ok()?.autocast(true);
    if (gt.oh, gt.ow) != (g.h, g.w) {
        return None;
    }
    let flipped = direct_conv::flipped_transposed(wt, (g.cout, g.cin), g.kh * g.kw);
    Some(conv_fwd(grad, &flipped, &vec![T::zero(); g.cin], gt, false))
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "conv2d-im2col-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geom::from_weight(&self.x_dims, l2.dims(), self.pad, self.stride)?.autocast(self.bf16);
        if l1.dims() != [g.b, g.cout, g.oh, g.ow] {
            bail!("{}: gradient {:?} does not match the output of {g:?}", self.name(), l1.dims());
        }
        let dx = float_op!(self.name(), (s1, l1) => d, (s2, l2) => w; input_grad(d, w, g));
        Ok((dx, Shape::from(self.x_dims.to_vec())))
    }
}

/// `[dW, dbias]` from the input and the output gradient: the sums over images of g col^T and of
/// g's rows.
struct WeightGrad {
    pad: (usize, usize),
    stride: usize,
    kernel: (usize, usize),
    bf16: bool,
}

simd_fn! {
    fn weight_grad<T: Float>(x: &[T], grad: &[T], g: Geom) -> Vec<T> {
        let direct = g.direct().filter(DirectConv::weight_grad_fits);
        if let (Some(d), Some(x), Some(grad)) = (direct, as_f32(x), as_f32(grad)) {
            if let Some(dwb) = direct_conv::weight_grad(x, grad, d).and_then(from_f32) {
                return dwb;
            }
        }
        let (k, l, group) = (g.k(), g.l(), g.group());
        let groups: Vec<(&[T], &[T])> = x.chunks(group * g.image()).zip(grad.chunks(group * g.cout * l)).collect();
        // `[dW^T (K, Cout), dbias]` of runs of consecutive image groups, added up in their order:
        // fixed by the shape, so the result never depends on the threads.
        let partial = |groups: &[(&[T], &[T])], inner: Inner| {
            let mut acc = vec![T::zero(); k * g.cout + g.cout];
            let mut bufs = Scratch::take();
            let (col, rows) = &mut *bufs;
            for &(x, grad) in groups {
                let n = x.len() / g.image();
                let rows: &[T] = match n {
                    1 => grad,
                    _ => {
                        let rows = grown(rows, g.cout * n * l);
                        to_rows(grad, &g, n, rows, inner);
                        rows
                    }
                };
                let (dwt, db) = acc.split_at_mut(k * g.cout);
                // dW^T (K, Cout) = col rows^T: the wide im2col matrix as the row-major operand ran
                // faster here than rows col^T.
                let mnk = (k, g.cout, n * l);
                let implicit = g.implicit()
                    && match (as_f32(x), as_f32(rows), as_f32_mut(dwt)) {
                        (Some(x), Some(rows), Some(dwt)) => {
                            let table = g.im2col_table(n);
                            let (im, rows) = (g.im2col_operand(x, &table), Operand::Matrix((rows, 1, n * l)));
                            gemm_bf16_operands((dwt, g.cout), mnk, Operand::Im2col(&im), rows, true, inner.gemm())
                        }
                        _ => false,
                    };
                if !implicit {
                    let col = grown(col, k * n * l);
                    im2col(x, &g, n, col, inner);
                    gemm((dwt, g.cout), mnk, (col, n * l, 1), (rows, 1, n * l), true, g.bf16, inner.gemm());
                }
                db.iter_mut().zip(rows.chunks(n * l)).for_each(|(db, row)| *db = *db + sum_by(row, row, |v, _| v));
            }
            acc
        };
        // The same partial sums, in the same order, whichever way the groups run.
        let (inner, chunk) = (Inner::of(groups.len()), reduction_group(groups.len()));
        let parts = match inner.0 {
            true => groups.chunks(chunk).map(|gs| partial(gs, inner)).collect(),
            false => groups.par_chunks(chunk).map(|gs| partial(gs, inner)).collect(),
        };
        let acc = sum_in_order(parts, k * g.cout + g.cout);
        let mut dwb = vec![T::zero(); g.cout * (k + 1)];
        for (co, dw) in dwb[..g.cout * k].chunks_mut(k).enumerate() {
            dw.iter_mut().enumerate().for_each(|(kk, d)| *d = acc[kk * g.cout + co]);
        }
        dwb[g.cout * k..].copy_from_slice(&acc[k * g.cout..]);
        dwb
    }
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "conv2d-im2col-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let cout = l2.dims().get(1).copied().unwrap_or(0);
        let g = Geom::new(l1.dims(), cout, self.kernel, self.pad, self.stride)?.autocast(self.bf16);
        if l2.dims() != [g.b, g.cout, g.oh, g.ow] {
            bail!("{}: gradient {:?} does not match the output of {g:?}", self.name(), l2.dims());
        }
        let dw = float_op!(self.name(), (s1, l1) => x, (s2, l2) => d; weight_grad(x, d, g));
        Ok((dw, Shape::from(g.cout * (g.k() + 1))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The im2col matrix read in place holds what `im2col` writes, for every layout of columns:
    /// image groups (column blocks across images), strides, one-sided padding, 1x1 kernels, a
    /// patch embedding (kernel = stride).
    #[test]
    fn im2col_operand_is_im2col() -> Result<()> {
        let cases = [
            ([2, 3, 8, 8], (3, 3), (1, 1), 1),
            ([4, 2, 8, 8], (3, 3), (1, 1), 1),
            ([3, 1, 32, 32], (4, 4), (0, 0), 4),
            ([3, 4, 9, 7], (3, 3), (1, 1), 2),
            ([2, 6, 5, 5], (1, 1), (0, 0), 1),
            ([1, 2, 46, 46], (3, 3), (1, 1), 1),
            ([2, 3, 17, 17], (1, 7), (0, 3), 1),
            ([3, 3, 17, 13], (7, 1), (3, 0), 2),
        ];
        for (x, kernel, pad, stride) in cases {
            let g = Geom::new(&x, 2, kernel, pad, stride)?;
            let images: Vec<f32> = (0..x.iter().product::<usize>()).map(|i| i as f32 + 1.0).collect();
            let mut col = vec![0f32; g.k() * g.b * g.l()];
            im2col(&images, &g, g.b, &mut col, Inner(false));
            let table = g.im2col_table(g.b);
            assert_eq!(g.im2col_operand(&images, &table).to_matrix(), col, "{x:?} {kernel:?} {pad:?} {stride}");
        }
        Ok(())
    }
}
