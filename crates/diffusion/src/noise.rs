//! Seeded Gaussian noise. candle's CPU generator cannot be seeded, so noise is drawn on the host
//! from the caller's RNG and moved to the device: the same seed gives the same sample anywhere.

use candle_core::{DType, Device, Result, Shape, Tensor};
use rand::RngCore;
use rand_distr::{Distribution, StandardNormal};

/// Standard normal noise of `shape`, drawn from `rng`.
pub fn randn(shape: impl Into<Shape>, dtype: DType, device: &Device, rng: &mut dyn RngCore) -> Result<Tensor> {
    let shape = shape.into();
    let values: Vec<f32> = (0..shape.elem_count()).map(|_| StandardNormal.sample(&mut *rng)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)
}

/// Noise shaped like `x`, on its device and in its dtype.
pub fn randn_like(x: &Tensor, rng: &mut dyn RngCore) -> Result<Tensor> {
    randn(x.shape(), x.dtype(), x.device(), rng)
}

/// Uniform values in [0, 1) of length `n`, as f64 (host side).
pub(crate) fn uniform(n: usize, rng: &mut dyn RngCore) -> Vec<f64> {
    use rand::Rng;
    (0..n).map(|_| rng.random::<f64>()).collect()
}
