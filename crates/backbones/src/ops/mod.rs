//! CPU kernels for the hot ops, as candle custom ops with their own backward pass.
//!
//! candle 0.11's CPU conv2d backward (a direct transposed convolution), and the normalisations
//! and softmax composed from a dozen primitives (each with its own pass, allocation and backward),
//! cost most of a training step. Each op here is one pass forward and one backward, computes the
//! same function as the composed candle ops (tested against them), and falls back to those ops on
//! other devices and dtypes.

/// The body of a CPU kernel over f32 or f64: binds each `$x` to the contiguous elements of its
/// storage (all of one dtype), runs `$body`, and wraps its `Vec` back into a storage.
macro_rules! float_op {
    ($op:expr, $(($s:expr, $l:expr) => $x:ident),+ ; $body:expr) => {
        match ($($s,)+) {
            ($(candle_core::CpuStorage::F32($x),)+) => {
                $(let $x = $crate::ops::contiguous($x, $l, $op)?;)+
                candle_core::CpuStorage::F32($body)
            }
            ($(candle_core::CpuStorage::F64($x),)+) => {
                $(let $x = $crate::ops::contiguous($x, $l, $op)?;)+
                candle_core::CpuStorage::F64($body)
            }
            _ => {
                let dtypes = [$(candle_core::backend::BackendStorage::dtype($s)),+];
                candle_core::bail!("{}: expects f32 or f64 inputs of one dtype, got {dtypes:?}", $op)
            }
        }
    };
}

/// `fn name<T: Float>(args) -> ret { body }`, with the body compiled three times: for AVX-512, for
/// AVX2 with FMA, and for the x86-64 baseline the crate is built for (4-lane SSE), and the best
/// one this CPU has chosen at run time. Closures in the body inherit its copy's features (helpers
/// it calls need `#[inline(always)]` to). Rust never fuses `a * b + c` by itself, and an explicit
/// `mul_add` is exact in every copy (an instruction, or libm's `fmaf`), so every copy gives bitwise
/// the same result.
macro_rules! simd_fn {
    ($(#[$meta:meta])* fn $name:ident<T: Float>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        fn $name<T: Float>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512<T: Float>($($arg: $ty),*) $(-> $ret)? $body
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2<T: Float>($($arg: $ty),*) $(-> $ret)? $body
                use std::arch::is_x86_feature_detected as has;
                if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
                    // SAFETY: this CPU has the features `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if has!("avx2") && has!("fma") {
                    // SAFETY: as above, for `avx2`.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body
        }
    };
}

mod activation;
mod attention;
mod bf16_matmul;
mod bias;
mod conv;
mod direct_conv;
mod implicit_im2col;
mod norm;
mod softmax;
#[cfg(test)]
mod tests;
mod upsample;
mod winograd;

pub use activation::{gelu_erf, silu};
pub use attention::{attention, attention_packed};
pub(crate) use bf16_matmul::matmul_f32;
pub use bf16_matmul::{amx_available, amx_dot_chains, autocast_bf16, autocast_bf16_active, matmul_bf16};
pub use bias::bias_add;
pub use conv::{conv2d, conv2d_inference, Conv2dParams};
pub use norm::{group_norm, group_norm_silu, layer_norm};
pub use softmax::softmax_last_dim;
pub use upsample::upsample_nearest2x;

use std::mem::MaybeUninit;

use candle_core::{bail, DType, Layout, Result, Tensor};
use gemm::Parallelism;

/// Runs `f` on a worker thread of a new rayon pool of candle's thread count (RAYON_NUM_THREADS,
/// else the cores), and returns its result. Called from outside a pool, every parallel kernel
/// hands its work to the pool's threads and puts the caller to sleep until they finish: two
/// context switches per op, which cost 16% of a small UNet's training step on two cores (and
/// 2.4x its time on one). From a worker, the caller takes its share of the work itself. Wrap a
/// whole training loop or sampling run in it, not each op; on a worker already, it just runs `f`.
pub fn on_worker_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(candle_core::utils::get_num_threads())
        .thread_name(|i| format!("scalelong-{i}"))
        // candle's backward walks the graph recursively: as much stack as a main thread, and more.
        .stack_size(64 << 20)
        .build();
    match pool {
        Ok(pool) => pool.install(f),
        // No threads to be had: the caller's thread does the work, as before.
        Err(_) => f(),
    }
}

/// Whether the fused CPU kernels apply to `x`; otherwise callers use the composed candle ops.
fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// The elements a contiguous layout covers (the wrappers make every input contiguous).
fn contiguous<'a, T>(s: &'a [T], l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s[start..end]),
        None => bail!("{op}: expects a contiguous input, got strides {:?}", l.stride()),
    }
}

/// Float element of the kernels: f32 or f64.
trait Float: num_traits::Float + num_traits::FromPrimitive + Send + Sync + std::iter::Sum + 'static {
    fn erf(self) -> Self;
    /// This thread's [`Scratch`] pool of this element type.
    fn scratch_pool() -> &'static ScratchPool<Self>;
    /// `e^x`, branch-free for f32 so that loops over it vectorise (libm's `expf` is one call per
    /// element; in SiLU and its gradient it was a quarter of a small UNet's CPU step).
    fn exp_vec(self) -> Self;
    /// [`gemm`] with bf16 operands (autocast's), where this element type has it (f32); false
    /// where not: f64, which autocast leaves alone (as PyTorch's, which casts f32 only).
    fn gemm_bf16(
        _dst: (&mut [Self], usize),
        _mnk: (usize, usize, usize),
        _a: Mat<Self>,
        _b: Mat<Self>,
        _add: bool,
        _par: Parallelism,
    ) -> bool {
        false
    }

    /// [`Float::gemm_bf16`] into uninitialised memory (all m rows of n written where true).
    fn gemm_bf16_into(
        _dst: (&mut [MaybeUninit<Self>], usize),
        _mnk: (usize, usize, usize),
        _a: Mat<Self>,
        _b: Mat<Self>,
        _par: Parallelism,
    ) -> bool {
        false
    }
}

impl Float for f32 {
    fn scratch_pool() -> &'static ScratchPool<Self> {
        thread_local! {
            static POOL: std::cell::RefCell<Vec<(Vec<f32>, Vec<f32>)>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        &POOL
    }

    fn gemm_bf16(
        dst: (&mut [f32], usize),
        mnk: (usize, usize, usize),
        a: Mat<f32>,
        b: Mat<f32>,
        add: bool,
        par: Parallelism,
    ) -> bool {
        bf16_matmul::gemm_bf16(dst, mnk, a, b, add, par);
        true
    }

    fn gemm_bf16_into(
        dst: (&mut [MaybeUninit<f32>], usize),
        mnk: (usize, usize, usize),
        a: Mat<f32>,
        b: Mat<f32>,
        par: Parallelism,
    ) -> bool {
        bf16_matmul::gemm_bf16_into(dst, mnk, a, b, par);
        true
    }

    /// Eigen's rational approximation on [-4, 4] (as PyTorch's CPU GELU): within 1e-6 of libm's
    /// erff, and branch-free, so that loops over it vectorise. Horner steps are fused
    /// multiply-adds (one instruction where the kernel's copy has FMA; libm's exact `fmaf`, the
    /// same bits, in the baseline copy).
    #[inline(always)]
    fn erf(self) -> Self {
        const ALPHA: [f32; 7] = [
            -2.726_142_3e-10,
            2.770_681_4e-8,
            -2.101_024e-6,
            -5.692_506_4e-5,
            -7.349_906_3e-4,
            -2.9546e-3,
            -1.609_603_3e-2,
        ];
        const BETA: [f32; 5] = [-1.456_607_2e-5, -2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2];
        let x = self.clamp(-4.0, 4.0);
        let x2 = x * x;
        let p = ALPHA.iter().fold(0.0, |acc: f32, &a| acc.mul_add(x2, a));
        let q = BETA.iter().fold(0.0, |acc: f32, &b| acc.mul_add(x2, b));
        x * p / q
    }

    /// Cephes' expf: `e^x = 2^n e^r` with `n = round(x / ln 2)`, `|r| <= ln 2 / 2` and a degree-6
    /// polynomial for `e^r`; 0 below -104, infinity above 88.73, NaN stays NaN.
    #[inline(always)]
    fn exp_vec(self) -> Self {
        const P: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5e-1];
        // Round to nearest through the float adder (branch-free; no SSE4.1 `roundps` needed).
        const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
        const LO: f32 = -104.0;
        const HI: f32 = 88.722_84;
        let x = self.clamp(LO, HI);
        let shifted = x.mul_add(std::f32::consts::LOG2_E, ROUND);
        let n = shifted - ROUND;
        // ln 2 in two parts, so that x - n ln 2 is exact to f32.
        let r = n.mul_add(2.121_944_4e-4, n.mul_add(-0.693_359_4, x));
        let p = P.iter().fold(0.0, |acc: f32, &c| acc.mul_add(r, c));
        let e_r = (p * r).mul_add(r, r + 1.0);
        // 2^n as two normal powers of two (n in [-150, 128]), so that results below f32's
        // smallest normal come out as its subnormals.
        // n as an integer from the bits of `shifted` (ROUND + n, one exponent, unit steps): `as
        // i32` would saturate element by element and keep the loop from vectorising.
        let n = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
        let half = n >> 1;
        let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
        let y = e_r * pow2(half) * pow2(n - half);
        let y = if self < LO {
            0.0
        } else if self > HI {
            f32::INFINITY
        } else {
            y
        };
        if self.is_nan() {
            self
        } else {
            y
        }
    }
}

impl Float for f64 {
    fn scratch_pool() -> &'static ScratchPool<Self> {
        thread_local! {
            static POOL: std::cell::RefCell<Vec<(Vec<f64>, Vec<f64>)>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        &POOL
    }

    fn erf(self) -> Self {
        libm::erf(self)
    }

    fn exp_vec(self) -> Self {
        self.exp()
    }
}

/// `sum(f(a_i, b_i))` over eight independent accumulators, so that the compiler vectorises it
/// (one running float sum is a dependency chain it may not reorder).
#[inline(always)]
fn sum_by<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    const LANES: usize = 8;
    let mut acc = [T::zero(); LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (a, b) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            acc[i] = acc[i] + f(a[i], b[i]);
        }
    }
    let rest = a_rest.iter().zip(b_rest).fold(T::zero(), |s, (&a, &b)| s + f(a, b));
    acc.iter().fold(rest, |s, &v| s + v)
}

/// How many consecutive items (of `n`) each partial sum of a parallel reduction covers: fixed by
/// `n` alone, so that the summation order, and the result, never depend on thread scheduling.
fn reduction_group(n: usize) -> usize {
    const GROUPS: usize = 16;
    n.div_ceil(GROUPS).max(1)
}

/// Adds up partial sums in their order.
fn sum_in_order<T: Float>(partials: Vec<Vec<T>>, len: usize) -> Vec<T> {
    partials.into_iter().fold(vec![T::zero(); len], |mut acc, p| {
        acc.iter_mut().zip(p).for_each(|(a, p)| *a = *a + p);
        acc
    })
}

/// `x` as f32 elements, if that is what `T` is (the bf16 paths are f32 only).
fn as_f32<T: Float>(x: &[T]) -> Option<&[f32]> {
    // SAFETY: T is f32 (same type, so same layout).
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(|| unsafe { &*(x as *const [T] as *const [f32]) })
}

/// `v` as a `Vec<T>`, if T is f32.
fn from_f32<T: Float>(v: Vec<f32>) -> Option<Vec<T>> {
    let v: Box<dyn std::any::Any> = Box::new(v);
    v.downcast::<Vec<T>>().ok().map(|v| *v)
}

/// As [`as_f32`], mutable.
fn as_f32_mut<T: Float>(x: &mut [T]) -> Option<&mut [f32]> {
    // SAFETY: as in `as_f32`.
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(|| unsafe { &mut *(x as *mut [T] as *mut [f32]) })
}

/// As [`as_f32`], for memory still to be written.
fn as_f32_uninit<T: Float>(x: &mut [MaybeUninit<T>]) -> Option<&mut [MaybeUninit<f32>]> {
    // SAFETY: as in `as_f32`.
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(|| unsafe { &mut *(x as *mut [MaybeUninit<T>] as *mut [MaybeUninit<f32>]) })
}

/// A vector of `len` elements that `write` writes into uninitialised memory: outputs are not
/// zero-filled before a kernel overwrites them (a memset of every fresh output cost 3-6% of an
/// autocast sampling step).
///
/// # Safety
/// `write` must write every element of the slice it is given.
unsafe fn written_vec<T>(len: usize, write: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    write(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller's promise.
    unsafe { v.set_len(len) };
    v
}

/// `x` as initialised elements.
///
/// # Safety
/// Every element of `x` must have been written.
unsafe fn assume_init<T>(x: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: the caller's promise; MaybeUninit<T> has T's layout.
    unsafe { &mut *(x as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// A thread's spare [`Scratch`] pairs.
type ScratchPool<T> = std::thread::LocalKey<std::cell::RefCell<Vec<(Vec<T>, Vec<T>)>>>;

/// Two scratch vectors of a kernel (an im2col matrix, GEMM rows), taken from this thread's pool
/// and put back when dropped: they keep their memory from one image group and one convolution to
/// the next (fresh ones per group had been zero-filled each time: 4% of a small UNet's sampling).
/// Their contents are stale; see [`grown`].
struct Scratch<T: Float>((Vec<T>, Vec<T>));

impl<T: Float> Scratch<T> {
    /// A pair from the pool, or two empty vectors.
    fn take() -> Self {
        Scratch(T::scratch_pool().with(|p| p.borrow_mut().pop()).unwrap_or_default())
    }
}

impl<T: Float> Drop for Scratch<T> {
    fn drop(&mut self) {
        const KEPT: usize = 4;
        let bufs = std::mem::take(&mut self.0);
        T::scratch_pool().with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < KEPT {
                pool.push(bufs);
            }
        });
    }
}

impl<T: Float> std::ops::Deref for Scratch<T> {
    type Target = (Vec<T>, Vec<T>);
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<T: Float> std::ops::DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The first `len` elements of `v`, grown (zero-filled) only past its current length: elements
/// below it keep stale values, for kernels that write every element they read.
fn grown<T: Float>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::zero());
    }
    &mut v[..len]
}

/// A matrix operand: elements, row stride, column stride.
type Mat<'a, T> = (&'a [T], usize, usize);

/// `dst (m, n; row stride rs) = lhs (m, k) * rhs (k, n)` as [`gemm`] (without accumulation),
/// into memory that need not be initialised: all m rows of n are written (no memset first, as
/// candle's matmul does for every output).
fn gemm_into<T: Float>(
    (dst, dst_rs): (&mut [MaybeUninit<T>], usize),
    (m, n, k): (usize, usize, usize),
    lhs: Mat<T>,
    rhs: Mat<T>,
    bf16: bool,
    par: Parallelism,
) {
    check_gemm(dst.len(), dst_rs, (m, n, k), lhs, rhs);
    if bf16 && T::gemm_bf16_into((&mut *dst, dst_rs), (m, n, k), lhs, rhs, par) {
        return;
    }
    // SAFETY: as in `gemm`; without `read_dst` the gemm crate only writes `dst` (its kernels'
    // alpha-zero path stores the products without loading the destination).
    unsafe { gemm_crate(dst.as_mut_ptr() as *mut T, dst_rs, (m, n, k), lhs, rhs, false, par) }
}

/// `dst (m, n; row stride rs) (+)= lhs (m, k) * rhs (k, n)`, on the gemm crate candle itself uses,
/// or with `bf16` (a kernel inside [`autocast_bf16`]) as [`matmul_bf16`] computes it.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Float>(
    (dst, dst_rs): (&mut [T], usize),
    (m, n, k): (usize, usize, usize),
    lhs: Mat<T>,
    rhs: Mat<T>,
    add: bool,
    bf16: bool,
    par: Parallelism,
) {
    check_gemm(dst.len(), dst_rs, (m, n, k), lhs, rhs);
    if bf16 && T::gemm_bf16((dst, dst_rs), (m, n, k), lhs, rhs, add, par) {
        return;
    }
    // SAFETY: the asserts keep every access of the three operands inside their slices, and the
    // destination's rows (stride >= n) do not overlap.
    unsafe { gemm_crate(dst.as_mut_ptr(), dst_rs, (m, n, k), lhs, rhs, add, par) }
}

/// The threads a [`Parallelism`] asks for.
fn threads(par: Parallelism) -> usize {
    match par {
        Parallelism::Rayon(t) => t,
        _ => 1,
    }
}

/// Panics unless the operands and the m rows of n of a destination of `dst_len` elements (rows
/// `dst_rs >= n` apart, so that they do not overlap) lie inside their slices.
fn check_gemm<T>(dst_len: usize, dst_rs: usize, (m, n, k): (usize, usize, usize), lhs: Mat<T>, rhs: Mat<T>) {
    let inside =
        |len: usize, rs: usize, cs: usize, r: usize, c: usize| r == 0 || c == 0 || (r - 1) * rs + (c - 1) * cs < len;
    assert!(inside(lhs.0.len(), lhs.1, lhs.2, m, k) && inside(rhs.0.len(), rhs.1, rhs.2, k, n));
    assert!(inside(dst_len, dst_rs, 1, m, n) && (m < 2 || dst_rs >= n));
}

/// The gemm crate's `dst (+)= lhs rhs`. In parallel, the larger of m and n is split into one
/// block per thread, each a single-threaded GEMM: the crate's own split of a weight gradient's
/// few rows (m = 128, k = 2080) ran two threads at 0.6-1.1x one thread's speed, and a Linear
/// layer's forward at 1.4x (about 1.9x split here).
///
/// # Safety
/// `lhs`, `rhs` and the m rows of n of `dst` (row stride `dst_rs >= n`) must lie inside their
/// allocations, and with `read_dst` the destination must be initialised.
unsafe fn gemm_crate<T: Float>(
    dst: *mut T,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: Mat<T>,
    rhs: Mat<T>,
    read_dst: bool,
    par: Parallelism,
) {
    let threads = threads(par);
    // Below this (about 10 us on one core) a fork-join costs more than it saves.
    const SPLIT_MIN_MACS: usize = 1 << 20;
    let split = threads > 1 && m * n * k >= SPLIT_MIN_MACS && m.max(n) >= 32 * threads;
    let (lhs_strides, rhs_strides) = ((lhs.1 as isize, lhs.2 as isize), (rhs.1 as isize, rhs.2 as isize));
    let run = |dst: *mut T, (m, n): (usize, usize), a: *const T, b: *const T, par| {
        // SAFETY: the caller's promise, for this block of rows or columns.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                1,
                dst_rs as isize,
                read_dst,
                a,
                lhs_strides.1,
                lhs_strides.0,
                b,
                rhs_strides.1,
                rhs_strides.0,
                T::one(),
                T::one(),
                false,
                false,
                false,
                par,
            )
        }
    };
    if !split {
        return run(dst, (m, n), lhs.0.as_ptr(), rhs.0.as_ptr(), par);
    }
    // Blocks of whole 16-element vectors; pointers cross threads as addresses.
    let by_rows = m >= n;
    let len = if by_rows { m } else { n };
    let block = len.div_ceil(threads).div_ceil(16) * 16;
    let (dst, a, b) = (dst as usize, lhs.0.as_ptr() as usize, rhs.0.as_ptr() as usize);
    use rayon::prelude::*;
    (0..len.div_ceil(block)).into_par_iter().for_each(|i| {
        let (start, size) = (i * block, block.min(len - i * block));
        let t = std::mem::size_of::<T>();
        match by_rows {
            true => run(
                (dst + start * dst_rs * t) as *mut T,
                (size, n),
                (a + start * lhs.1 * t) as *const T,
                b as *const T,
                Parallelism::None,
            ),
            false => run(
                (dst + start * t) as *mut T,
                (m, size),
                a as *const T,
                (b + start * rhs.2 * t) as *const T,
                Parallelism::None,
            ),
        }
    });
}
