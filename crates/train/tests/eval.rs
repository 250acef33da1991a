//! `[eval]`: FID and KID of the EMA weights written into metrics.jsonl during training, with the
//! real FID Inception weights of `../shared/fid/` (or `$SCALELONG_FID_DIR`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use scalelong_train::metrics::MetricsLine;
use scalelong_train::{TrainConfig, Trainer};

fn inception() -> PathBuf {
    match std::env::var_os("SCALELONG_FID_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fid"),
    }
    .join("pt_inception-2015-12-05.pth")
}

fn tiny(max_steps: u64, inception: &str) -> TrainConfig {
    let mut cfg = TrainConfig::from_toml(
        r#"
[model]
img_size = 8
patch_size = 2
in_chans = 1
embed_dim = 16
depth = 2
num_heads = 2
[train]
batch_size = 8
warmup_steps = 2
[checkpoint]
every = 2
[log]
every = 1
[sample]
every = 0
n = 4
steps = 3
[diagnostics]
every = 0
[eval]
every = 2
num_samples = 6
steps = 3
batch_size = 4
reference = "mnist"
reference_images = 12
"#,
        "test",
    )
    .unwrap();
    cfg.train.max_steps = max_steps;
    cfg.eval.inception = inception.to_string();
    cfg
}

fn lines(dir: &Path) -> Vec<MetricsLine> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| MetricsLine::parse(l).unwrap()).collect()
}

#[test]
fn fid_and_kid_are_measured_on_the_eval_steps_and_survive_resume() {
    let dir = tempfile::tempdir().unwrap();
    let weights = inception();
    let cfg = tiny(2, weights.to_str().unwrap());
    Trainer::new(cfg, dir.path(), &Device::Cpu, DType::F32, false).unwrap().run(&mut |_| {}).unwrap();
    assert!(dir.path().join("fid_reference.safetensors").is_file(), "reference features cached");
    // Resumed: the cached reference is used and the next evaluation lands at step 4.
    let cfg = tiny(4, weights.to_str().unwrap());
    let mut t = Trainer::new(cfg, dir.path(), &Device::Cpu, DType::F32, true).unwrap();
    t.run(&mut |_| {}).unwrap();
    let evaluated: Vec<(u64, f64, f64)> =
        lines(dir.path()).iter().filter_map(|l| Some((l.step, l.fid?, l.kid?))).collect();
    assert_eq!(evaluated.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 4], "{evaluated:?}");
    // Noise images against digits: far apart, finite.
    assert!(evaluated.iter().all(|&(_, fid, kid)| fid.is_finite() && fid > 1.0 && kid.is_finite()), "{evaluated:?}");
    // The same EMA weights and noise give the same FID.
    let again = t.evaluate().unwrap();
    assert!((again.fid - evaluated[1].1).abs() < 1e-6 * evaluated[1].1, "{again:?} vs {evaluated:?}");
    // eval.autocast = "bf16": the same weights and noise sampled with bf16 GEMM operands give a
    // nearby FID that is not the f32 one (the samples moved by bf16's rounding, the Inception
    // network, which stays f32, did not add to it).
    let mut cfg = tiny(4, weights.to_str().unwrap());
    cfg.set("eval.autocast", "bf16").unwrap();
    let bf16 = Trainer::new(cfg, dir.path(), &Device::Cpu, DType::F32, true).unwrap().evaluate().unwrap();
    let rel = (bf16.fid - again.fid).abs() / again.fid;
    assert!(rel > 0.0 && rel < 0.05, "bf16 sampling FID {} against f32 {}", bf16.fid, again.fid);
}

#[test]
fn a_missing_network_or_reference_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut t =
        Trainer::new(tiny(2, "/nonexistent/pt_inception.pth"), dir.path(), &Device::Cpu, DType::F32, false).unwrap();
    let err = t.evaluate().unwrap_err().to_string();
    assert!(err.contains("eval.inception") && err.contains("/nonexistent/pt_inception.pth"), "{err}");

    let mut cfg = tiny(2, inception().to_str().unwrap());
    cfg.eval.reference = "/nonexistent/stats.npz".into();
    let mut t = Trainer::new(cfg, dir.path(), &Device::Cpu, DType::F32, false).unwrap();
    let err = t.evaluate().unwrap_err().to_string();
    assert!(err.contains("eval.reference") && err.contains("/nonexistent/stats.npz"), "{err}");

    let err = tiny(2, "").set("eval.sampler", "ddim").unwrap_err().to_string();
    assert!(err.contains("eval.sampler") && err.contains("dpm-solver"), "{err}");
    let err = tiny(2, "").set("eval.num_samples", "1").unwrap_err().to_string();
    assert!(err.contains("eval.num_samples = 1"), "{err}");
}
