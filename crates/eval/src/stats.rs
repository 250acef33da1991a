//! Feature statistics (mean and covariance) in pytorch-fid's `.npz` format (`mu`, `sigma`).

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use faer::Mat;

/// Mean and covariance of a set of features, in float64 as pytorch-fid keeps them.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub mu: Vec<f64>,
    /// Row-major `dim x dim`, `np.cov(features, rowvar=False)` (divides by N - 1).
    pub sigma: Mat<f64>,
}

/// Features as a float64 `N x D` matrix.
pub(crate) fn matrix(features: &Tensor) -> Result<Mat<f64>> {
    let (n, d) = features.dims2()?;
    let v = features.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(Mat::from_fn(n, d, |i, j| v[i * d + j]))
}

impl Stats {
    /// Statistics of features `(N, D)`, N >= 2.
    pub fn from_features(features: &Tensor) -> Result<Self> {
        let x = matrix(features)?;
        let (n, d) = (x.nrows(), x.ncols());
        if n < 2 {
            candle_core::bail!("FID statistics need at least 2 images, got {n}");
        }
        let mu: Vec<f64> = (0..d).map(|j| (0..n).map(|i| x[(i, j)]).sum::<f64>() / n as f64).collect();
        let centred = Mat::from_fn(n, d, |i, j| x[(i, j)] - mu[j]);
        let sigma = (centred.transpose() * &centred) / faer::Scale(n as f64 - 1.0);
        Ok(Self { mu, sigma })
    }

    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Reads `mu` (D,) and `sigma` (D, D) from an `.npz` (pytorch-fid's and the official U-ViT's
    /// reference statistics, compressed or not).
    pub fn read_npz(path: &Path) -> Result<Self> {
        let err = |what: String| candle_core::Error::Msg(format!("FID statistics {}: {what}", path.display()));
        if !path.is_file() {
            return Err(err("no such file".into()));
        }
        let arrays = Tensor::read_npz(path).map_err(|e| err(format!("not a readable .npz ({e})")))?;
        let get = |name: &str| {
            arrays.iter().find(|(k, _)| k == name).map(|(_, t)| t.clone()).ok_or_else(|| {
                let names: Vec<&str> = arrays.iter().map(|(k, _)| k.as_str()).collect();
                err(format!("no array `{name}` (it has {names:?}); expected `mu` and `sigma`"))
            })
        };
        let (mu, sigma) = (get("mu")?, get("sigma")?);
        let d = mu.elem_count();
        if mu.rank() != 1 || sigma.dims() != [d, d] {
            return Err(err(format!("`mu` {:?} and `sigma` {:?}: expected (D,) and (D, D)", mu.dims(), sigma.dims())));
        }
        let mu = mu.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let s = sigma.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        if mu.iter().chain(&s).any(|v| !v.is_finite()) {
            return Err(err("non-finite values".into()));
        }
        Ok(Self { mu, sigma: Mat::from_fn(d, d, |i, j| s[i * d + j]) })
    }

    /// Writes `mu` and `sigma` as float64 arrays of an `.npz` that `np.load` (and pytorch-fid)
    /// reads; written to a temporary file first, then renamed.
    pub fn write_npz(&self, path: &Path) -> Result<()> {
        let d = self.dim();
        let mu = Tensor::from_slice(&self.mu, d, &Device::Cpu)?;
        let s: Vec<f64> = (0..d * d).map(|k| self.sigma[(k / d, k % d)]).collect();
        let sigma = Tensor::from_vec(s, (d, d), &Device::Cpu)?;
        let tmp = path.with_extension("npz.partial");
        Tensor::write_npz(&[("mu", &mu), ("sigma", &sigma)], &tmp)?;
        std::fs::rename(&tmp, path).map_err(|e| candle_core::Error::Msg(format!("writing {}: {e}", path.display())))
    }
}
