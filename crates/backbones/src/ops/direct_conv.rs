//! f32 stride-1 convolution computed from the zero-padded images themselves, with register-tiled
//! AVX-512 or AVX2 kernels: no im2col matrix, no GEMM packing.
//!
//! Output position `p = oy * wp + ox` over rows of the padded width `wp` reads padded input
//! position `p + i * wp + j` at tap `(i, j)`: one contiguous vector load per channel and tap.
//! The columns `ox >= ow` of each row are computed and dropped (the price of contiguous loads:
//! `kw - 1` of every `wp` positions), except where the output width is a whole number of
//! vectors (each vector is then a run of one output row), or where the input is laid out as
//! one shifted copy per kernel column (small images: vectors run across rows). im2col wrote and
//! the GEMM re-packed a matrix nine times the input for a 3x3 kernel, which cost a quarter of a
//! small UNet's training step.
//! The input gradient is the forward convolution of the output gradient with the kernel flipped
//! and transposed. The weight gradient takes the output gradient position-major, vectors of
//! output channels, and multiplies them by each tap's input value broadcast: an outer product
//! per position, with no horizontal sums (summing along positions instead read ten rows from L2
//! per 24 multiply-adds and ran at half the forward's speed).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{sum_by, Scratch};

/// Sizes of one stride-1 convolution, zero padding `(rows, columns)` on both sides.
#[derive(Debug, Clone, Copy)]
pub(super) struct DirectConv {
    pub b: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub pad: (usize, usize),
}

/// The kernels of one instruction set: the forward tile is `co` output channels by `pv` vectors
/// of positions; the weight-gradient tiles are listed in [`Wgrad`]. All keep their accumulators
/// in registers (24 of AVX-512's 32; of AVX2's 16, 12 in the weight gradient and 8 in the
/// forward, whose 4x3 tile left no register for the broadcast weight: LLVM moved the
/// accumulators around and spilled one every step, at half the 4x2 tile's speed).
pub(super) struct Kernels {
    pub lanes: usize,
    pub co: usize,
    pub pv: usize,
    pub fwd: FwdTile,
    /// The forward tile one vector of positions wide, for the rows' last positions (7x7 outputs
    /// computed 96 positions for 49 in tiles of 48).
    pub fwd_tail: FwdTile,
    /// For one vector of output channels and for two; each for 3-tap rows and for single taps.
    wgrad: [Wgrad; 4],
}

/// A weight-gradient tile: `cv` vectors of output channels by `r` input rows of `kw` taps (a
/// row is one input channel and kernel row, or with `kw` 1 any channel and tap).
struct Wgrad {
    cv: usize,
    r: usize,
    kw: usize,
    tile: WgradTile,
}

pub(super) type FwdTile =
    unsafe fn(*const f32, &[usize], (usize, usize), &[usize], *const f32, *mut f32, (usize, bool));
type WgradTile = unsafe fn(*const f32, *const f32, &[usize], usize, *mut f32);

#[cfg(target_arch = "x86_64")]
macro_rules! kernels {
    ($isa:ident, $feature:literal, $lanes:literal, $zero:ident, $load:ident, $store:ident, $set1:ident, $fma:ident,
     fwd: ($co:literal, $pv:literal), wgrad: [$(($cv:literal, $r:literal, $kw:literal)),*]) => {
        mod $isa {
            use super::*;

            pub(super) static KERNELS: Kernels = Kernels {
                lanes: $lanes,
                co: $co,
                pv: $pv,
                fwd: fwd_tile::<$co, $pv>,
                fwd_tail: fwd_tile::<$co, 1>,
                wgrad: [$(Wgrad { cv: $cv, r: $r, kw: $kw, tile: wgrad_tile::<$cv, $r, $kw> }),*],
            };

            /// `CO` rows of `dst` (`dst_stride` apart), `PV` vectors each: the sums over the
            /// `cin` channels (planes `plane` apart) and taps (`shifts`) of the packed weights
            /// `w[ci][t][co]` times the input at `x + vecs[v] + shift`, added to `dst` if `add`
            /// (the channels in blocks).
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn fwd_tile<const CO: usize, const PV: usize>(
                x: *const f32,
                vecs: &[usize],
                (cin, plane): (usize, usize),
                shifts: &[usize],
                w: *const f32,
                dst: *mut f32,
                (dst_stride, add): (usize, bool),
            ) {
                let at = |co: usize, v: usize| dst.add(co * dst_stride + $lanes * v);
                let mut acc: [[_; PV]; CO] = match add {
                    true => std::array::from_fn(|co| std::array::from_fn(|v| $load(at(co, v)))),
                    false => [[$zero(); PV]; CO],
                };
                let taps = shifts.len();
                let vecs: [usize; PV] = std::array::from_fn(|v| vecs[v]);
                for ci in 0..cin {
                    let (xc, wc) = (x.add(ci * plane), w.add(ci * taps * CO));
                    for (t, &s) in shifts.iter().enumerate() {
                        let mut xv = [$zero(); PV];
                        for (xv, &o) in xv.iter_mut().zip(&vecs) {
                            *xv = $load(xc.add(s + o));
                        }
                        for (co, acc) in acc.iter_mut().enumerate() {
                            let wv = $set1(*wc.add(t * CO + co));
                            for (a, &xv) in acc.iter_mut().zip(&xv) {
                                *a = $fma(wv, xv, *a);
                            }
                        }
                    }
                }
                for (co, acc) in acc.iter().enumerate() {
                    for (v, &a) in acc.iter().enumerate() {
                        $store(at(co, v), a);
                    }
                }
            }

            /// Adds to the vectors `acc[r][j][v]` (`R` x `KW` x `CV`) the products of the
            /// gradient's `CV` vectors of output channels at each position (`g`, position-major,
            /// `CV * lanes` apart) and the input at row `x + offs[r]`, tap `j`, over `npos`
            /// positions. One broadcast per row and tap serves `CV` multiply-adds, and no
            /// horizontal sums: the vectors run over output channels.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn wgrad_tile<const CV: usize, const R: usize, const KW: usize>(
                g: *const f32,
                x: *const f32,
                offs: &[usize],
                npos: usize,
                acc: *mut f32,
            ) {
                let at = |r: usize, j: usize, v: usize| acc.add(((r * KW + j) * CV + v) * $lanes);
                let mut sums: [[[_; CV]; KW]; R] =
                    std::array::from_fn(|r| std::array::from_fn(|j| std::array::from_fn(|v| $load(at(r, j, v)))));
                let rows: [*const f32; R] = std::array::from_fn(|r| x.add(offs[r]));
                for p in 0..npos {
                    let gv: [_; CV] = std::array::from_fn(|v| $load(g.add((p * CV + v) * $lanes)));
                    for (sums, row) in sums.iter_mut().zip(&rows) {
                        for (j, sums) in sums.iter_mut().enumerate() {
                            let xv = $set1(*row.add(p + j));
                            for (s, &gv) in sums.iter_mut().zip(&gv) {
                                *s = $fma(gv, xv, *s);
                            }
                        }
                    }
                }
                for (r, sums) in sums.iter().enumerate() {
                    for (j, sums) in sums.iter().enumerate() {
                        for (v, &s) in sums.iter().enumerate() {
                            $store(at(r, j, v), s);
                        }
                    }
                }
            }
        }
    };
}

// Tiles: forward (output channels, vectors of positions); weight gradient (vectors of output
// channels, input rows, taps per row), one per choice of 1 or 2 vectors and 3 or 1 taps.
#[cfg(target_arch = "x86_64")]
kernels!(avx512, "avx512f", 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps,
    fwd: (8, 3), wgrad: [(1, 8, 3), (2, 4, 3), (1, 12, 1), (2, 12, 1)]);
#[cfg(target_arch = "x86_64")]
kernels!(avx2, "avx2,fma", 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_fmadd_ps,
    fwd: (4, 2), wgrad: [(1, 4, 3), (2, 2, 3), (1, 12, 1), (2, 6, 1)]);

/// The kernels this CPU runs, if it has AVX-512 or AVX2 with FMA.
pub(super) fn kernels() -> Option<&'static Kernels> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Some(&avx512::KERNELS);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Some(&avx2::KERNELS);
        }
    }
    None
}

/// Every kernel set this CPU runs (the tests run each).
#[cfg(test)]
pub(super) fn all_kernels() -> Vec<&'static Kernels> {
    let mut all = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            all.push(&avx512::KERNELS);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            all.push(&avx2::KERNELS);
        }
    }
    all
}

/// Whether this CPU has the kernels.
pub(super) fn available() -> bool {
    kernels().is_some()
}

/// A pointer that tasks writing disjoint parts of one output share.
#[derive(Clone, Copy)]
pub(super) struct Shared(pub *mut f32);
// SAFETY: every task writes its own elements only.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// # Safety
    /// The `len` elements at `offset` are inside the output and written by this task alone.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

impl DirectConv {
    /// Whether the forward kernels run this convolution faster than im2col and the GEMM (as
    /// measured on an AVX-512 Xeon and a Zen 4, alternating in one process): always up to 64
    /// channels; above that where at least 85% of the positions computed are outputs (with a
    /// third dropped it ran 15% slower). 384 to 128 channels at 32x32 ran 1.3x faster on the
    /// Zen 4; with the shifted copies, 256 channels at 8x8 1.07-1.18x and at 4x4 1.05x.
    pub(super) fn forward_fits(&self) -> bool {
        let Some(k) = kernels() else { return false };
        let (oh, ow) = self.out();
        let computed = (oh * self.input(k.lanes).pitch).next_multiple_of(k.lanes);
        self.cin.max(self.cout) <= 64 || oh * ow * 20 >= computed * 17
    }

    /// Whether the weight-gradient kernels run it faster (as measured on a Zen 4, alternating
    /// in one process): always up to 64 channels; above that where at least 85% of the columns
    /// computed are outputs (256 channels: 1.06x faster at 16x16, 1.03x slower at 8x8, 1.17x
    /// at 4x4).
    pub(super) fn weight_grad_fits(&self) -> bool {
        let (_, ow) = self.out();
        kernels().is_some() && (self.cin.max(self.cout) <= 64 || ow * 20 >= self.padded().1 * 17)
    }

    /// The convolution whose forward pass is this one's input gradient: the output gradient
    /// convolved with the kernel flipped and transposed, padded `k - 1 - pad` (None where the
    /// padding exceeds `k - 1`).
    pub(super) fn transposed(&self) -> Option<DirectConv> {
        let pad = (self.kh.checked_sub(1 + self.pad.0)?, self.kw.checked_sub(1 + self.pad.1)?);
        let (h, w) = self.out();
        Some(DirectConv { cin: self.cout, h, w, cout: self.cin, pad, ..*self })
    }

    pub(super) fn out(&self) -> (usize, usize) {
        (self.h + 2 * self.pad.0 + 1 - self.kh, self.w + 2 * self.pad.1 + 1 - self.kw)
    }

    /// How the forward kernels read the input: where the output width is a whole number of
    /// vectors, padded planes with each vector a run of one output row; else the shifted copies
    /// of [`Layout::Shifted`] where they compute at least 15% fewer vectors per image (at 28x28
    /// and 14x14 with 16-64 channels, 7% fewer ran no faster: three copies to write), else
    /// padded planes computing the dropped columns.
    fn input(&self, lanes: usize) -> Input {
        let (oh, ow) = self.out();
        let (hp, wp) = self.padded();
        let vectors = |pitch: usize| (oh * pitch).div_ceil(lanes);
        if ow % lanes != 0 && vectors(ow) * 20 <= vectors(wp) * 17 {
            // An odd number of cache lines per plane: planes a power of two apart would
            // share L1 sets.
            let plane = ((self.kw * hp * ow).div_ceil(16) | 1) * 16;
            let shifts = (0..self.kh * self.kw).map(|t| t % self.kw * hp * ow + t / self.kw * ow).collect();
            return Input { kind: Layout::Shifted, row: ow, plane, image: self.cin * plane, shifts, pitch: ow };
        }
        let pitch = if ow % lanes == 0 { ow } else { wp };
        let plane = hp * wp;
        Input { kind: Layout::Padded, row: wp, plane, image: self.cin * plane, shifts: self.shifts(), pitch }
    }

    /// Padded height and width.
    fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.pad.0, self.w + 2 * self.pad.1)
    }

    /// Offset of each tap in a padded plane.
    fn shifts(&self) -> Vec<usize> {
        let wp = self.padded().1;
        (0..self.kh * self.kw).map(|t| t / self.kw * wp + t % self.kw).collect()
    }

    /// The images zero-padded, `(b, cin, hp, wp)`, then `slack` zeros that the kernels' reads
    /// past the last plane (positions they compute and drop) land in.
    fn pad_images(&self, x: &[f32], slack: usize, xp: &mut Vec<f32>) {
        let (hp, wp) = self.padded();
        let (plane, image) = (hp * wp, self.h * self.w);
        xp.resize(self.b * self.cin * plane + slack, 0.0);
        let (planes, rest) = xp.split_at_mut(self.b * self.cin * plane);
        rest.fill(0.0);
        planes.par_chunks_mut(plane).enumerate().with_min_len(8).for_each(|(i, dst)| {
            let src = &x[i * image..][..image];
            let (top, body) = dst.split_at_mut(self.pad.0 * wp);
            top.fill(0.0);
            let (body, bottom) = body.split_at_mut(self.h * wp);
            bottom.fill(0.0);
            for (row, src) in body.chunks_mut(wp).zip(src.chunks(self.w)) {
                let (left, rest) = row.split_at_mut(self.pad.1);
                left.fill(0.0);
                rest[..self.w].copy_from_slice(src);
                rest[self.w..].fill(0.0);
            }
        });
    }
}

/// The forward kernels' view of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// The zero-padded images, `(b, cin, hp, wp)`.
    Padded,
    /// Per channel, `kw` copies of the padded plane, `(hp, ow)` each, copy `j` starting at
    /// padded column `j`: tap `(i, j)` of output position `p = oy * ow + ox` is at
    /// `j * hp * ow + i * ow + p`, so a vector of positions runs across rows and nothing is
    /// dropped (8x8 outputs in padded rows of 10 dropped a fifth, 4x4 in rows of 6 a third).
    Shifted,
}

/// Input planes of `row`-wide rows, `plane` apart per channel and `image` per image; each tap's
/// offset in a plane; `pitch` positions computed per output row.
struct Input {
    kind: Layout,
    row: usize,
    plane: usize,
    image: usize,
    shifts: Vec<usize>,
    pitch: usize,
}

impl Input {
    /// Where the vector at position `q` (over rows of `pitch`) of image `b` starts.
    fn offset(&self, b: usize, q: usize) -> usize {
        b * self.image + q / self.pitch * self.row + q % self.pitch
    }

    /// Writes the input of `d` in this layout to `xp`, then `slack` zeros.
    fn fill(&self, d: &DirectConv, x: &[f32], slack: usize, xp: &mut Vec<f32>) {
        if self.kind == Layout::Padded {
            return d.pad_images(x, slack, xp);
        }
        let (hp, ow, image) = (d.padded().0, self.row, d.h * d.w);
        xp.resize(d.b * self.image + slack, 0.0);
        let (planes, rest) = xp.split_at_mut(d.b * self.image);
        rest.fill(0.0);
        planes.par_chunks_mut(self.plane).enumerate().with_min_len(8).for_each(|(i, dst)| {
            let src = &x[i * image..][..image];
            let (copies, spare) = dst.split_at_mut(d.kw * hp * ow);
            spare.fill(0.0);
            for (j, copy) in copies.chunks_mut(hp * ow).enumerate() {
                for (y, row) in copy.chunks_mut(ow).enumerate() {
                    let Some(src) = y.checked_sub(d.pad.0).filter(|&r| r < d.h).map(|r| &src[r * d.w..][..d.w]) else {
                        row.fill(0.0);
                        continue;
                    };
                    for (x, o) in row.iter_mut().enumerate() {
                        *o = src.get((x + j).wrapping_sub(d.pad.1)).copied().unwrap_or(0.0);
                    }
                }
            }
        });
    }
}

/// `out (b, cout, oh, ow) = conv(x, wt) + bias`, then a ReLU if `relu`, with the weight as it is
/// or, if flipped, as its [`flipped_transposed`] (the input gradient's: see
/// [`DirectConv::transposed`]); every element written. False (nothing written) where this CPU
/// lacks the kernels.
pub(super) fn forward(
    x: &[f32],
    wt: (&[f32], bool),
    bias: &[f32],
    d: DirectConv,
    relu: bool,
    out: &mut [MaybeUninit<f32>],
) -> bool {
    kernels().map(|k| forward_with(k, x, wt, bias, d, relu, out)).is_some()
}

/// [`forward`] with the kernels `k`.
fn forward_with(
    k: &Kernels,
    x: &[f32],
    (wt, flipped): (&[f32], bool),
    bias: &[f32],
    d: DirectConv,
    relu: bool,
    out: &mut [MaybeUninit<f32>],
) {
    let (oh, ow) = d.out();
    let taps = d.kh * d.kw;
    let cout_r = d.cout.next_multiple_of(k.co);
    // w[cb][ci][t][co]: a tile's weights for one channel and tap are adjacent. Packed in
    // parallel: for 512 to 256 channels this took 0.8 ms on one thread, a tenth of a 4x4 layer.
    let mut packed = vec![0f32; cout_r * d.cin * taps];
    packed.par_chunks_mut(d.cin * taps * k.co).enumerate().for_each(|(cb, dst)| {
        for (ci, dst) in dst.chunks_mut(taps * k.co).enumerate() {
            for (t, dst) in dst.chunks_mut(k.co).enumerate() {
                for (co, o) in (cb * k.co..d.cout).zip(dst) {
                    *o = match flipped {
                        false => wt[(co * d.cin + ci) * taps + t],
                        true => wt[(ci * d.cout + co) * taps + taps - 1 - t],
                    };
                }
            }
        }
    });
    let input = d.input(k.lanes);
    let mut bufs = Scratch::<f32>::take();
    let (xp, _) = &mut *bufs;
    input.fill(&d, x, k.lanes * k.pv + d.kw + 64, xp);
    // Vectors of positions, image after image (`per_image` each); a task takes a run of them:
    // at most one image, or of small images as many as fill a 256 KB tile buffer.
    let per_image = (oh * input.pitch).div_ceil(k.lanes);
    let vectors = d.b * per_image;
    let small = 65536 / (cout_r * k.lanes);
    let per_task = vectors.div_ceil(4 * rayon::current_num_threads()).min(per_image.max(small));
    let tasks: Vec<usize> = (0..vectors).step_by(per_task).collect();
    let dst = Shared(out.as_mut_ptr().cast::<f32>());
    let (xp, packed, input) = (&*xp, &packed, &input);
    tasks.into_par_iter().for_each_init(Scratch::<f32>::take, |bufs, g0| {
        let (tmp, _) = &mut **bufs;
        let g1 = (g0 + per_task).min(vectors);
        let npos = (g1 - g0) * k.lanes;
        tmp.resize(cout_r * npos, 0.0);
        // Where each vector of positions starts in the padded input.
        let offs: Vec<usize> = (g0..g1).map(|g| input.offset(g / per_image, (g % per_image) * k.lanes)).collect();
        let full = offs.len() - offs.len() % k.pv;
        let tiles =
            (0..full).step_by(k.pv).map(|v| (v, k.pv, k.fwd)).chain((full..offs.len()).map(|v| (v, 1, k.fwd_tail)));
        for (v, n, tile) in tiles {
            for cb in 0..cout_r / k.co {
                // SAFETY: the tile reads `cin` planes from each offset up to one vector past
                // the last shift, inside `xp` (its slack covers the rounding); it writes `co`
                // rows of `n` vectors inside `tmp`.
                unsafe {
                    (tile)(
                        xp.as_ptr(),
                        &offs[v..v + n],
                        (d.cin, input.plane),
                        &input.shifts,
                        packed.as_ptr().add(cb * d.cin * taps * k.co),
                        tmp.as_mut_ptr().add(cb * k.co * npos + v * k.lanes),
                        (npos, false),
                    )
                }
            }
        }
        // Each image's positions `q0..q1` of this task, `at` into the task's columns.
        let segments: Vec<_> = (g0 / per_image..g1.div_ceil(per_image))
            .map(|b| {
                let (s, e) = (g0.max(b * per_image), g1.min((b + 1) * per_image));
                (b, (s - b * per_image) * k.lanes, (e - b * per_image) * k.lanes, (s - g0) * k.lanes)
            })
            .collect();
        for co in 0..d.cout {
            let bias = bias[co];
            for &(b, q0, q1, at) in &segments {
                for oy in q0 / input.pitch..(q1.div_ceil(input.pitch)).min(oh) {
                    let row = oy * input.pitch;
                    let (c0, c1) = (q0.max(row) - row, q1.min(row + ow) - row);
                    if c0 >= c1 {
                        continue;
                    }
                    let src = &tmp[co * npos + at + row + c0 - q0..][..c1 - c0];
                    // SAFETY: columns `c0..c1` of row `oy` of channel `co` of image `b` are
                    // this task's alone.
                    let out = unsafe { dst.slice(((b * d.cout + co) * oh + oy) * ow + c0, c1 - c0) };
                    match relu {
                        true => out.iter_mut().zip(src).for_each(|(o, &v)| *o = (v + bias).max(0.0)),
                        false => out.iter_mut().zip(src).for_each(|(o, &v)| *o = v + bias),
                    }
                }
            }
        }
    });
}

/// The weight `(cout, cin, kh, kw)` as the kernel of the convolution that is its input
/// gradient: `flipped[ci][co][taps - 1 - t] = w[co][ci][t]`.
pub(super) fn flipped_transposed<T: Copy + num_traits::Zero>(
    wt: &[T],
    (cout, cin): (usize, usize),
    taps: usize,
) -> Vec<T> {
    let mut flipped = vec![T::zero(); wt.len()];
    for (co, w) in wt.chunks(cin * taps).enumerate() {
        for (ci, w) in w.chunks(taps).enumerate() {
            let dst = &mut flipped[(ci * cout + co) * taps..][..taps];
            dst.iter_mut().zip(w.iter().rev()).for_each(|(o, &v)| *o = v);
        }
    }
    flipped
}

/// `[dW (cout, cin, kh, kw), dbias (cout)]` from the input and the output gradient. Each
/// element is summed by one task over images and positions in order, so the result never
/// depends on the threads. None where this CPU lacks the kernels.
pub(super) fn weight_grad(x: &[f32], grad: &[f32], d: DirectConv) -> Option<Vec<f32>> {
    Some(weight_grad_with(kernels()?, x, grad, d))
}

fn weight_grad_with(k: &Kernels, x: &[f32], grad: &[f32], d: DirectConv) -> Vec<f32> {
    let (oh, ow) = d.out();
    let (hp, wp) = d.padded();
    let (taps, plane, npos) = (d.kh * d.kw, hp * wp, oh * wp);
    let (cv, kw) = (if d.cout > k.lanes { 2 } else { 1 }, if d.kw == 3 { 3 } else { 1 });
    let t = k.wgrad.iter().find(|t| t.cv == cv && t.kw == kw).expect("a tile for each (cv, kw)");
    let (cvl, pairs) = (cv * k.lanes, d.cin * taps);
    let (blocks, units) = (d.cout.div_ceil(cvl), pairs / kw);
    let nub = units.div_ceil(t.r);
    let shifts = d.shifts();
    // Where each row of taps starts in an image's padded planes (spare rows read plane 0).
    let offs: Vec<usize> = (0..nub * t.r)
        .map(|u| match u < units {
            true => u * kw / taps * plane + shifts[u * kw % taps],
            false => 0,
        })
        .collect();
    let mut bufs = Scratch::<f32>::take();
    let (xp, gt) = &mut *bufs;
    // Reads run at most `kw - 2` past the last plane: the dropped columns of its last row.
    d.pad_images(x, d.kw, xp);
    // The gradient position-major over the padded width, `[block][image][position][channel]`,
    // zero in the dropped columns and the channels past `cout`.
    let block_len = d.b * npos * cvl;
    gt.resize(blocks * block_len, 0.0);
    gt.par_chunks_mut(npos * cvl).enumerate().for_each(|(i, dst)| {
        let (cb, b) = (i / d.b, i % d.b);
        let channels = cvl.min(d.cout - cb * cvl);
        let planes: Vec<&[f32]> = grad[(b * d.cout + cb * cvl) * oh * ow..].chunks(oh * ow).take(channels).collect();
        // Row by row: the row's `wp * cvl` outputs stay in L1 while each plane's row is read
        // (reading all planes at one position at a time thrashed L1 with 4 KB planes).
        for (oy, dst) in dst.chunks_mut(wp * cvl).enumerate() {
            for (c, plane) in planes.iter().enumerate() {
                let src = &plane[oy * ow..][..ow];
                dst.chunks_mut(cvl).zip(src).for_each(|(o, &v)| o[c] = v);
            }
            let (valid, dropped) = dst.split_at_mut(ow * cvl);
            dropped.fill(0.0);
            valid.chunks_mut(cvl).for_each(|o| o[channels..].fill(0.0));
        }
    });
    // Tasks of (block, run of row tiles); each walks every position in chunks whose gradient
    // (16 KB) stays in L1 while the run's tiles read it.
    let (tile_len, chunk) = (t.r * kw * cvl, 4096 / cvl);
    let span = (blocks * nub).div_ceil(4 * rayon::current_num_threads()).max(1);
    let tasks: Vec<(usize, usize)> = (0..blocks).flat_map(|cb| (0..nub).step_by(span).map(move |u| (cb, u))).collect();
    let mut acc = vec![0f32; blocks * nub * tile_len];
    let dst = Shared(acc.as_mut_ptr());
    let (xp, gt) = (&*xp, &*gt);
    tasks.into_par_iter().for_each(|(cb, ub0)| {
        let ub1 = (ub0 + span).min(nub);
        // SAFETY: tiles `ub0..ub1` of block `cb` are this task's alone.
        let acc = unsafe { dst.slice((cb * nub + ub0) * tile_len, (ub1 - ub0) * tile_len) };
        let g = &gt[cb * block_len..][..block_len];
        for b in 0..d.b {
            let x = &xp[b * d.cin * plane..];
            for p0 in (0..npos).step_by(chunk) {
                let n = chunk.min(npos - p0);
                for (ub, acc) in (ub0..ub1).zip(acc.chunks_mut(tile_len)) {
                    // SAFETY: the tile reads `n` positions of `cvl` channels from `g`, and rows
                    // from `x + p0 + offs` up to `kw - 2` past the last plane, inside `xp`'s
                    // slack; it updates its `tile_len` accumulators.
                    unsafe {
                        (t.tile)(
                            g[(b * npos + p0) * cvl..].as_ptr(),
                            x[p0..].as_ptr(),
                            &offs[ub * t.r..][..t.r],
                            n,
                            acc.as_mut_ptr(),
                        )
                    }
                }
            }
        }
    });
    let mut dwb = Vec::with_capacity(d.cout * (pairs + 1));
    for co in 0..d.cout {
        let (cb, c) = (co / cvl, co % cvl);
        dwb.extend((0..pairs).map(|pair| acc[((cb * nub * t.r + pair / kw) * kw + pair % kw) * cvl + c]));
    }
    let rows = |co: usize| grad.chunks(d.cout * oh * ow).map(move |g| &g[co * oh * ow..][..oh * ow]);
    dwb.extend((0..d.cout).map(|co| rows(co).map(|row| sum_by(row, row, |v, _| v)).sum::<f32>()));
    dwb
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::written_vec;
    use super::*;

    /// `F.conv2d` in f64, term by term.
    pub(in crate::ops) fn reference(x: &[f32], w: &[f32], d: &DirectConv) -> Vec<f64> {
        let (oh, ow) = d.out();
        let mut y = vec![0f64; d.b * d.cout * oh * ow];
        for b in 0..d.b {
            for co in 0..d.cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0f64;
                        for ci in 0..d.cin {
                            for i in 0..d.kh {
                                for j in 0..d.kw {
                                    let (iy, ix) = ((oy + i).wrapping_sub(d.pad.0), (ox + j).wrapping_sub(d.pad.1));
                                    if iy < d.h && ix < d.w {
                                        let xv = x[((b * d.cin + ci) * d.h + iy) * d.w + ix] as f64;
                                        s += xv * w[((co * d.cin + ci) * d.kh + i) * d.kw + j] as f64;
                                    }
                                }
                            }
                        }
                        y[((b * d.cout + co) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        y
    }

    pub(in crate::ops) fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    pub(in crate::ops) fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g as f64 - w).abs() <= 1e-5 * scale, "{what}: element {i}: {g} vs {w}");
        }
    }

    /// Values, input gradient and weight gradient against the f64 definitions, over tile
    /// remainders (channels not a multiple of the tiles, one channel), odd and non-square
    /// images, no padding, 5x5 and 1x7 kernels, one image (split into row bands) and many; every
    /// weight-gradient tile (one or two vectors of output channels, 3-tap rows or single taps).
    #[test]
    fn direct_conv_matches_the_definition() {
        let cases = [
            DirectConv { b: 2, cin: 3, h: 9, w: 7, cout: 5, kh: 3, kw: 3, pad: (1, 1) },
            DirectConv { b: 1, cin: 16, h: 28, w: 28, cout: 16, kh: 3, kw: 3, pad: (1, 1) },
            DirectConv { b: 20, cin: 1, h: 6, w: 6, cout: 9, kh: 3, kw: 3, pad: (1, 1) },
            DirectConv { b: 3, cin: 13, h: 7, w: 7, cout: 1, kh: 3, kw: 3, pad: (0, 0) },
            DirectConv { b: 2, cin: 4, h: 11, w: 10, cout: 8, kh: 5, kw: 5, pad: (2, 2) },
            DirectConv { b: 2, cin: 6, h: 9, w: 12, cout: 20, kh: 1, kw: 7, pad: (0, 3) },
            DirectConv { b: 33, cin: 8, h: 4, w: 4, cout: 3, kh: 3, kw: 3, pad: (1, 1) },
            // Output rows of whole vectors, forward positions row by row: 16 wide, then 32
            // wide without padding in one-row bands.
            DirectConv { b: 3, cin: 5, h: 5, w: 16, cout: 10, kh: 3, kw: 3, pad: (1, 1) },
            DirectConv { b: 1, cin: 3, h: 4, w: 34, cout: 9, kh: 3, kw: 3, pad: (0, 0) },
            // Padded rows where shifted copies would compute as many vectors. Of the cases
            // above not whole vectors wide, those where the copies save 15% take them (with
            // 16 lanes 9x7, 5x5 unpadded, 11x10, 9x12 and 4x4; 6x6 and 28x28 stay padded).
            DirectConv { b: 4, cin: 6, h: 1, w: 13, cout: 7, kh: 1, kw: 3, pad: (0, 1) },
            // Weight-gradient blocks of 32 output channels (16 with AVX2), the last one partial.
            DirectConv { b: 5, cin: 64, h: 28, w: 28, cout: 40, kh: 3, kw: 3, pad: (1, 1) },
        ];
        for (k, d) in all_kernels().into_iter().flat_map(|k| cases.map(|d| (k, d))) {
            let (oh, ow) = d.out();
            let x = values(d.b * d.cin * d.h * d.w, 7);
            let w = values(d.cout * d.cin * d.kh * d.kw, 11);
            let bias = values(d.cout, 13);
            let g = values(d.b * d.cout * oh * ow, 17);
            // SAFETY: `forward_with` writes every element.
            let y = unsafe { written_vec(g.len(), |y| forward_with(k, &x, (&w, false), &bias, d, false, y)) };
            let mut want = reference(&x, &w, &d);
            want.iter_mut().enumerate().for_each(|(i, v)| *v += bias[i / (oh * ow) % d.cout] as f64);
            let what = format!("{} lanes, {d:?}", k.lanes);
            close(&y, &want, &format!("{what} forward"));

            // dx[b, ci, iy, ix] = sum g[b, co, oy, ox] w[co, ci, i, j] over iy = oy + i - pad.
            let mut dx = vec![0f64; x.len()];
            let mut dw = vec![0f64; w.len()];
            let mut db = vec![0f64; d.cout];
            for (o, &gv) in g.iter().enumerate() {
                let (b, co, oy, ox) = (o / (d.cout * oh * ow), o / (oh * ow) % d.cout, o / ow % oh, o % ow);
                db[co] += gv as f64;
                for ci in 0..d.cin {
                    for i in 0..d.kh {
                        for j in 0..d.kw {
                            let (iy, ix) = ((oy + i).wrapping_sub(d.pad.0), (ox + j).wrapping_sub(d.pad.1));
                            if iy < d.h && ix < d.w {
                                let xi = ((b * d.cin + ci) * d.h + iy) * d.w + ix;
                                let wi = ((co * d.cin + ci) * d.kh + i) * d.kw + j;
                                dx[xi] += gv as f64 * w[wi] as f64;
                                dw[wi] += gv as f64 * x[xi] as f64;
                            }
                        }
                    }
                }
            }
            let t = d.transposed().expect("padding below the kernel size");
            // SAFETY: `forward_with` writes every element.
            let got =
                unsafe { written_vec(x.len(), |dx| forward_with(k, &g, (&w, true), &vec![0.0; d.cin], t, false, dx)) };
            close(&got, &dx, &format!("{what} input gradient"));
            let dwb = weight_grad_with(k, &x, &g, d);
            close(&dwb[..w.len()], &dw, &format!("{what} weight gradient"));
            close(&dwb[w.len()..], &db, &format!("{what} bias gradient"));
        }
    }
}
