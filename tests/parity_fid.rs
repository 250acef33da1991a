//! pytorch-fid parity of the FID Inception network, on the golden vectors of `../shared/fid/`
//! (or `$SCALELONG_FID_DIR`): every `golden_fid_inception*.npz` (`input` in network space ->
//! `feats`) within 1e-4, and every `golden_pytorch_fid_mnist_test{N}_feats.npy` (the first N MNIST
//! t10k digits through the whole pipeline: uint8, resize to 299, 2x - 1, network) within 1e-3.
//!
//! `cargo test --release --test parity_fid -- --nocapture` prints the errors.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use scalelong::data::DataSpec;
use scalelong::eval::FidInception;

const NETWORK_TOL: f64 = 1e-4;
const PIPELINE_TOL: f64 = 1e-3;

fn fid_dir() -> PathBuf {
    match std::env::var_os("SCALELONG_FID_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fid"),
    }
}

fn files(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    out.sort();
    if out.is_empty() {
        bail!("no {prefix}*{suffix} in {}", dir.display());
    }
    Ok(out)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        bail!("shape {:?}, reference {:?}", a.dims(), b.dims());
    }
    let d = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?.flatten_all()?.max(0)?;
    Ok(d.to_scalar::<f64>()?)
}

fn network() -> Result<FidInception> {
    Ok(FidInception::load(&fid_dir().join("pt_inception-2015-12-05.pth"), &Device::Cpu)?)
}

#[test]
fn fid_inception_matches_pytorch_fid() -> Result<()> {
    let net = network()?;
    let mut failures = Vec::new();
    for path in files(&fid_dir(), "golden_fid_inception", ".npz")? {
        let arrays = Tensor::read_npz(&path)?;
        let get = |n: &str| arrays.iter().find(|(k, _)| k == n).map(|(_, t)| t.clone()).context(n.to_string());
        let (input, want) = (get("input")?, get("feats")?);
        let err = max_abs_diff(&net.forward(&input)?, &want)?;
        println!(
            "{}: max |diff| {err:.2e} (features up to {:.2})",
            path.display(),
            want.abs()?.max_all()?.to_scalar::<f32>()?
        );
        if err > NETWORK_TOL {
            failures.push(format!("{}: off by {err:.3e}", path.display()));
        }
    }
    let mnist = DataSpec::EmbeddedMnist.load(1, 28)?;
    for path in files(&fid_dir(), "golden_pytorch_fid_mnist_test", "_feats.npy")? {
        let want = Tensor::read_npy(&path)?;
        let n = want.dim(0)?;
        let pixels: Vec<u8> = (0..n).flat_map(|i| mnist.image(i).to_vec()).collect();
        let images = Tensor::from_vec(pixels, (n, 1, 28, 28), &Device::Cpu)?;
        let err = max_abs_diff(&net.features(&images)?, &want)?;
        println!("{}: max |diff| {err:.2e}", path.display());
        if err > PIPELINE_TOL {
            failures.push(format!("{}: off by {err:.3e}", path.display()));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}
