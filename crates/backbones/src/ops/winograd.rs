//! f32 3x3 stride-1 convolution as Winograd F(2x2, 3x3) (Lavin and Gray, 2016): each 2x2 block
//! of outputs (a tile) comes from the 4x4 block of input around it as 16 products over channels,
//! `M[ξ] = U[ξ] V[ξ]`, where `U = G g Gᵀ` transforms each 3x3 kernel and `V = Bᵀ d B` each
//! input block: 16 multiplies per tile and channel pair instead of 36. The transforms are sums
//! and halves, so results stay within a few float32 roundings of the direct sum. The 16
//! products run on [`direct_conv`]'s forward tiles as 1x1 convolutions over tiles.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::direct_conv::{kernels, DirectConv, Kernels, Shared};
use super::{Float, Scratch};

/// Tiles per task (rounded to whole tile rows): its 16 transformed blocks stay in L2.
const TILES: usize = 48;

/// Input channels per block of the products: 128 rows of 48 tiles are 24 KB of L1.
const CHANNELS: usize = 128;

/// Whether Winograd runs this convolution faster than the direct kernels: 3x3 kernels, padding
/// at most 2, and (measured on a Zen 4) at least 128 channels in and out and outputs of at
/// least 8x8. It ran 1.35-1.6x faster at 128-512 channels and 8x8 to 32x32; at 4x4 (two tiles
/// a row) the transforms made it 1.2x slower, and at 64 channels it broke even.
pub(super) fn fits(d: &DirectConv) -> bool {
    let (oh, ow) = d.out();
    kernels().is_some()
        && (d.kh, d.kw) == (3, 3)
        && d.pad.0 <= 2
        && d.pad.1 <= 2
        && d.cin.min(d.cout) >= 128
        && oh.min(ow) >= 8
}

/// As [`super::direct_conv::forward`]: `conv(x, wt) + bias`, then a ReLU if `relu`, the weight as it is
/// or flipped and transposed; every element written. False (nothing written) where this CPU
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

/// `U[cb][ξ][ci][co]`: each kernel `G g Gᵀ` (`ξ = 4i + j`), in blocks of `k.co` output channels
/// as the forward tiles read weights; `wt` as it is or, if `flipped`, flipped and transposed.
fn transformed_weights(k: &Kernels, (wt, flipped): (&[f32], bool), d: &DirectConv) -> Vec<f32> {
    let mut u = vec![0f32; d.cout.next_multiple_of(k.co) * 16 * d.cin];
    u.par_chunks_mut(16 * d.cin * k.co).enumerate().for_each(|(cb, u)| {
        for (c, co) in (cb * k.co..d.cout.min((cb + 1) * k.co)).enumerate() {
            for ci in 0..d.cin {
                let g = |a: usize, b: usize| match flipped {
                    false => wt[(co * d.cin + ci) * 9 + 3 * a + b],
                    true => wt[(ci * d.cout + co) * 9 + 8 - 3 * a - b],
                };
                // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]; rows, then columns.
                let gt =
                    |f: &dyn Fn(usize) -> f32| [f(0), (f(0) + f(1) + f(2)) * 0.5, (f(0) - f(1) + f(2)) * 0.5, f(2)];
                let cols: [[f32; 4]; 3] = std::array::from_fn(|b| gt(&|a| g(a, b)));
                for i in 0..4 {
                    for (j, v) in gt(&|b| cols[b][i]).into_iter().enumerate() {
                        u[((4 * i + j) * d.cin + ci) * k.co + c] = v;
                    }
                }
            }
        }
    });
    u
}

simd_fn! {
    /// Rows `2 ty + k` (`k` < 4) of one padded plane (rows `wp` apart), each transformed along
    /// its columns by `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`:
    /// `h[k][j][tx]` for the `tw` tiles of tile row `ty`, rows `4 k + j` `stride` apart.
    fn input_rows<T: Float>(plane: &[T], wp: usize, ty: usize, tw: usize, h: &mut [T], stride: usize) {
        for k in 0..4 {
            let row = &plane[(2 * ty + k) * wp..][..2 * tw + 2];
            let mut rows = h[4 * k * stride..].chunks_mut(stride).map(|r| &mut r[..tw]);
            let (h0, h1, h2, h3) = (rows.next().unwrap(), rows.next().unwrap(), rows.next().unwrap(), rows.next().unwrap());
            let (pairs, _) = row.as_chunks::<2>();
            let outs = h0.iter_mut().zip(h1.iter_mut()).zip(h2.iter_mut().zip(h3.iter_mut()));
            for ((&[d0, d1], &[d2, d3]), ((h0, h1), (h2, h3))) in pairs.iter().zip(&pairs[1..]).zip(outs) {
                (*h0, *h1, *h2, *h3) = (d0 - d2, d1 + d2, d2 - d1, d1 - d3);
            }
        }
    }
}

simd_fn! {
    /// One output row from its tiles' columns `y0` (even) and `y1` (odd), plus `bias`, then a
    /// ReLU if `relu`.
    fn output_row<T: Float>(y0: &[T], y1: &[T], bias: T, relu: bool, out: &mut [T]) {
        let f = |v: T| if relu { (v + bias).max(T::zero()) } else { v + bias };
        let half = out.len() / 2;
        let mut pairs = out.chunks_exact_mut(2);
        for ((o, &a), &b) in (&mut pairs).zip(y0).zip(y1) {
            (o[0], o[1]) = (f(a), f(b));
        }
        if let [last] = pairs.into_remainder() {
            *last = f(y0[half]);
        }
    }
}

simd_fn! {
    /// `V[4 i + j][t] = (Bᵀ h[.][j])[i]` over the first `n` tiles: the row transform of
    /// [`input_rows`]' output (rows `hs` apart) into `v` (rows `vs` apart).
    fn input_cols<T: Float>(h: &[T], hs: usize, v: &mut [T], vs: usize, n: usize) {
        for j in 0..4 {
            let h = |k: usize| &h[(4 * k + j) * hs..][..n];
            let (h0, h1, h2, h3) = (h(0), h(1), h(2), h(3));
            let mut rows = v.chunks_mut(4 * vs).map(|block| &mut block[j * vs..][..n]);
            let (v0, v1, v2, v3) = (rows.next().unwrap(), rows.next().unwrap(), rows.next().unwrap(), rows.next().unwrap());
            for t in 0..n {
                (v0[t], v1[t], v2[t], v3[t]) = (h0[t] - h2[t], h1[t] + h2[t], h2[t] - h1[t], h1[t] - h3[t]);
            }
        }
    }
}

simd_fn! {
    /// `y[2 a + c][t] = (Aᵀ M[t] A)[a][c]` for the first `n` tiles of one output channel, `M[ξ]`
    /// rows `ms` apart in `m`, `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`: columns into `cols` (8
    /// rows), then rows into `y` (4 rows), each `n` long.
    fn output_tiles<T: Float>(m: &[T], ms: usize, cols: &mut [T], y: &mut [T], n: usize) {
        for j in 0..4 {
            let m = |i: usize| &m[(4 * i + j) * ms..][..n];
            let (m0, m1, m2, m3) = (m(0), m(1), m(2), m(3));
            let (c0, c1) = cols.split_at_mut(4 * n);
            let (c0, c1) = (&mut c0[j * n..][..n], &mut c1[j * n..][..n]);
            for t in 0..n {
                (c0[t], c1[t]) = (m0[t] + m1[t] + m2[t], m1[t] - m2[t] - m3[t]);
            }
        }
        for (c, y) in cols.chunks(4 * n).zip(y.chunks_mut(2 * n)) {
            let (c0, c1, c2, c3) = (&c[..n], &c[n..2 * n], &c[2 * n..3 * n], &c[3 * n..]);
            let (y0, y1) = y.split_at_mut(n);
            for t in 0..n {
                (y0[t], y1[t]) = (c0[t] + c1[t] + c2[t], c1[t] - c2[t] - c3[t]);
            }
        }
    }
}

/// [`forward`] with the kernels `k`.
fn forward_with(
    k: &Kernels,
    x: &[f32],
    wt: (&[f32], bool),
    bias: &[f32],
    d: DirectConv,
    relu: bool,
    out: &mut [MaybeUninit<f32>],
) {
    let (oh, ow) = d.out();
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let u = transformed_weights(k, wt, &d);
    let cout_r = d.cout.next_multiple_of(k.co);
    let rows = (TILES / tw).max(1);
    // Each task's V[ξ][ci] and M[ξ][co] rows: its tiles, rounded to whole vectors.
    let tr = (rows * tw).next_multiple_of(k.lanes);
    // The images zero-padded to whole 4x4 blocks: `pad` rows and columns before, the rest after.
    let (hp, wp) = (2 * th + 2, 2 * tw + 2);
    let mut bufs = Scratch::<f32>::take();
    let (xp, _) = &mut *bufs;
    xp.resize(d.b * d.cin * hp * wp, 0.0);
    xp.par_chunks_mut(hp * wp).zip(x.par_chunks(d.h * d.w)).for_each(|(dst, src)| {
        dst.fill(0.0);
        let n = d.w.min(wp - d.pad.1);
        for (row, src) in dst[d.pad.0 * wp..].chunks_mut(wp).zip(src.chunks(d.w)).take(hp - d.pad.0) {
            row[d.pad.1..][..n].copy_from_slice(&src[..n]);
        }
    });
    let tasks: Vec<usize> = (0..d.b * th).step_by(rows).collect();
    let dst = Shared(out.as_mut_ptr().cast::<f32>());
    let (u, xp) = (&u, &*xp);
    tasks.into_par_iter().for_each_init(Scratch::<f32>::take, |bufs, r0| {
        let (v, m) = &mut **bufs;
        let r1 = (r0 + rows).min(d.b * th);
        let tiles = (r1 - r0) * tw;
        v.resize(16 * d.cin * tr, 0.0);
        m.resize(16 * cout_r * tr, 0.0);
        let mut h = vec![0f32; 16 * tr];
        for ci in 0..d.cin {
            for r in r0..r1 {
                let (b, ty) = (r / th, r % th);
                let plane = &xp[(b * d.cin + ci) * hp * wp..][..hp * wp];
                input_rows(plane, wp, ty, tw, &mut h[(r - r0) * tw..], tr);
            }
            input_cols(&h, tr, &mut v[ci * tr..], d.cin * tr, tiles);
            // Past the last tile: zeros, not another task's leftovers (denormals run slowly).
            (0..16).for_each(|xi| v[(xi * d.cin + ci) * tr..][tiles..tr].fill(0.0));
        }
        let nv = tiles.div_ceil(k.lanes);
        let offs: Vec<usize> = (0..nv).map(|v| v * k.lanes).collect();
        let full = nv - nv % k.pv;
        let groups: Vec<_> =
            (0..full).step_by(k.pv).map(|v| (v, k.pv, k.fwd)).chain((full..nv).map(|v| (v, 1, k.fwd_tail))).collect();
        // Channels in blocks whose rows of V stay in L1 while every block of output channels
        // reads them (all 256 rows of 48 tiles ran from L2 at 56% of peak).
        let kc = d.cin.div_ceil(d.cin.div_ceil(CHANNELS));
        for xi in 0..16 {
            for c0 in (0..d.cin).step_by(kc) {
                let kn = kc.min(d.cin - c0);
                for &(vi, n, tile) in &groups {
                    for cb in 0..cout_r / k.co {
                        // SAFETY: the tile reads `kn` rows of `tr` from `V[ξ]` at vectors inside
                        // `tr`, the `kn x co` weights of block `cb` and `ξ`, and updates `co`
                        // rows of `n` vectors of `M[ξ]`, all inside `v`, `u` and `m`.
                        unsafe {
                            (tile)(
                                v[(xi * d.cin + c0) * tr..].as_ptr(),
                                &offs[vi..vi + n],
                                (kn, tr),
                                &[0],
                                u[((cb * 16 + xi) * d.cin + c0) * k.co..].as_ptr(),
                                m[(xi * cout_r + cb * k.co) * tr + vi * k.lanes..].as_mut_ptr(),
                                (tr, c0 > 0),
                            )
                        }
                    }
                }
            }
        }
        // Y = Aᵀ M A + bias, written out row by row of tiles.
        let (mut cols, mut y) = (vec![0f32; 8 * tiles], vec![0f32; 4 * tiles]);
        for co in 0..d.cout {
            output_tiles(&m[co * tr..], cout_r * tr, &mut cols, &mut y, tiles);
            let bias = bias[co];
            for r in r0..r1 {
                let (b, ty, t0) = (r / th, r % th, (r - r0) * tw);
                for a in 0..2.min(oh - 2 * ty) {
                    // SAFETY: output row 2 ty + a of channel `co` of image `b` is this task's alone.
                    let out = unsafe { dst.slice(((b * d.cout + co) * oh + 2 * ty + a) * ow, ow) };
                    let (y0, y1) = (&y[2 * a * tiles + t0..][..tw], &y[(2 * a + 1) * tiles + t0..][..tw]);
                    output_row(y0, y1, bias, relu, out);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::direct_conv::tests::{close, reference, values};
    use super::super::direct_conv::{all_kernels, flipped_transposed};
    use super::super::written_vec;
    use super::*;

    /// Values and input gradient against the f64 definitions: odd output sizes (tiles cut at the
    /// edge), paddings 0 to 2, several tile rows per task and one image over several tasks,
    /// output channels not a multiple of the tiles, input channels in more than one block.
    #[test]
    fn winograd_matches_the_definition() {
        let cases = [
            DirectConv { b: 2, cin: 5, h: 9, w: 7, cout: 11, kh: 3, kw: 3, pad: (1, 1) },
            DirectConv { b: 3, cin: 8, h: 4, w: 4, cout: 8, kh: 3, kw: 3, pad: (1, 1) },
            DirectConv { b: 1, cin: 16, h: 32, w: 32, cout: 20, kh: 3, kw: 3, pad: (1, 1) },
            DirectConv { b: 2, cin: 3, h: 8, w: 11, cout: 9, kh: 3, kw: 3, pad: (0, 0) },
            DirectConv { b: 2, cin: 4, h: 6, w: 5, cout: 7, kh: 3, kw: 3, pad: (2, 1) },
            DirectConv { b: 5, cin: 32, h: 3, w: 3, cout: 17, kh: 3, kw: 3, pad: (1, 1) },
            // Input channels in two blocks (the second added to the first's products).
            DirectConv { b: 1, cin: 200, h: 5, w: 6, cout: 9, kh: 3, kw: 3, pad: (1, 1) },
        ];
        for (k, d) in all_kernels().into_iter().flat_map(|k| cases.map(|d| (k, d))) {
            let (oh, ow) = d.out();
            let x = values(d.b * d.cin * d.h * d.w, 7);
            let w = values(d.cout * d.cin * 9, 11);
            let bias = values(d.cout, 13);
            let what = format!("{} lanes, {d:?}", k.lanes);
            // SAFETY: `forward_with` writes every element.
            let y = unsafe {
                written_vec(d.b * d.cout * oh * ow, |y| forward_with(k, &x, (&w, false), &bias, d, false, y))
            };
            let mut want = reference(&x, &w, &d);
            want.iter_mut().enumerate().for_each(|(i, v)| *v += bias[i / (oh * ow) % d.cout] as f64);
            close(&y, &want, &format!("{what} forward"));
            let Some(t) = d.transposed() else { continue };
            let g = values(d.b * d.cout * oh * ow, 17);
            let flipped = flipped_transposed(&w, (d.cout, d.cin), 9);
            let dx =
                unsafe { written_vec(x.len(), |dx| forward_with(k, &g, (&w, true), &vec![0.0; d.cin], t, false, dx)) };
            close(&dx, &reference(&g, &flipped, &t), &format!("{what} input gradient"));
        }
    }
}
