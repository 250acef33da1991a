//! `lhs x rhs` with both rounded to bf16 and products summed in f32: the matmul of PyTorch's
//! `torch.autocast("cpu", torch.bfloat16)`, on Intel AMX tiles where the CPU has them.
//!
//! candle's CPU backend widens bf16 to f32 before its GEMM, so bf16 buys nothing there. An AMX
//! `tdpbf16ps` multiplies a 16x32 bf16 tile by a 32x16 one into 16x16 f32 sums in one
//! instruction. Inputs and outputs stay f32 (the master weights and activations of mixed
//! precision); only the GEMM's operands are rounded, while they are packed into tiles. CPUs
//! without AMX round the operands and run the f32 GEMM (the same function; the f32 sums differ
//! only in order); other devices cast to bf16 and run their own bf16 matmul.

use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;

use super::implicit_im2col::Im2col;
use super::Mat;

/// `lhs (..., m, k) x rhs (k, n)` as above, f32 in and out, with gradients (themselves bf16
/// matmuls, as autocast's backward).
pub fn matmul_bf16(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    matmul_f32(lhs, rhs, true)
}

/// `lhs (..., m, k) x rhs (k, n)` in f32, or with `bf16` operands as [`matmul_bf16`]: the GEMM of
/// the `Linear` layers. Unlike candle's matmul, the output is not zero-filled first and a
/// transposed 2-D operand is read with its strides (in both passes).
pub(crate) fn matmul_f32(lhs: &Tensor, rhs: &Tensor, bf16: bool) -> Result<Tensor> {
    let (k, n) = rhs.dims2()?;
    let dims = lhs.dims();
    if dims.len() < 2 || dims[dims.len() - 1] != k {
        bail!("matmul: lhs {:?} does not end in the {k} rows of rhs {:?}", lhs.shape(), rhs.shape());
    }
    if lhs.dtype() != DType::F32 || rhs.dtype() != DType::F32 {
        bail!("matmul: expects f32 operands, got {:?} and {:?}", lhs.dtype(), rhs.dtype());
    }
    let m = lhs.elem_count() / k;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("two dims or more") = n;
    // A 2-D lhs keeps its strides (a transposed one is packed as it is, not copied).
    let lhs2 = if dims.len() == 2 { lhs.clone() } else { lhs.reshape((m, k))? };
    let out = match (lhs.device().is_cpu(), bf16) {
        (true, _) => lhs2.apply_op2(rhs, Matmul { bf16 })?,
        (false, true) => lhs2.to_dtype(DType::BF16)?.matmul(&rhs.to_dtype(DType::BF16)?)?.to_dtype(DType::F32)?,
        (false, false) => lhs2.matmul(rhs)?,
    };
    out.reshape(out_dims)
}

thread_local! {
    static AUTOCAST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the GEMMs of the backbones' `Linear` layers, convolutions and attention taking
/// bf16 operands (as [`matmul_bf16`]) on this thread, as `torch.autocast("cpu", torch.bfloat16)`
/// does for `nn.Linear`, `conv2d` and `matmul` (weights and AdamW stay f32). An op made inside
/// the scope keeps bf16 GEMMs in its backward pass wherever that runs. Element-wise ops, norms
/// and softmax stay f32.
pub fn autocast_bf16<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            AUTOCAST.set(self.0);
        }
    }
    let _restore = Restore(AUTOCAST.replace(true));
    f()
}

/// Whether this thread runs inside [`autocast_bf16`].
pub fn autocast_bf16_active() -> bool {
    AUTOCAST.get()
}

/// `iters` rounds of `tdpbf16ps` into six independent accumulator tiles (enough to cover its
/// latency), for measuring the tiles' peak (`cargo xtask bench --peak`): the FLOPs done, or `None`
/// without AMX.
#[doc(hidden)]
pub fn amx_dot_chains(iters: u64) -> Option<f64> {
    amx::available().then(|| amx::dot_chains(iters))
}

/// Whether [`matmul_bf16`] runs on AMX tiles on this CPU (else the rounded f32 GEMM).
pub fn amx_available() -> bool {
    amx::available()
}

struct Matmul {
    bf16: bool,
}

impl CustomOp2 for Matmul {
    fn name(&self) -> &'static str {
        match self.bf16 {
            true => "matmul-bf16",
            false => "matmul-f32",
        }
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            bail!("{}: expects f32 operands", self.name());
        };
        let (&[m, k], &[_, n]) = (l1.dims(), l2.dims()) else {
            bail!("{}: expects two 2-D operands, got {:?} and {:?}", self.name(), l1.dims(), l2.dims());
        };
        // Not zero-filled first: the GEMM writes every element (a memset of each output was a
        // tenth of an autocast U-ViT step).
        let mut out = Vec::with_capacity(m * n);
        let par = Parallelism::Rayon(candle_core::utils::get_num_threads());
        super::gemm_into((out.spare_capacity_mut(), n), (m, n, k), view(a, l1), view(b, l2), self.bf16, par);
        // SAFETY: `gemm_into` initialised all m rows of n.
        unsafe { out.set_len(m * n) };
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        lhs: &Tensor,
        rhs: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let bf16 = self.bf16;
        Ok((Some(matmul_f32(grad, &rhs.t()?, bf16)?), Some(matmul_f32(&lhs.t()?, grad, bf16)?)))
    }
}

/// `dst (m, n; row stride) (+)= a (m, k) x b (k, n)` with a and b rounded to bf16 and f32 sums:
/// on AMX tiles where the CPU has them, else the rounded f32 GEMM. The GEMMs of the fused
/// kernels (convolution, attention) come here inside [`autocast_bf16`].
pub(super) fn gemm_bf16(
    dst: (&mut [f32], usize),
    mnk: (usize, usize, usize),
    a: Mat<f32>,
    b: Mat<f32>,
    add: bool,
    par: Parallelism,
) {
    let (out, rs) = dst;
    if !gemm_bf16_operands((&mut *out, rs), mnk, Operand::Matrix(a), Operand::Matrix(b), add, par) {
        rounded_gemm((out, rs), mnk, a, b, add, par);
    }
}

/// An operand of the AMX GEMM: a strided f32 matrix, or a convolution's im2col matrix, packed
/// straight from its images.
#[derive(Clone, Copy)]
pub(super) enum Operand<'a> {
    Matrix(Mat<'a, f32>),
    Im2col(&'a Im2col<'a>),
}

/// [`gemm_bf16`] with operands that may be im2col matrices, on AMX tiles. False (and nothing
/// done) without AMX: callers then write the im2col matrix out and call [`gemm_bf16`].
pub(super) fn gemm_bf16_operands(
    (dst, rs): (&mut [f32], usize),
    mnk: (usize, usize, usize),
    a: Operand,
    b: Operand,
    add: bool,
    par: Parallelism,
) -> bool {
    // SAFETY: `dst` is initialised (a `&mut [f32]`), and viewed as possibly uninitialised memory
    // the kernel only ever writes initialised values to it.
    unsafe { on_amx((&mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]), rs), mnk, a, b, add, par) }
}

/// `dst = a x b` as [`gemm_bf16_operands`], into memory that need not be initialised: where it
/// returns true, all m rows of n were written.
pub(super) fn gemm_bf16_operands_into(
    dst: (&mut [MaybeUninit<f32>], usize),
    mnk: (usize, usize, usize),
    a: Operand,
    b: Operand,
    par: Parallelism,
) -> bool {
    // SAFETY: without `add` the kernel reads nothing of `dst`.
    unsafe { on_amx(dst, mnk, a, b, false, par) }
}

/// The AMX GEMM after checking the operands' shapes; false without AMX.
///
/// # Safety
/// With `add`, the m rows of n of `dst` must be initialised.
unsafe fn on_amx(
    dst: (&mut [MaybeUninit<f32>], usize),
    mnk: (usize, usize, usize),
    a: Operand,
    b: Operand,
    add: bool,
    par: Parallelism,
) -> bool {
    if !amx::available() {
        return false;
    }
    check_operands(mnk, a, b);
    // SAFETY: the caller's promise for `add`.
    unsafe { amx::gemm(dst, mnk, a, b, add, !matches!(par, Parallelism::None)) };
    true
}

/// Images in the layout the AMX tiles read as a convolution's B operand in place: zero-padded
/// planes of bf16 channel pairs (a pair of channels at one position is a 4-byte pair, as a B
/// tile row holds them), image after image along the positions of each plane.
pub(super) struct PairPlanes {
    data: Vec<u32>,
    /// Positions per plane (a channel pair).
    plane: usize,
}

impl PairPlanes {
    /// `n` images `x (n, channels, h, w)` padded by `pad` (rows, columns) on each side, each
    /// plane `plane` positions long (the images' padded positions and slack after them, zero).
    /// `None` without AMX.
    pub(super) fn new(
        x: &[f32],
        (n, channels, h, w): (usize, usize, usize, usize),
        pad: (usize, usize),
        plane: usize,
    ) -> Option<Self> {
        amx::available().then(|| amx::pair_planes(x, (n, channels, h, w), pad, plane))
    }
}

/// `out (m, positions; row stride positions) = sum over taps t and channels c of
/// w[co, t, c] planes[c, q + shifts[t]]`: a stride-1 convolution at output positions q of the
/// padded images, its A the weight with k in (tap, channel) order, its B tiles read straight
/// from the planes at each tap's shift (no im2col matrix, written or packed). False without AMX.
pub(super) fn conv_taps_bf16(
    out: &mut [MaybeUninit<f32>],
    (m, positions): (usize, usize),
    w: &[f32],
    planes: &PairPlanes,
    shifts: &[usize],
) -> bool {
    if !amx::available() {
        return false;
    }
    let channels = w.len() / (m * shifts.len()).max(1);
    assert!(channels.is_multiple_of(32) && w.len() == m * shifts.len() * channels && positions.is_multiple_of(32));
    assert!(planes.data.len() >= channels / 2 * planes.plane && out.len() >= m * positions);
    assert!(shifts.iter().all(|&s| s + positions <= planes.plane), "a tap reads past its plane");
    // SAFETY: checked above: every B tile (16 pair rows of 16 positions from a shift) lies
    // inside the planes.
    unsafe { amx::conv_taps(out, (m, positions, channels), w, planes, shifts) };
    true
}

/// An im2col operand has the GEMM's shape.
fn check_operands((m, n, k): (usize, usize, usize), a: Operand, b: Operand) {
    if let Operand::Im2col(im) = a {
        assert!(im.rows() == m && im.cols() == k, "im2col ({}, {}) is not A ({m}, {k})", im.rows(), im.cols());
    }
    if let Operand::Im2col(im) = b {
        assert!(im.rows() == k && im.cols() == n, "im2col ({}, {}) is not B ({k}, {n})", im.rows(), im.cols());
    }
}

/// `dst (m, n; row stride) = a x b` as [`gemm_bf16`], into memory that need not be initialised:
/// all m rows of n are written.
pub(super) fn gemm_bf16_into(
    (dst, rs): (&mut [MaybeUninit<f32>], usize),
    (m, n, k): (usize, usize, usize),
    a: Mat<f32>,
    b: Mat<f32>,
    par: Parallelism,
) {
    if gemm_bf16_operands_into((&mut *dst, rs), (m, n, k), Operand::Matrix(a), Operand::Matrix(b), par) {
        return;
    }
    let (a, b) = (rounded_copy(a, m, k, par), rounded_copy(b, k, n, par));
    super::gemm_into((dst, rs), (m, n, k), (&a.0, a.1, a.2), (&b.0, b.1, b.2), false, par);
}

/// Without AMX: the operands rounded to bf16, then the f32 GEMM.
fn rounded_gemm(
    dst: (&mut [f32], usize),
    (m, n, k): (usize, usize, usize),
    a: Mat<f32>,
    b: Mat<f32>,
    add: bool,
    par: Parallelism,
) {
    let (a, b) = (rounded_copy(a, m, k, par), rounded_copy(b, k, n, par));
    super::gemm(dst, (m, n, k), (&a.0, a.1, a.2), (&b.0, b.1, b.2), add, false, par);
}

/// `x (rows, cols)` rounded to bf16 values, as a dense matrix in x's own order (a transposed
/// operand stays transposed, for the GEMM to read with its strides): its data and strides.
/// Vectorised lines, in parallel when large (an element-wise loop with a division per element
/// had made autocast three times slower than f32 on CPUs without AMX).
fn rounded_copy((data, rs, cs): Mat<f32>, rows: usize, cols: usize, par: Parallelism) -> (Vec<f32>, usize, usize) {
    // Lines are the contiguous direction: rows of a row-major x, columns of a transposed one.
    let (lines, len, line_stride, step, strides) = match cs == 1 || rs != 1 {
        true => (rows, cols, rs, cs, (cols, 1)),
        false => (cols, rows, cs, rs, (1, rows)),
    };
    if len == 0 {
        return (Vec::new(), strides.0, strides.1);
    }
    let fill = |(i, line): (usize, &mut [MaybeUninit<f32>])| {
        let src = &data[i * line_stride..];
        match step {
            1 => line.iter_mut().zip(&src[..len]).for_each(|(o, &x)| {
                o.write(round_bf16(x));
            }),
            _ => line.iter_mut().enumerate().for_each(|(j, o)| {
                o.write(round_bf16(src[j * step]));
            }),
        }
    };
    let write = |out: &mut [MaybeUninit<f32>]| match super::threads(par) > 1 && lines * len >= 1 << 16 {
        true => {
            use rayon::prelude::*;
            out.par_chunks_mut(len).enumerate().for_each(fill)
        }
        false => out.chunks_mut(len).enumerate().for_each(fill),
    };
    // SAFETY: `fill` writes every element of each of the `lines` lines of `len`.
    let out = unsafe { super::written_vec(lines * len, write) };
    (out, strides.0, strides.1)
}

/// `x` rounded to the nearest bf16 (ties to even; NaN stays a quiet NaN), as `half` rounds, in
/// integer operations that vectorise.
#[inline(always)]
fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let nearest = b.wrapping_add(0x7fff + (b >> 16 & 1));
    let nan = b & 0x7fff_ffff > 0x7f80_0000;
    f32::from_bits(if nan { b | 0x0040_0000 } else { nearest } & 0xffff_0000)
}

/// A 2-D operand's storage as the ops' strided matrix (elements, row stride, column stride).
fn view<'a>(s: &'a [f32], l: &Layout) -> Mat<'a, f32> {
    (&s[l.start_offset()..], l.stride()[0], l.stride()[1])
}

#[inline(always)]
fn at((data, rs, cs): Mat<f32>, r: usize, c: usize) -> f32 {
    data[r * rs + c * cs]
}

/// f32 to bf16 bits, rounding to nearest even (as PyTorch's conversion).
fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    use rayon::prelude::*;

    use super::*;

    /// Tiles are 16 rows of 64 bytes: 32 bf16 of k per A row, 16 bf16 pairs per B row, 16 f32
    /// per C row. A micro-kernel computes a 32x32 block of C in four tiles.
    const T: usize = 16;
    const KT: usize = 32;
    const BLOCK: usize = 2 * T;

    /// CPUID says AMX-TILE, AMX-BF16 and AVX512-BF16, and Linux granted this process the tile
    /// state (it must be asked for, once per process, before the first tile instruction).
    pub(super) fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
            let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
            // Every CPU with AMX has AVX512-BF16, which packs the operands.
            let packs = is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512bw");
            const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_ulong = 18;
            amx_bf16
                && amx_tile
                && packs
                // SAFETY: arch_prctl with these arguments only changes this process's permissions.
                && unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0
        })
    }

    /// A row-major f32 destination (rows `rs` apart) that parallel tasks write in disjoint
    /// blocks: tasks splitting the columns of one row block share its rows, which `&mut` slices
    /// cannot express.
    #[derive(Clone, Copy)]
    struct Dst {
        ptr: *mut MaybeUninit<f32>,
        len: usize,
        rs: usize,
    }

    // SAFETY: a `Dst` is made from a `&mut` slice that outlives the tasks holding it, and the
    // tasks write disjoint elements (each user's promise).
    unsafe impl Send for Dst {}
    unsafe impl Sync for Dst {}

    impl Dst {
        fn new(out: &mut [MaybeUninit<f32>], rs: usize) -> Self {
            Self { ptr: out.as_mut_ptr(), len: out.len(), rs }
        }

        /// Row `r` from column `c`, `cols` long: checked to lie inside.
        fn row(&self, r: usize, c: usize, cols: usize) -> *mut MaybeUninit<f32> {
            assert!(r * self.rs + c + cols <= self.len, "GEMM output row {r} ({c}..+{cols}) out of bounds");
            self.ptr.wrapping_add(r * self.rs + c)
        }
    }

    /// Palette 1, eight tiles of 16 rows x 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    impl TileConfig {
        fn new() -> Self {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                c[16 + 2 * t] = 64;
                c[48 + t] = T as u8;
            }
            Self(c)
        }
    }

    /// `out (m, n; row stride rs) (+)= a (m, k) x b (k, n)` with a and b rounded to bf16; the
    /// row blocks in parallel if `parallel`. Callers have checked [`available`]. Writes every
    /// element of the m rows of n.
    ///
    /// # Safety
    /// With `add`, those elements of `out` must be initialised (they are read).
    pub(super) unsafe fn gemm(
        (out, rs): (&mut [MaybeUninit<f32>], usize),
        (m, n, k): (usize, usize, usize),
        a: Operand,
        b: Operand,
        add: bool,
        parallel: bool,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        let rs = rs.max(n); // one row: its stride is never used
                            // A long k (a weight gradient sums over all B L tokens) in slices, each added to the
                            // last: the packed operands of a whole k (megabytes) went to L3 and back.
        const K_SLICE: usize = 1024;
        if let (Operand::Matrix((a_data, a_rs, a_cs)), Operand::Matrix((b_data, b_rs, b_cs)), true) =
            (a, b, k > 2 * K_SLICE)
        {
            // Slices of equal length (in 32s): 2080 had left a last slice of 32, packed for
            // little work.
            let len = k.div_ceil(k.div_ceil(K_SLICE)).div_ceil(KT) * KT;
            for k0 in (0..k).step_by(len) {
                let (a, b) = ((&a_data[k0 * a_cs..], a_rs, a_cs), (&b_data[k0 * b_rs..], b_rs, b_cs));
                let slice = (m, n, len.min(k - k0));
                // SAFETY: after the first slice `out` is initialised; the caller's promise before.
                unsafe { gemm((out, rs), slice, Operand::Matrix(a), Operand::Matrix(b), add || k0 > 0, parallel) };
            }
            return;
        }
        let kp = k.div_ceil(KT) * KT;
        let config = TileConfig::new();
        let out = Dst::new(out, rs);
        if !parallel && m <= n {
            // All of a packed first, then each pair of B panels packed just before the tiles
            // use it (for all m rows), so that it is still in L1/L2: a whole packed B (a
            // convolution's im2col matrix, megabytes) had gone to L3 and back. (Where a is the
            // larger, as the im2col matrix of a weight gradient, row blocks of it are.)
            let mut a_buffer = take_scratch(m.div_ceil(BLOCK) * BLOCK * kp);
            let packed_a = &mut a_buffer[..m.div_ceil(BLOCK) * BLOCK * kp];
            pack_a(packed_a, a, 0, m, k, kp);
            let mut b_buffer = take_scratch(BLOCK * kp);
            let pair = &mut b_buffer[..BLOCK * kp];
            // SAFETY: `available` was checked by the caller (the OS granted the tile state).
            unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
            for nb in (0..n).step_by(BLOCK) {
                pack_b(pair, b, (nb / T, k, n, kp), false);
                // SAFETY: tiles configured above; `packed_a` holds m rows (padded to 32) of kp,
                // `pair` two panels of kp; with `add` the caller initialised `out`.
                unsafe { strip(out, (0, m, n, kp), packed_a, pair_tiles(pair, kp), nb, add) };
            }
            // SAFETY: as above.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
            give_back_scratch(a_buffer);
            return give_back_scratch(b_buffer);
        }
        let np = n.div_ceil(BLOCK) * BLOCK;
        let mut b_buffer = take_scratch(np * kp);
        pack_b(&mut b_buffer[..np * kp], b, (0, k, n, kp), parallel);
        let packed_b = &b_buffer[..np * kp];
        // Tasks of ROWS rows by `width` columns. With many rows, a task per row block, which
        // packs its own rows of a (used at once, from L2). With fewer row blocks than twice the
        // threads (a weight gradient's few output features), the columns are split too, so that
        // every thread has work, and a is packed once beforehand for all of them: one row block
        // had run on one thread while the other waited.
        const ROWS: usize = 4 * BLOCK;
        let row_blocks = m.div_ceil(ROWS);
        let threads = if parallel { rayon::current_num_threads() } else { 1 };
        let col_blocks = n.div_ceil(BLOCK);
        let groups = match parallel && row_blocks < 2 * threads {
            true => col_blocks.min((2 * threads).div_ceil(row_blocks)),
            false => 1,
        };
        let width = col_blocks.div_ceil(groups) * BLOCK;
        let groups = n.div_ceil(width);
        let mut a_buffer = Vec::new();
        if groups > 1 {
            let mp = m.div_ceil(BLOCK) * BLOCK;
            a_buffer = take_scratch(row_blocks * ROWS * kp);
            a_buffer[..mp * kp].par_chunks_mut(ROWS * kp).enumerate().for_each(|(i, packed)| {
                let r0 = i * ROWS;
                pack_a(packed, a, r0, ROWS.min(m - r0), k, kp);
            });
        }
        let task = |task: usize| {
            let (i, j) = (task / groups, task % groups);
            let (r0, c0) = (i * ROWS, j * width);
            let rows = ROWS.min(m - r0);
            let mut scratch = Vec::new();
            let packed_a = match groups {
                1 => {
                    let mp = rows.div_ceil(BLOCK) * BLOCK;
                    scratch = take_scratch(mp * kp);
                    pack_a(&mut scratch[..mp * kp], a, r0, rows, k, kp);
                    &scratch[..mp * kp]
                }
                _ => &a_buffer[r0 * kp..][..rows.div_ceil(BLOCK) * BLOCK * kp],
            };
            // SAFETY: `available` was checked by the caller (the OS granted the tile state);
            // `packed_a` holds the block's rows (padded to 32), `packed_b` every panel; tasks
            // write disjoint blocks of `out`; with `add` the caller initialised it.
            unsafe {
                asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
                // Two B panels (64 kp bytes) stay in L2 while the block's rows pass over them.
                for nb in (c0..n.min(c0 + width)).step_by(BLOCK) {
                    let pair = pair_tiles(&packed_b[nb * kp..][..BLOCK * kp], kp);
                    strip(out, (r0, rows, n, kp), packed_a, pair, nb, add);
                }
                asm!("tilerelease", options(nostack, nomem));
            }
            if groups == 1 {
                give_back_scratch(scratch);
            }
        };
        match parallel {
            true => (0..row_blocks * groups).into_par_iter().for_each(task),
            false => (0..row_blocks * groups).for_each(task),
        }
        if groups > 1 {
            give_back_scratch(a_buffer);
        }
        give_back_scratch(b_buffer);
    }

    /// The B tiles of one pair of packed panels (`pair`: 32 columns of kp), as [`strip`] reads
    /// them: the two tiles of k-step `kb`, and the row stride in bytes.
    fn pair_tiles(pair: &[u16], kp: usize) -> (impl Fn(usize) -> (*const u16, *const u16), usize) {
        assert!(pair.len() >= BLOCK * kp);
        let b0 = pair.as_ptr();
        (move |kb| (b0.wrapping_add(kb * T), b0.wrapping_add(T * kp + kb * T)), 4 * T)
    }

    /// Columns `nb..nb + 32` of rows `r0..r0 + rows` of `out` (+)= the packed rows of A times 32
    /// columns of B, whose two tiles of k-step `kb` (`kb` in `0..kp` by 32) lie at
    /// `b_tiles(kb)`, rows `ldb` bytes apart.
    ///
    /// # Safety
    /// The tiles are configured (`ldtilecfg` of [`TileConfig`]) on this thread; `packed_a` holds
    /// `rows` rows padded to a multiple of 32, of kp each; every B tile (16 rows of 64 bytes)
    /// lies in memory that may be read; no other task writes these elements of `out`; with
    /// `add`, they are initialised.
    #[allow(clippy::too_many_arguments)]
    unsafe fn strip(
        out: Dst,
        (r0, rows, n, kp): (usize, usize, usize, usize),
        packed_a: &[u16],
        (b_tiles, ldb): (impl Fn(usize) -> (*const u16, *const u16), usize),
        nb: usize,
        add: bool,
    ) {
        assert!(packed_a.len() >= rows.div_ceil(BLOCK) * BLOCK * kp);
        let rs = out.rs;
        let mut block = [[0f32; BLOCK]; BLOCK];
        let cols = BLOCK.min(n - nb);
        for mb in (0..rows).step_by(BLOCK) {
            // A whole 32 x 32 block of `out` is accumulated in place (loaded first with `add`);
            // a block on the edge goes through `block` and only its part inside `out` is copied.
            let direct = mb + BLOCK <= rows && cols == BLOCK;
            let (c, cs) = match direct {
                // `row` checks that the block's last row lies inside `out`.
                true => (out.row(r0 + mb + BLOCK - 1, nb, BLOCK).wrapping_sub((BLOCK - 1) * rs), 4 * rs),
                false => (block.as_mut_ptr() as *mut MaybeUninit<f32>, 4 * BLOCK),
            };
            let c_low = c.wrapping_add(T * cs / 4);
            // SAFETY: every tile load stays inside `packed_a` (checked above) or `pair`, every
            // store inside `block` or the whole block of `out` checked above; tiles configured
            // by the caller.
            unsafe {
                match direct && add {
                    true => asm!(
                        "tileloadd tmm0, [{p} + {s}*1]",
                        "tileloadd tmm1, [{p} + {s}*1 + 64]",
                        "tileloadd tmm2, [{q} + {s}*1]",
                        "tileloadd tmm3, [{q} + {s}*1 + 64]",
                        p = in(reg) c,
                        q = in(reg) c_low,
                        s = in(reg) cs,
                        options(nostack, readonly),
                    ),
                    false => asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    ),
                }
                let a0 = packed_a.as_ptr().add(mb * kp);
                let a1 = a0.add(T * kp);
                for kb in (0..kp).step_by(KT) {
                    let (b0, b1) = b_tiles(kb);
                    asm!(
                        "tileloadd tmm4, [{a0} + {lda}*1]",
                        "tileloadd tmm6, [{b0} + {ldb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b1} + {ldb}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1} + {lda}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0.add(kb),
                        a1 = in(reg) a1.add(kb),
                        b0 = in(reg) b0,
                        b1 = in(reg) b1,
                        lda = in(reg) kp * 2,
                        ldb = in(reg) ldb,
                        options(nostack, readonly),
                    );
                }
                asm!(
                    "tilestored [{p} + {s}*1], tmm0",
                    "tilestored [{p} + {s}*1 + 64], tmm1",
                    "tilestored [{q} + {s}*1], tmm2",
                    "tilestored [{q} + {s}*1 + 64], tmm3",
                    p = in(reg) c,
                    q = in(reg) c_low,
                    s = in(reg) cs,
                    options(nostack),
                );
            }
            if direct {
                continue;
            }
            for (r, row) in block.iter().enumerate().take(rows - mb) {
                // SAFETY: inside `out` (checked by `row`), written by this task only.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.row(r0 + mb + r, nb, cols), cols) };
                match add {
                    // SAFETY: with `add` the caller initialised `out`.
                    true => dst.iter_mut().zip(row).for_each(|(d, v)| unsafe { *d.assume_init_mut() += v }),
                    false => dst.iter_mut().zip(row).for_each(|(d, &v)| {
                        d.write(v);
                    }),
                }
            }
        }
    }

    /// See [`super::PairPlanes::new`]. Callers have checked [`available`].
    pub(super) fn pair_planes(
        x: &[f32],
        (n, channels, h, w): (usize, usize, usize, usize),
        (ph, pw): (usize, usize),
        plane: usize,
    ) -> PairPlanes {
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        assert!(n * hp * wp <= plane && x.len() >= n * channels * h * w && channels.is_multiple_of(2));
        let mut data = vec![0u32; channels / 2 * plane];
        data.par_chunks_mut(plane).enumerate().for_each(|(cp, dst)| {
            for b in 0..n {
                for y in 0..h {
                    let row = |c: usize| &x[((b * channels + c) * h + y) * w..][..w];
                    let start = b * hp * wp + (y + ph) * wp + pw;
                    // SAFETY: `available` checked AVX512-BF16 and AVX512-BW.
                    unsafe { pair_row(&mut dst[start..start + w], row(2 * cp), row(2 * cp + 1)) };
                }
            }
        });
        PairPlanes { data, plane }
    }

    /// See [`super::conv_taps_bf16`].
    ///
    /// # Safety
    /// `available` was checked; every tile read lies inside `planes` (as that function checks).
    pub(super) unsafe fn conv_taps(
        out: &mut [MaybeUninit<f32>],
        (m, positions, channels): (usize, usize, usize),
        w: &[f32],
        planes: &PairPlanes,
        shifts: &[usize],
    ) {
        let kp = shifts.len() * channels; // a multiple of 32
        let mut a_buffer = take_scratch(m.div_ceil(BLOCK) * BLOCK * kp);
        let packed_a = &mut a_buffer[..m.div_ceil(BLOCK) * BLOCK * kp];
        pack_a(packed_a, Operand::Matrix((w, kp, 1)), 0, m, kp, kp);
        let config = TileConfig::new();
        let base = planes.data.as_ptr();
        let out = Dst::new(out, positions);
        // SAFETY: `available` was checked by the caller; the tile reads stay inside the planes
        // (the caller's promise); `out` holds m rows of `positions`.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
            for nb in (0..positions).step_by(BLOCK) {
                // K-step kb: 32 channels from c0 at tap t, 16 pair rows of the planes from
                // c0 / 2, 16 positions each from nb + shift (and 16 more for the second tile).
                let tiles = |kb: usize| {
                    let (t, c0) = (kb / channels, kb % channels);
                    let b0 = base.wrapping_add(c0 / 2 * planes.plane + nb + shifts[t]) as *const u16;
                    (b0, b0.wrapping_add(2 * T))
                };
                strip(out, (0, m, positions, kp), packed_a, (tiles, 4 * planes.plane), nb, false);
            }
            asm!("tilerelease", options(nostack, nomem));
        }
        give_back_scratch(a_buffer);
    }

    /// Rows `r0..r0 + rows` of `a` as A tile rows of `kp` bf16 (zero past k), and zero rows to
    /// the end of `packed`.
    fn pack_a(packed: &mut [u16], a: Operand, r0: usize, rows: usize, k: usize, kp: usize) {
        let (a_data, a_rs, a_cs) = match a {
            Operand::Matrix(a) => a,
            Operand::Im2col(im) => {
                packed[rows * kp..].fill(0);
                // SAFETY: `available` checked AVX512-BF16 and AVX512-BW.
                return unsafe { im.pack_rows(packed, r0, rows, kp) };
            }
        };
        if a_cs == 1 {
            // Whole rows, zero past k.
            packed[rows * kp..].fill(0);
            for r in 0..rows {
                // SAFETY: `available` checked AVX512-BF16 and AVX512-BW.
                unsafe { pack_bf16(&mut packed[r * kp..][..kp], &a_data[(r0 + r) * a_rs..][..k]) };
            }
            return;
        }
        if a_rs == 1 {
            // a is transposed (as x^T in a weight gradient): whole rows written, zero past k.
            packed[rows * kp..].fill(0);
            // SAFETY: `available` checked AVX512-BF16 and AVX512-BW.
            unsafe { pack_a_transposed(packed, &a_data[r0..], a_cs, rows, k, kp) };
        } else {
            packed.fill(0);
            for r in 0..rows {
                let row = packed[r * kp..][..k].iter_mut();
                row.enumerate().for_each(|(c, v)| *v = bf16_bits(at((a_data, a_rs, a_cs), r0 + r, c)));
            }
        }
    }

    thread_local! {
        /// Packing buffers kept between GEMMs on this thread: a fresh zero-filled buffer per call
        /// cost a memset of each packed operand (and page faults where it was large).
        static SCRATCH: std::cell::RefCell<Vec<Vec<u16>>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// A buffer of at least `len` elements whose contents are left from earlier packings (a
    /// GEMM nested in another's row block, through rayon's work stealing, gets a second one).
    fn take_scratch(len: usize) -> Vec<u16> {
        let mut buffer = SCRATCH.with_borrow_mut(|pool| pool.pop()).unwrap_or_default();
        if buffer.len() < len {
            buffer.resize(len, 0);
        }
        buffer
    }

    fn give_back_scratch(buffer: Vec<u16>) {
        SCRATCH.with_borrow_mut(|pool| pool.push(buffer));
    }

    /// See [`super::amx_dot_chains`]. Callers have checked [`available`].
    pub(super) fn dot_chains(iters: u64) -> f64 {
        let config = TileConfig::new();
        let source = [0u8; T * 64];
        let mut out = [0f32; T * T];
        // SAFETY: the tile state is granted (`available`); loads read `source` (16 rows of 64
        // bytes), the store writes `out` (16 rows of 64 bytes).
        unsafe {
            asm!(
                "ldtilecfg [{cfg}]",
                "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", "tilezero tmm4", "tilezero tmm5",
                "tileloadd tmm6, [{src} + {stride}*1]",
                "tileloadd tmm7, [{src} + {stride}*1]",
                cfg = in(reg) config.0.as_ptr(), src = in(reg) source.as_ptr(), stride = in(reg) 64usize,
                options(nostack, readonly),
            );
            for _ in 0..std::hint::black_box(iters) {
                asm!(
                    "tdpbf16ps tmm0, tmm6, tmm7",
                    "tdpbf16ps tmm1, tmm6, tmm7",
                    "tdpbf16ps tmm2, tmm6, tmm7",
                    "tdpbf16ps tmm3, tmm6, tmm7",
                    "tdpbf16ps tmm4, tmm6, tmm7",
                    "tdpbf16ps tmm5, tmm6, tmm7",
                    options(nostack, nomem),
                );
            }
            asm!("tilestored [{p} + {stride}*1], tmm0", "tilerelease", p = in(reg) out.as_mut_ptr(), stride = in(reg) 64usize, options(nostack));
        }
        std::hint::black_box(out);
        (iters * 6 * (T * T * KT * 2) as u64) as f64
    }

    /// `b (k, n)` as bf16 pairs of consecutive k, in panels of 16 columns from panel `first` on
    /// (as many as `packed` holds): panel `p` holds
    /// `kp / 2` rows of 16 pairs, so one B tile is 16 consecutive rows of 64 bytes. Zero-padded
    /// to `kp` rows and as many columns as `packed` has panels (all of it is written).
    fn pack_b(packed: &mut [u16], b: Operand, (first, k, n, kp): (usize, usize, usize, usize), parallel: bool) {
        let b = match b {
            Operand::Matrix(b) => b,
            Operand::Im2col(im) => {
                // SAFETY: `available` checked AVX512-BF16 and AVX512-BW.
                let pack_panel = |p: usize, panel: &mut [u16]| unsafe { im.pack_panel(panel, p) };
                return match parallel {
                    true => {
                        packed.par_chunks_mut(T * kp).enumerate().for_each(|(p, panel)| pack_panel(first + p, panel))
                    }
                    false => packed.chunks_mut(T * kp).enumerate().for_each(|(p, panel)| pack_panel(first + p, panel)),
                };
            }
        };
        let (b_data, b_rs, b_cs) = b;
        let pack_panel = |p: usize, panel: &mut [u16]| {
            let (c0, cols) = (p * T, n.min((p + 1) * T).saturating_sub(p * T));
            // Row by row from a row-major b writes whole pair rows (zero past n); the rest is
            // zero, and the other layouts fill in what they write.
            match cols > 0 && b_cs == 1 {
                true => panel[k.div_ceil(2) * 2 * T..].fill(0),
                false => panel.fill(0),
            }
            if cols == 0 {
                return; // padding panel
            }
            if b_rs == 1 && b_cs != 1 {
                // SAFETY: `available` checked AVX512-BF16 and AVX512-BW.
                return unsafe { pack_panel_columns(panel, b_data, b_cs, c0, cols, k) };
            }
            if b_cs == 1 {
                // SAFETY: `available` checked AVX512-BF16 and AVX512-BW.
                return unsafe { pack_panel_rows(panel, b_data, b_rs, c0, cols, k) };
            }
            for (rp, dst) in panel.chunks_exact_mut(2 * T).take(k.div_ceil(2)).enumerate() {
                let r = 2 * rp;
                let row = |r: usize| (0..cols).map(move |c| if r < k { bf16_bits(at(b, r, c0 + c)) } else { 0 });
                for ((d, x0), x1) in dst.chunks_exact_mut(2).zip(row(r)).zip(row(r + 1)) {
                    d[0] = x0;
                    d[1] = x1;
                }
            }
        };
        match parallel {
            true => packed.par_chunks_mut(T * kp).enumerate().for_each(|(p, panel)| pack_panel(first + p, panel)),
            false => packed.chunks_mut(T * kp).enumerate().for_each(|(p, panel)| pack_panel(first + p, panel)),
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
use std::arch::x86_64::*;

/// `x` rounded to bf16 (to nearest even) into `dst`, 32 values per step, zero past the end of
/// `x` up to the next multiple of 32 (an A tile row).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
fn pack_bf16(dst: &mut [u16], x: &[f32]) {
    let steps = x.len().div_ceil(32);
    assert!(dst.len() >= 32 * steps);
    for step in 0..steps {
        let (lo, hi) = (load16(x, 32 * step), load16(x, 32 * step + 16));
        // Low half from `lo`, high half from `hi`. SAFETY: same size.
        let v = unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) };
        // SAFETY: the assert keeps the 64-byte store inside `dst`.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add(32 * step) as *mut _, v) };
    }
}

/// The (up to) 16 f32 of `x` from `from`; lanes past its end read no memory and are zero.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "avx512f")]
#[inline]
fn load16(x: &[f32], from: usize) -> __m512 {
    let n = x.len().saturating_sub(from).min(16);
    // SAFETY: the mask covers only the `n` elements inside `x`.
    unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, x.as_ptr().wrapping_add(from)) }
}

/// `x0[i]` and `x1[i]` (16 each at most, zero past their ends) rounded to bf16, as the pair of
/// lane i (x0 in its low half).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
fn pairs(x0: &[f32], x1: &[f32]) -> __m512i {
    interleave(load16(x0, 0), load16(x1, 0))
}

/// `dst[i]` = the bf16 pair (x0[i], x1[i]) as 4 bytes (x0 in the low half), 16 at a time.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pair_row(dst: &mut [u32], x0: &[f32], x1: &[f32]) {
    assert!(x0.len() == dst.len() && x1.len() == dst.len());
    for i in (0..dst.len()).step_by(16) {
        let len = (dst.len() - i).min(16);
        let v = pairs(&x0[i..i + len], &x1[i..i + len]);
        // SAFETY: the mask covers the `len` elements of `dst` from i.
        unsafe { _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(i) as *mut _, ((1u32 << len) - 1) as u16, v) };
    }
}

/// Lane i of `x0` and of `x1` rounded to bf16, as the pair of lane i (x0 in its low half): one
/// pair row of a B panel.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
pub(super) fn interleave(x0: __m512, x1: __m512) -> __m512i {
    const INTERLEAVE: [u16; 32] = {
        let mut idx = [0u16; 32];
        let mut i = 0;
        while i < 16 {
            idx[2 * i] = i as u16;
            idx[2 * i + 1] = 16 + i as u16;
            i += 1;
        }
        idx
    };
    // SAFETY: same size.
    let v = unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(x1, x0)) };
    // SAFETY: INTERLEAVE holds 32 u16.
    _mm512_permutexvar_epi16(unsafe { _mm512_loadu_si512(INTERLEAVE.as_ptr() as *const _) }, v)
}

/// Rows `0..rows` of a transposed `a` (row r, column c at `a[c * a_cs + r]`) packed as A tile rows
/// (`kp` bf16 per row, zero past k): 16 rows by 32 columns at a time, columns c and c + 1 of the
/// 16 rows converted into 16 pairs, and those 16 vectors of pairs transposed so that each row's
/// pairs lie together. (Scattering one bf16 per store cost a store per element.)
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_a_transposed(packed: &mut [u16], a: &[f32], a_cs: usize, rows: usize, k: usize, kp: usize) {
    assert!(packed.len() >= rows * kp && kp == k.div_ceil(32) * 32, "rows of kp are written whole");
    for rb in (0..rows).step_by(16) {
        let nr = (rows - rb).min(16);
        for cb in (0..k).step_by(32) {
            let mut v = [_mm512_setzero_si512(); 16];
            for (p, v) in v.iter_mut().enumerate().take((k - cb).div_ceil(2)) {
                let c = cb + 2 * p;
                let x0 = &a[c * a_cs + rb..][..nr];
                let x1 = if c + 1 < k { &a[(c + 1) * a_cs + rb..][..nr] } else { &[] };
                *v = pairs(x0, x1);
            }
            for (r, row) in transpose_16x16(v).iter().take(nr).enumerate() {
                let dst = &mut packed[(rb + r) * kp + cb..][..32];
                // SAFETY: `dst` holds 32 u16, the 64 bytes stored.
                unsafe { _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, *row) };
            }
        }
    }
}

/// The 16 x 16 matrix of 32-bit lanes `r` transposed (lane j of row i to lane i of row j).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose_16x16(r: [__m512i; 16]) -> [__m512i; 16] {
    // Within each 128-bit lane L (columns 4L..4L+3): rows 4i..4i+3 of column 4L + j into
    // u[4i + j]'s lane L, then the four lanes L of u[j], u[4 + j], u[8 + j], u[12 + j] together.
    let mut u = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        let [a, b, c, d] = [r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]];
        let (ab_lo, ab_hi) = (_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
        let (cd_lo, cd_hi) = (_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
        u[4 * i] = _mm512_unpacklo_epi64(ab_lo, cd_lo);
        u[4 * i + 1] = _mm512_unpackhi_epi64(ab_lo, cd_lo);
        u[4 * i + 2] = _mm512_unpacklo_epi64(ab_hi, cd_hi);
        u[4 * i + 3] = _mm512_unpackhi_epi64(ab_hi, cd_hi);
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for j in 0..4 {
        let x0 = _mm512_shuffle_i32x4::<0x44>(u[j], u[4 + j]);
        let x1 = _mm512_shuffle_i32x4::<0xEE>(u[j], u[4 + j]);
        let y0 = _mm512_shuffle_i32x4::<0x44>(u[8 + j], u[12 + j]);
        let y1 = _mm512_shuffle_i32x4::<0xEE>(u[8 + j], u[12 + j]);
        out[j] = _mm512_shuffle_i32x4::<0x88>(x0, y0);
        out[4 + j] = _mm512_shuffle_i32x4::<0xDD>(x0, y0);
        out[8 + j] = _mm512_shuffle_i32x4::<0x88>(x1, y1);
        out[12 + j] = _mm512_shuffle_i32x4::<0xDD>(x1, y1);
    }
    out
}

/// The pair rows of one B panel from a row-major `b` (rows `b_rs` apart; the panel's `cols`
/// columns from `c0`): pair row `rp` interleaves rows `2 rp` and `2 rp + 1` (zero past k). The
/// whole panel in one call, so the conversions run in one loop of AVX-512 code (a call per pair
/// row had its own prologue and checks per 32 values).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_panel_rows(panel: &mut [u16], b: &[f32], b_rs: usize, c0: usize, cols: usize, k: usize) {
    for (rp, dst) in panel.chunks_exact_mut(32).take(k.div_ceil(2)).enumerate() {
        let r = 2 * rp;
        let x0 = &b[r * b_rs + c0..][..cols];
        let x1 = if r + 1 < k { &b[(r + 1) * b_rs + c0..][..cols] } else { &[] };
        // SAFETY: `dst` holds 32 u16, the 64 bytes stored.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, pairs(x0, x1)) };
    }
}

/// One B panel from a `b` whose columns are contiguous (`b_cs` apart; a transposed matrix, as a
/// Linear's W^T): 32 values of each of the 16 columns converted at once (16 pairs per column),
/// and those 16 vectors transposed into the 16 pair rows they fill. Writes the pair rows inside
/// k only. (Scattering one pair per 4-byte copy cost a copy per two elements.)
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_panel_columns(panel: &mut [u16], b: &[f32], b_cs: usize, c0: usize, cols: usize, k: usize) {
    assert!(panel.len() >= 32 * k.div_ceil(2) && cols <= 16);
    for kb in (0..k).step_by(32) {
        let mut v = [_mm512_setzero_si512(); 16];
        for (c, v) in v.iter_mut().enumerate().take(cols) {
            let x = &b[(c0 + c) * b_cs + kb..][..(k - kb).min(32)];
            // Low half from the first 16. SAFETY: same size.
            *v = unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(load16(x, 16), load16(x, 0))) };
        }
        for (j, row) in transpose_16x16(v).iter().enumerate().take((k - kb).div_ceil(2)) {
            let dst = &mut panel[(kb / 2 + j) * 32..][..32];
            // SAFETY: `dst` holds 32 u16, the 64 bytes stored.
            unsafe { _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, *row) };
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod amx {
    pub(super) fn available() -> bool {
        false
    }

    pub(super) unsafe fn gemm(
        _: (&mut [std::mem::MaybeUninit<f32>], usize),
        _: (usize, usize, usize),
        _: super::Operand,
        _: super::Operand,
        _: bool,
        _: bool,
    ) {
        unreachable!("gemm_bf16 checks `available` first")
    }

    pub(super) fn dot_chains(_: u64) -> f64 {
        unreachable!("amx_dot_chains checks `available` first")
    }

    pub(super) fn pair_planes(
        _: &[f32],
        _: (usize, usize, usize, usize),
        _: (usize, usize),
        _: usize,
    ) -> super::PairPlanes {
        unreachable!("PairPlanes::new checks `available` first")
    }

    pub(super) unsafe fn conv_taps(
        _: &mut [std::mem::MaybeUninit<f32>],
        _: (usize, usize, usize),
        _: &[f32],
        _: &super::PairPlanes,
        _: &[usize],
    ) {
        unreachable!("conv_taps_bf16 checks `available` first")
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// `x` rounded to bf16, in f64.
    fn rounded(x: &Tensor) -> Result<Tensor> {
        x.to_dtype(DType::BF16)?.to_dtype(DType::F64)
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
        let a = a.to_dtype(DType::F64)?;
        let scale = b.abs()?.max_all()?.to_scalar::<f64>()?;
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f64>()? / scale)
    }

    #[test]
    fn matmul_is_the_f64_product_of_its_operands_rounded_with_bf16_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // (lhs dims, n, rhs transposed): odd sizes (padding of every tile dimension), k below one
        // tile, leading dims, more rows than one parallel block, a transposed (strided) rhs.
        // The last two are split among threads by rows, then by columns (see `gemm_crate`).
        let cases: [(&[usize], usize, bool); 6] = [
            (&[37, 70], 45, false),
            (&[5, 8], 3, false),
            (&[2, 3, 5, 40], 33, true),
            (&[300, 96], 64, false),
            (&[130, 257], 70, true),
            (&[40, 200], 300, true),
        ];
        for ((dims, n, transposed), bf16) in cases.into_iter().flat_map(|c| [(c, true), (c, false)]) {
            let rounded = |x: &Tensor| if bf16 { rounded(x) } else { x.to_dtype(DType::F64) };
            let k = *dims.last().unwrap();
            let lhs = Var::from_tensor(&Tensor::randn(0f32, 1.0, dims, &dev)?)?;
            let rhs = match transposed {
                true => Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, k), &dev)?)?,
                false => Var::from_tensor(&Tensor::randn(0f32, 1.0, (k, n), &dev)?)?,
            };
            let rhs_kn = if transposed { rhs.as_tensor().t()? } else { rhs.as_tensor().clone() };
            let out = match bf16 {
                true => matmul_bf16(&lhs, &rhs_kn)?,
                false => matmul_f32(&lhs, &rhs_kn, false)?,
            };
            let lhs2 = rounded(&lhs.as_tensor().reshape(((), k))?)?;
            let want = lhs2.matmul(&rounded(&rhs_kn)?)?;
            let mut want_dims = dims.to_vec();
            *want_dims.last_mut().unwrap() = n;
            assert_eq!(out.dims(), &want_dims[..]);
            let err = rel_err(&out.reshape(((), n))?, &want)?;
            assert!(err < 1e-5, "{dims:?} x ({k}, {n}) bf16 {bf16}: off by {err} (amx: {})", amx_available());
            // Gradients are bf16 matmuls of the (rounded) output gradient, as autocast's.
            let probe = Tensor::randn(0f32, 1.0, out.shape(), &dev)?;
            let grads = (&out * &probe)?.sum_all()?.backward()?;
            let p = rounded(&probe.reshape(((), n))?)?;
            let want_lhs = p.matmul(&rounded(&rhs_kn)?.t()?)?;
            let want_rhs = lhs2.t()?.matmul(&p)?;
            let got_lhs = grads.get(&lhs).expect("lhs gradient").reshape(((), k))?;
            let got_rhs = grads.get(&rhs).expect("rhs gradient");
            let got_rhs = if transposed { got_rhs.t()? } else { got_rhs.clone() };
            assert!(
                rel_err(&got_lhs, &want_lhs)? < 1e-5,
                "{dims:?} bf16 {bf16}: lhs gradient off by {}",
                rel_err(&got_lhs, &want_lhs)?
            );
            assert!(
                rel_err(&got_rhs, &want_rhs)? < 1e-5,
                "{dims:?} bf16 {bf16}: rhs gradient off by {}",
                rel_err(&got_rhs, &want_rhs)?
            );
        }
        Ok(())
    }

    #[test]
    fn rounding_is_halfs() {
        let special = [0.0, -0.0, 1.0, f32::MAX, f32::MIN_POSITIVE, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        let ties = [0x3f80_8000u32, 0x3f81_8000, 0xbf80_8000, 0x7f7f_8000, 0x0000_8000].map(f32::from_bits);
        let sweep = (0..=u32::MAX).step_by(65_521).map(f32::from_bits);
        for x in special.into_iter().chain(ties).chain(sweep) {
            let want = half::bf16::from_f32(x).to_f32();
            assert_eq!(round_bf16(x).to_bits(), want.to_bits(), "{x:e} ({:#x})", x.to_bits());
        }
    }

    /// Row-major, transposed and strided-both-ways operands keep their order and values.
    #[test]
    fn rounded_copies_keep_the_matrix() {
        let data: Vec<f32> = (0..80_000).map(|i| (i as f32 * 0.377).sin() * 3.0 + 1.0 / 3.0).collect();
        for (rows, cols, rs, cs) in [(7, 5, 9, 1), (7, 5, 1, 11), (6, 4, 20, 3), (300, 250, 1, 300)] {
            for par in [Parallelism::None, Parallelism::Rayon(2)] {
                let (got, grs, gcs) = rounded_copy((&data, rs, cs), rows, cols, par);
                assert_eq!(got.len(), rows * cols);
                for (r, c) in (0..rows).flat_map(|r| (0..cols).map(move |c| (r, c))) {
                    let want = half::bf16::from_f32(data[r * rs + c * cs]).to_f32();
                    assert_eq!(got[r * grs + c * gcs], want, "({rows}, {cols}, {rs}, {cs}) at ({r}, {c})");
                }
            }
        }
    }

    #[test]
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn packing_rounds_as_half_does() {
        if !amx::available() {
            return; // the packing's AVX512-BF16 conversion runs only beside AMX
        }
        let special = [0.0, -0.0, 1.0, f32::MAX, f32::MIN_POSITIVE, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        let ties = [0x3f80_8000u32, 0x3f81_8000, 0xbf80_8000].map(f32::from_bits);
        let sweep = (0..=u32::MAX).step_by(65_521).map(f32::from_bits);
        let values: Vec<f32> = special.into_iter().chain(ties).chain(sweep).collect();
        let mut packed = vec![0u16; values.len().div_ceil(32) * 32];
        // SAFETY: `available` checked AVX512-BF16 and AVX512-BW.
        unsafe { pack_bf16(&mut packed, &values) };
        for (&x, &bits) in values.iter().zip(&packed) {
            let (got, want) = (half::bf16::from_bits(bits), half::bf16::from_f32(x));
            match () {
                _ if x.is_nan() => assert!(got.is_nan(), "{x:e}"),
                // The instruction treats subnormal inputs as zero (the tiles do too).
                _ if x.is_subnormal() => assert!(got.to_f32() == 0.0 || got == want, "{x:e}"),
                _ => assert_eq!(got.to_bits(), want.to_bits(), "{x:e} ({:#x})", x.to_bits()),
            }
        }
    }

    /// The kernels' entry (row stride, accumulation, one thread or all), on AMX where this CPU
    /// has it and on the fallback, against the f64 product of the rounded operands.
    #[test]
    fn strided_accumulating_gemm_on_both_paths() -> Result<()> {
        // The second k is summed in slices. In parallel on AMX, all but the fourth split their few
        // row blocks' columns among tasks; the fourth runs a task per row block. Off AMX, the
        // gemm crate's calls of the last three are split by rows, rows and columns.
        for (m, n, k, rs) in
            [(140, 53, 45, 60), (40, 37, 2125, 41), (300, 100, 64, 110), (600, 40, 50, 45), (60, 300, 90, 310)]
        {
            strided_accumulating_gemm(m, n, k, rs)?;
        }
        Ok(())
    }

    fn strided_accumulating_gemm(m: usize, n: usize, k: usize, rs: usize) -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, (n, k), &dev)?.t()?;
        let c0 = Tensor::randn(0f32, 1.0, (m, rs), &dev)?;
        let product = rounded(&a)?.matmul(&rounded(&b)?)?;
        let storage = |t: &Tensor| -> Vec<f32> { t.flatten_all().and_then(|t| t.to_vec1()).expect("f32") };
        let (av, bv) = (storage(&a), storage(&b.t()?));
        for add in [false, true] {
            let want = (product.clone()
                + if add { c0.narrow(1, 0, n)?.to_dtype(DType::F64)? } else { product.zeros_like()? })?;
            for par in [Parallelism::None, Parallelism::Rayon(2)] {
                let paths: &[bool] = if amx::available() { &[true, false] } else { &[false] };
                for &on_amx in paths {
                    let mut out = storage(&c0);
                    let (a, b) = ((&av[..], k, 1), (&bv[..], 1, k));
                    match on_amx {
                        true => gemm_bf16((&mut out, rs), (m, n, k), a, b, add, par),
                        false => rounded_gemm((&mut out, rs), (m, n, k), a, b, add, par),
                    }
                    let got = Tensor::from_vec(out, (m, rs), &dev)?;
                    let err = rel_err(&got.narrow(1, 0, n)?, &want)?;
                    assert!(err < 1e-5, "amx {on_amx} add {add} {par:?}: off by {err}");
                    let beyond = (got.narrow(1, n, rs - n)? - c0.narrow(1, n, rs - n)?)?.abs()?.max_all()?;
                    assert_eq!(beyond.to_scalar::<f32>()?, 0.0, "amx {on_amx}: wrote past the rows' n columns");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn linear_layers_compute_matmul_bf16_inside_autocast_only() -> Result<()> {
        use candle_core::Module;
        let dev = Device::Cpu;
        let (w, b) = (Tensor::randn(0f32, 1.0, (7, 40), &dev)?, Tensor::randn(0f32, 1.0, 7, &dev)?);
        let linear = crate::nn::Linear::new(w.clone(), Some(b.clone()));
        let x = Tensor::randn(0f32, 1.0, (2, 3, 40), &dev)?;
        let f32_out = linear.forward(&x)?;
        let bf16_out = autocast_bf16(|| linear.forward(&x))?;
        assert!(!autocast_bf16_active(), "the scope is left behind");
        let want = matmul_bf16(&x, &w.t()?)?.broadcast_add(&b)?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.max_all()?.to_scalar::<f32>() };
        assert!(diff(&bf16_out, &want)? < 1e-5, "autocast Linear is not matmul_bf16 + bias");
        // bf16 operands move the outputs by about 2^-8 of their scale; f32 stays f32.
        assert!(diff(&f32_out, &want)? > 1e-4, "outside autocast the Linear still rounds");
        Ok(())
    }

    #[test]
    fn bf16_matmul_names_mismatched_operands() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((4, 5), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((6, 3), DType::F32, &dev).unwrap();
        let err = matmul_bf16(&a, &b).unwrap_err().to_string();
        assert!(err.contains("[4, 5]") && err.contains("6 rows"), "{err}");
        let b = Tensor::zeros((5, 3), DType::F32, &dev).unwrap();
        let err = matmul_bf16(&a.to_dtype(DType::F64).unwrap(), &b).unwrap_err();
        assert!(err.to_string().contains("f32"), "{err}");
    }
}
