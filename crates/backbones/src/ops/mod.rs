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

mod activation;
mod attention;
mod bias;
mod conv;
mod norm;
mod softmax;
#[cfg(test)]
mod tests;
mod upsample;

pub use activation::{gelu_erf, silu};
pub use attention::attention;
pub use bias::bias_add;
pub use conv::{conv2d, conv2d_inference, Conv2dParams};
pub use norm::{group_norm, group_norm_silu, layer_norm};
pub use softmax::softmax_last_dim;
pub use upsample::upsample_nearest2x;

use candle_core::{bail, DType, Layout, Result, Tensor};
use gemm::Parallelism;

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
}

impl Float for f32 {
    /// Eigen's rational approximation on [-4, 4] (as PyTorch's CPU GELU): within 1e-6 of libm's
    /// erff, and branch-free, so that loops over it vectorise.
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
        let p = ALPHA.iter().fold(0.0, |acc, &a| acc * x2 + a);
        let q = BETA.iter().fold(0.0, |acc, &b| acc * x2 + b);
        x * p / q
    }
}

impl Float for f64 {
    fn erf(self) -> Self {
        libm::erf(self)
    }
}

/// `sum(f(a_i, b_i))` over eight independent accumulators, so that the compiler vectorises it
/// (one running float sum is a dependency chain it may not reorder).
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

/// A matrix operand: elements, row stride, column stride.
type Mat<'a, T> = (&'a [T], usize, usize);

/// `dst (m, n; row stride rs) (+)= lhs (m, k) * rhs (k, n)`, on the gemm crate candle itself uses.
fn gemm<T: Float>(
    (dst, dst_rs): (&mut [T], usize),
    (m, n, k): (usize, usize, usize),
    lhs: Mat<T>,
    rhs: Mat<T>,
    add: bool,
    par: Parallelism,
) {
    let inside =
        |len: usize, rs: usize, cs: usize, r: usize, c: usize| r == 0 || c == 0 || (r - 1) * rs + (c - 1) * cs < len;
    assert!(inside(lhs.0.len(), lhs.1, lhs.2, m, k) && inside(rhs.0.len(), rhs.1, rhs.2, k, n));
    assert!(inside(dst.len(), dst_rs, 1, m, n) && (m < 2 || dst_rs >= n));
    // SAFETY: the asserts keep every access of the three operands inside their slices, and the
    // destination's rows (stride >= n) do not overlap.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            add,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}
