//! `scalelong fid` and `fid-stats` through the binary, with the real FID Inception weights of
//! `../shared/fid/` (or `$SCALELONG_FID_DIR`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{Scene, TINY};

fn scalelong(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scalelong")).args(args).output().expect("running scalelong")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn inception() -> String {
    match std::env::var_os("SCALELONG_FID_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fid"),
    }
    .join("pt_inception-2015-12-05.pth")
    .to_string_lossy()
    .into_owned()
}

/// The number after `label` on the line that starts with it.
fn value(out: &str, label: &str) -> f64 {
    let line = out.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label} in {out}"));
    line[label.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn fid_between_folders_statistics_datasets_and_checkpoints() {
    let s = Scene { dir: tempfile::tempdir().unwrap() };
    let net = inception();
    // Eight digits as PNGs: the folder and the dataset they came from give the same statistics.
    let ds = scalelong_data::DataSpec::EmbeddedMnist.load(1, 28).unwrap();
    std::fs::create_dir_all(s.dir.path().join("digits")).unwrap();
    for i in 0..8 {
        let img = image::GrayImage::from_raw(28, 28, ds.image(i).to_vec()).unwrap();
        img.save(s.dir.path().join(format!("digits/{i}.png"))).unwrap();
    }
    let o = scalelong(&["fid-stats", &s.p("digits"), "--out", &s.p("digits.npz"), "--inception", &net]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = scalelong(&["fid", &s.p("digits.npz"), "mnist", "--max-images", "8", "--inception", &net]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(value(&out, "FID").abs() < 1e-3, "the same images: {out}");
    assert!(out.contains("KID not computed"), "{out}");

    // A training checkpoint is sampled; against digits its FID is large, KID is reported.
    let cfg = s.write("tiny.toml", TINY);
    let o = scalelong(&["train", "--config", &cfg, "--run-dir", &s.p("run"), "--max-steps", "2"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let ck = s.p("run/checkpoints/step_00000002.safetensors");
    let args = ["fid", &ck, &s.p("digits"), "--num-samples", "8", "--steps", "3", "--inception", &net];
    let o = scalelong(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(value(&out, "FID") > 10.0 && value(&out, "KID").is_finite(), "{out}");
    // The same seed gives the same samples, so the same FID.
    let again = text(&scalelong(&args).stdout);
    assert_eq!(value(&out, "FID"), value(&again, "FID"));
    // --clip-x0 reaches the sampler: a 2-step network's clean-image predictions leave [-1, 1].
    let clipped = text(&scalelong(&[&args[..], &["--clip-x0"]].concat()).stdout);
    assert!(value(&clipped, "FID").is_finite() && value(&clipped, "FID") != value(&out, "FID"), "{clipped}");

    let o = scalelong(&["fid", &ck, "mnist", "--sampler", "ddim", "--inception", &net]);
    assert!(!o.status.success() && text(&o.stderr).contains("--sampler ddim"), "{}", text(&o.stderr));
    let o = scalelong(&["fid", &cfg, "mnist", "--inception", &net]);
    assert!(!o.status.success() && text(&o.stderr).contains("tiny.toml"), "{}", text(&o.stderr));
    let o = scalelong(&["fid", "mnist", "mnist", "--inception", &s.p("missing.pth")]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.contains("--inception") && err.contains("missing.pth"), "{err}");
    let o = scalelong(&["fid", &ck, "mnist", "--preset", "cifar10-uvit-s2", "--inception", &net]);
    assert!(!o.status.success() && text(&o.stderr).contains("--preset"), "{}", text(&o.stderr));

    // Official U-ViT weights (trained by the official code on MNIST) with their constructor arguments.
    let official = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/official-checkpoints/mnist-uvit-cs");
    let (weights, config) = (official.join("nnet_ema.pth"), official.join("config.json"));
    let (weights, config) = (weights.to_str().unwrap(), config.to_str().unwrap());
    let o = scalelong(&["fid", weights, "mnist", "--inception", &net]);
    assert!(!o.status.success() && text(&o.stderr).contains("--preset NAME or --config FILE"), "{}", text(&o.stderr));
    let o = scalelong(&[
        "fid",
        weights,
        &s.p("digits"),
        "--config",
        config,
        "--num-samples",
        "8",
        "--steps",
        "3",
        "--inception",
        &net,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(value(&out, "FID").is_finite() && value(&out, "KID").is_finite(), "{out}");
}

#[test]
fn a_study_with_eval_computes_the_reference_once_and_reports_fid() {
    let s = Scene { dir: tempfile::tempdir().unwrap() };
    let net = inception();
    let extra = format!(
        "[diagnostics]\nevery = 2\nval_images = 4\nprobe_images = 2\n[eval]\nevery = 2\nnum_samples = 4\nsteps = 2\nbatch_size = 4\nreference_images = 6\ninception = {net:?}\n"
    );
    let cfg = s.write("tiny.toml", format!("{TINY}{extra}"));
    let out = s.p("study");
    let args = ["study", "--config", &cfg, "--out", &out, "--modes", "none,cs", "--seeds", "1", "--max-steps", "2"];
    let o = scalelong(&[&args[..], &["--jobs", "2"]].concat());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let cache = "fid_reference.safetensors";
    let reference = std::fs::read(s.dir.path().join("study/reference").join(cache)).unwrap();
    for run in ["none-seed1234", "cs0.5-seed1234"] {
        let dir = s.dir.path().join("study/runs").join(run);
        assert_eq!(std::fs::read(dir.join(cache)).unwrap(), reference, "{run}");
        let log = std::fs::read_to_string(dir.join("train.log")).unwrap();
        assert!(log.contains("evaluated") && !log.contains("computing reference features"), "{log}");
    }
    let report = std::fs::read_to_string(s.dir.path().join("study/report.md")).unwrap();
    assert!(report.contains("## Sample quality (FID)") && report.contains("| cs:0.5, seed 1234 | 2: "), "{report}");
}
