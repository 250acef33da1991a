//! Kernel Inception Distance: the unbiased MMD^2 with the cubic polynomial kernel
//! `k(x, y) = (x.y / d + 1)^3`, averaged over random subsets (torch-fidelity, clean-fid).

use candle_core::{Result, Tensor};
use faer::Mat;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::stats::matrix;

/// KID over subsets: mean and standard deviation (ddof 0, as torch-fidelity) of the estimates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
}

/// torch-fidelity's defaults: 100 subsets of 1000.
pub const SUBSETS: usize = 100;
pub const SUBSET_SIZE: usize = 1000;

/// KID between features `(N1, D)` and `(N2, D)`: `subsets` draws of `min(N1, N2, subset_size)`
/// features from each side without replacement (seeded, so a result repeats).
pub fn kid(a: &Tensor, b: &Tensor, subsets: usize, subset_size: usize, seed: u64) -> Result<Kid> {
    let (x, y) = (matrix(a)?, matrix(b)?);
    if x.ncols() != y.ncols() {
        candle_core::bail!("KID: features of {} and {} dimensions cannot be compared", x.ncols(), y.ncols());
    }
    let m = x.nrows().min(y.nrows()).min(subset_size);
    if m < 2 || subsets == 0 {
        candle_core::bail!("KID needs at least 2 images a side and one subset, got {m} and {subsets}");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pick = |from: &Mat<f64>| {
        let rows = rand::seq::index::sample(&mut rng, from.nrows(), m).into_vec();
        Mat::from_fn(m, from.ncols(), |i, j| from[(rows[i], j)])
    };
    let estimates: Vec<f64> = (0..subsets).map(|_| mmd2(&pick(&x), &pick(&y))).collect();
    let mean = estimates.iter().sum::<f64>() / subsets as f64;
    let var = estimates.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / subsets as f64;
    Ok(Kid { mean, std: var.sqrt() })
}

/// The unbiased MMD^2 of two equal-sized samples.
fn mmd2(x: &Mat<f64>, y: &Mat<f64>) -> f64 {
    let (m, d) = (x.nrows() as f64, x.ncols() as f64);
    let kernel_sum = |a: &Mat<f64>, b: &Mat<f64>, skip_diagonal: bool| {
        let g = a * b.transpose();
        let mut s = 0.0;
        for j in 0..g.ncols() {
            for i in 0..g.nrows() {
                if !(skip_diagonal && i == j) {
                    s += (g[(i, j)] / d + 1.0).powi(3);
                }
            }
        }
        s
    };
    (kernel_sum(x, x, true) + kernel_sum(y, y, true)) / (m * (m - 1.0)) - 2.0 * kernel_sum(x, y, false) / (m * m)
}
