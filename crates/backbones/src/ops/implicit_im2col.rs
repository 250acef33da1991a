//! A convolution's im2col matrix as an operand of the AMX GEMM, never written out: its values are
//! read from the images while they are packed into bf16 tiles.
//!
//! Under autocast the GEMMs themselves got fast enough that writing the f32 im2col matrix (nine
//! times the input for a 3x3 kernel) and reading it back to pack it cost more than the tile work:
//! packing was a quarter of a DDPM UNet sampling step, im2col another twentieth. Here each group of
//! 16 columns reads the input once per tap, through a table of where each column's taps lie.

/// The im2col matrix of some images: row `c * taps + t` (channel c, kernel tap t), column j (an
/// output pixel) holds the input value tap t of pixel j reads in channel c, or zero where that
/// lies in the padding.
pub(super) struct Im2col<'a> {
    x: &'a [f32],
    channels: usize,
    /// Elements from one channel of an image to the next.
    channel_len: usize,
    taps: usize,
    cols: usize,
    /// Per block of 16 columns and tap (`block * taps + t`), where its lanes read.
    lanes: &'a [Lanes],
}

/// Where the lanes of an [`Im2col`] read: the part that depends on the geometry only, so that
/// one table serves every group of images of a convolution, call after call (built per group,
/// an offset per lane, tap and column had cost 2.5% of a small U-ViT's training step).
pub(super) struct Im2colTable {
    taps: usize,
    cols: usize,
    lanes: Vec<Lanes>,
    /// One past the furthest element any lane reads in channel 0 (0 if none reads).
    reach: usize,
}

/// Where the 16 lanes of a column block read for one tap, from channel 0 of the images.
#[derive(Clone, Copy)]
struct Lanes {
    offsets: [i32; 16],
    /// Lanes inside the image (the others are zero).
    mask: u16,
    /// `Some(o)` where lane i reads `o + i` for every lane of the mask: one masked load.
    contiguous: Option<isize>,
}

impl Im2colTable {
    /// `offset(t, j)`: where column j reads for tap t in channel 0 (channel c adds
    /// `c * channel_len`), `None` in the padding.
    ///
    /// # Panics
    /// If an offset does not fit an i32 (a gather's index).
    pub(super) fn new((taps, cols): (usize, usize), offset: impl Fn(usize, usize) -> Option<usize>) -> Self {
        let mut lanes = Vec::with_capacity(cols.div_ceil(16) * taps);
        let mut reach = 0;
        for j0 in (0..cols).step_by(16) {
            for t in 0..taps {
                let mut l = Lanes { offsets: [0; 16], mask: 0, contiguous: None };
                for (i, o) in l.offsets.iter_mut().enumerate().take(cols - j0) {
                    if let Some(at) = offset(t, j0 + i) {
                        assert!(at <= i32::MAX as usize, "im2col offset {at} does not fit an i32");
                        *o = at as i32;
                        l.mask |= 1 << i;
                        reach = reach.max(at + 1);
                    }
                }
                let mut valid = (0..16).filter(|i| l.mask >> i & 1 == 1);
                let base = valid.next().map(|i| l.offsets[i] as isize - i as isize);
                l.contiguous = base.filter(|&b| valid.all(|i| l.offsets[i] as isize - i as isize == b));
                lanes.push(l);
            }
        }
        Self { taps, cols, lanes, reach }
    }
}

impl<'a> Im2col<'a> {
    /// The matrix of the images `x`, `channels` of `channel_len` elements each, read where
    /// `table` says.
    ///
    /// # Panics
    /// If a lane of some channel would read outside `x` (a caller's geometry error).
    pub(super) fn new(x: &'a [f32], (channels, channel_len): (usize, usize), table: &'a Im2colTable) -> Self {
        let last_channel = channels.saturating_sub(1) * channel_len;
        assert!(table.reach == 0 || table.reach + last_channel <= x.len(), "im2col reads past the input");
        let (taps, cols, lanes) = (table.taps, table.cols, &table.lanes[..]);
        Self { x, channels, channel_len, taps, cols, lanes }
    }

    /// Rows (channels x taps).
    pub(super) fn rows(&self) -> usize {
        self.channels * self.taps
    }

    pub(super) fn cols(&self) -> usize {
        self.cols
    }

    /// The 16 values that `lanes` reads in the channel starting at `channel`.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn load(l: &Lanes, channel: *const f32) -> __m512 {
        // SAFETY: `new` checked that every lane of the mask reads inside `x` in every channel;
        // masked-off lanes read no memory.
        unsafe {
            match l.contiguous {
                Some(base) => _mm512_maskz_loadu_ps(l.mask, channel.wrapping_offset(base)),
                None => {
                    let offsets = _mm512_loadu_si512(l.offsets.as_ptr() as *const _);
                    _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), l.mask, offsets, channel)
                }
            }
        }
    }

    fn channel(&self, c: usize) -> *const f32 {
        self.x.as_ptr().wrapping_add(c * self.channel_len)
    }

    /// Column block `block` (16 columns) as one B panel of the AMX GEMM: pair row `p` holds rows
    /// `2p` and `2p + 1` interleaved, zero past the last row and to the end of `panel`.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn pack_panel(&self, panel: &mut [u16], block: usize) {
        let Some(taps) = self.lanes.get(block * self.taps..(block + 1) * self.taps) else {
            return panel.fill(0); // past the last column (the GEMM pads to 32)
        };
        let mut pair_rows = panel.chunks_exact_mut(32);
        let mut store = |x0, x1| {
            let dst = pair_rows.next().expect("a panel holds every pair row");
            // SAFETY: `dst` holds 32 u16, the 64 bytes stored.
            unsafe { _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, super::bf16_matmul::interleave(x0, x1)) };
        };
        // Rows in order (channel by channel, tap by tap), paired as they come: with an odd number
        // of taps a pair spans two channels.
        let mut pending = None;
        for c in 0..self.channels {
            let channel = self.channel(c);
            for l in taps {
                let v = Self::load(l, channel);
                match pending.take() {
                    None => pending = Some(v),
                    Some(x0) => store(x0, v),
                }
            }
        }
        if let Some(x0) = pending {
            store(x0, _mm512_setzero_ps());
        }
        panel[32 * self.rows().div_ceil(2)..].fill(0);
    }

    /// Rows `r0..r0 + rows` as A tile rows of `kp` bf16 each (zero past the last column).
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn pack_rows(&self, packed: &mut [u16], r0: usize, rows: usize, kp: usize) {
        assert!(packed.len() >= rows * kp && kp.is_multiple_of(32));
        for (r, row) in packed.chunks_exact_mut(kp).take(rows).enumerate() {
            let (c, t) = ((r0 + r) / self.taps, (r0 + r) % self.taps);
            let channel = self.channel(c);
            // The row's lanes in each column block (zero past the last).
            let zero = Lanes { offsets: [0; 16], mask: 0, contiguous: None };
            let lanes = |block: usize| self.lanes.get(block * self.taps + t).unwrap_or(&zero);
            for (b, dst) in row.chunks_exact_mut(32).enumerate() {
                let (lo, hi) = (Self::load(lanes(2 * b), channel), Self::load(lanes(2 * b + 1), channel));
                // Low half from `lo`. SAFETY: same size; `dst` holds 32 u16.
                unsafe {
                    let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                    _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, v);
                }
            }
        }
    }

    /// The matrix in f32, as the f32 path's im2col writes it.
    #[cfg(test)]
    pub(super) fn to_matrix(&self) -> Vec<f32> {
        let mut m = vec![0f32; self.rows() * self.cols];
        for (r, row) in m.chunks_exact_mut(self.cols).enumerate() {
            let (c, t) = (r / self.taps, r % self.taps);
            for (j, v) in row.iter_mut().enumerate() {
                let l = &self.lanes[j / 16 * self.taps + t];
                if l.mask >> (j % 16) & 1 == 1 {
                    *v = self.x[c * self.channel_len + l.offsets[j % 16] as usize];
                }
            }
        }
        m
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
use std::arch::x86_64::*;
