//! CPU kernels for the hot ops, as candle custom ops with their own backward pass.
//!
//! candle 0.11's CPU conv2d backward (a direct transposed convolution), and the normalisations
//! and softmax composed from a dozen primitives (each with its own pass, allocation and backward),
//! cost most of a training step. Each op here is one pass forward and one backward, computes the
//! same function as the composed candle ops (tested against them), and falls back to those ops on
//! other devices and dtypes.

mod conv;
mod norm;
mod softmax;
#[cfg(test)]
mod tests;

pub use conv::{conv2d, Conv2dParams};
pub use norm::{group_norm, layer_norm};
pub use softmax::softmax_last_dim;

use candle_core::{bail, DType, Layout, Result, Tensor};

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
trait Float: num_traits::Float + num_traits::FromPrimitive + Send + Sync + std::iter::Sum + 'static {}

impl Float for f32 {}
impl Float for f64 {}

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
