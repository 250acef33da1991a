//! FID, KID and statistics files against pytorch-fid's own numbers (`fixtures/fid_reference.json`,
//! made by `fixtures/make_fid_reference.py` with pytorch-fid 0.3.0 from PyPI).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use scalelong_eval::{frechet_distance, images, kid, FidInception, Stats};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("fid_reference.json")).unwrap()).unwrap()
}

fn weights() -> PathBuf {
    match std::env::var_os("SCALELONG_FID_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fid"),
    }
    .join("pt_inception-2015-12-05.pth")
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// MNIST t10k digits `lo..lo + 64`, written as grayscale PNGs into `dir` (as the script does).
fn write_digits(dir: &Path, lo: usize) {
    let ds = scalelong_data::DataSpec::EmbeddedMnist.load(1, 28).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..64 {
        let img = image::GrayImage::from_raw(28, 28, ds.image(lo + i).to_vec()).unwrap();
        img.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

#[test]
fn fid_and_kid_of_mnist_sets_match_pytorch_fid() {
    let want = reference();
    let net = FidInception::load(&weights(), &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let features = |lo: usize, name: &str| {
        let dir = tmp.path().join(name);
        write_digits(&dir, lo);
        let imgs: Vec<Tensor> = images::list(&dir).unwrap().iter().map(|p| images::read_rgb(p).unwrap()).collect();
        net.features(&Tensor::cat(&imgs, 0).unwrap()).unwrap()
    };
    let (fa, fb) = (features(0, "a"), features(64, "b"));
    let (a, b) = (Stats::from_features(&fa).unwrap(), Stats::from_features(&fb).unwrap());

    let trace = |s: &Stats| (0..s.dim()).map(|i| s.sigma[(i, i)]).sum::<f64>();
    assert!(rel(trace(&a), want["trace_sigma_a"].as_f64().unwrap()) < 1e-4, "trace {}", trace(&a));
    for (i, m) in want["mu_a_first8"].as_array().unwrap().iter().enumerate() {
        assert!((a.mu[i] - m.as_f64().unwrap()).abs() < 1e-5, "mu[{i}] = {}", a.mu[i]);
    }
    let fid = frechet_distance(&a, &b).unwrap();
    let fid_ref = want["fid_a_b"].as_f64().unwrap();
    println!("FID ours {fid:.9}, pytorch-fid {fid_ref:.9}, relative {:.2e}", rel(fid, fid_ref));
    assert!(rel(fid, fid_ref) < 1e-3);
    assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-6 * fid, "FID of a set with itself");

    // One subset of all 64: the unbiased MMD does not depend on the draw.
    let k = kid(&fa, &fb, 3, 1000, 0).unwrap();
    let kid_ref = want["kid_a_b_one_subset"].as_f64().unwrap();
    println!("KID ours {:.6e} (std {:.1e}), reference {kid_ref:.6e}", k.mean, k.std);
    assert!(rel(k.mean, kid_ref) < 1e-2 && k.std < 1e-12, "{k:?}");
}

#[test]
fn statistics_files_load_as_numpy_writes_them() {
    let want = reference()["fid_small_plain_compressed"].as_f64().unwrap();
    let plain = Stats::read_npz(&fixture("stats_small_plain.npz")).unwrap();
    let compressed = Stats::read_npz(&fixture("stats_small_compressed.npz")).unwrap();
    assert_eq!(plain.dim(), 8);
    let fid = frechet_distance(&plain, &compressed).unwrap();
    assert!(rel(fid, want) < 1e-9, "{fid} vs scipy's {want}");

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("stats.npz");
    plain.write_npz(&out).unwrap();
    assert_eq!(Stats::read_npz(&out).unwrap(), plain);

    std::fs::write(tmp.path().join("bad.npz"), b"not a zip").unwrap();
    let err = Stats::read_npz(&tmp.path().join("bad.npz")).unwrap_err().to_string();
    assert!(err.contains("bad.npz") && err.contains(".npz"), "{err}");
    let mu_only = tmp.path().join("mu.npz");
    Tensor::write_npz(&[("mu", &Tensor::zeros(3, candle_core::DType::F64, &Device::Cpu).unwrap())], &mu_only).unwrap();
    let err = Stats::read_npz(&mu_only).unwrap_err().to_string();
    assert!(err.contains("no array `sigma`"), "{err}");
    let err = frechet_distance(&plain, &Stats { mu: vec![0.0; 3], sigma: faer::Mat::identity(3, 3) }).unwrap_err();
    assert!(err.to_string().contains("8 and 3 dimensions"), "{err}");
}

#[test]
fn missing_weights_say_where_to_get_them() {
    let err = scalelong_eval::weights::locate(Some(Path::new("/nonexistent/inception.pth"))).unwrap_err().to_string();
    assert!(err.contains("--inception /nonexistent/inception.pth") && err.contains("pt_inception"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let truncated = tmp.path().join("inception.pth");
    std::fs::write(&truncated, &std::fs::read(weights()).unwrap()[..1000]).unwrap();
    let err = FidInception::load(&truncated, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("inception.pth"), "{err}");
}
