//! The Frechet distance between two Gaussians, as pytorch-fid's `calculate_frechet_distance`:
//! `|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`.

use candle_core::Result;
use faer::{Mat, Side};

use crate::Stats;

/// FID between two sets of statistics, in float64.
///
/// `tr((S1 S2)^(1/2))` is the sum of the square roots of the eigenvalues of `S1 S2`, which are
/// those of the symmetric `S1^(1/2) S2 S1^(1/2)`: two symmetric eigendecompositions instead of
/// scipy's general `sqrtm`, the same value (tested against pytorch-fid), and no complex round-off
/// to discard. Eigenvalues below zero (round-off of singular covariances) count as zero.
pub fn frechet_distance(a: &Stats, b: &Stats) -> Result<f64> {
    let d = a.dim();
    if b.dim() != d {
        candle_core::bail!("FID: statistics of {d} and {} dimensions cannot be compared", b.dim());
    }
    let diff: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace = |m: &Mat<f64>| (0..d).map(|i| m[(i, i)]).sum::<f64>();
    let root_a = sqrt_psd(&a.sigma)?;
    let m = &root_a * &b.sigma * &root_a;
    let sym = Mat::from_fn(d, d, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let eig = sym.self_adjoint_eigenvalues(Side::Lower).map_err(|e| candle_core::Error::Msg(format!("FID: {e:?}")))?;
    let tr_covmean: f64 = eig.iter().map(|l| l.max(0.0).sqrt()).sum();
    Ok(diff + trace(&a.sigma) + trace(&b.sigma) - 2.0 * tr_covmean)
}

/// The symmetric square root of a symmetric positive semi-definite matrix.
fn sqrt_psd(s: &Mat<f64>) -> Result<Mat<f64>> {
    let n = s.nrows();
    let sym = Mat::from_fn(n, n, |i, j| 0.5 * (s[(i, j)] + s[(j, i)]));
    let evd = sym.self_adjoint_eigen(Side::Lower).map_err(|e| candle_core::Error::Msg(format!("FID: {e:?}")))?;
    let (u, lambda) = (evd.U(), evd.S().column_vector());
    let scaled = Mat::from_fn(n, n, |i, j| u[(i, j)] * lambda[j].max(0.0).sqrt());
    Ok(&scaled * u.transpose())
}
