//! Bad input and faults through the binary, as a user meets them: every case must exit non-zero
//! without a panic, with an error that names the file, key or flag at fault.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

mod common;
use common::{repo, run_with_deadline, Scene, TINY};

fn scalelong(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scalelong")).args(args).output().expect("running scalelong")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scene() -> Scene {
    let s = Scene { dir: tempfile::tempdir().unwrap() };
    s.write("tiny.toml", TINY);
    let o = scalelong(&args(&["train", "--config", &s.p("tiny.toml"), "--run-dir", &s.p("run"), "--max-steps", "2"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let ck = std::fs::read(s.p("run/checkpoints/step_00000002.safetensors")).unwrap();
    s.write("trunc.safetensors", &ck[..ck.len() / 2]);
    s.write("rand.pth", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>());
    s.write("rand.safetensors", (0..4096u32).map(|i| (i.wrapping_mul(40503) >> 7) as u8).collect::<Vec<_>>());
    s.write("empty.safetensors", b"");
    s.write("official.json", r#"{"img_size": 8, "patch_size": 2, "in_chans": 3, "embed_dim": 32, "depth": 6, "num_heads": 4, "num_classes": -1, "scalelong": 0}"#);
    // Official weights with one NaN.
    let dev = candle_core::Device::Cpu;
    let mut w: std::collections::HashMap<String, candle_core::Tensor> =
        candle_core::pickle::read_all(repo("tests/fixtures/uvit_0_none_plain.pth")).unwrap().into_iter().collect();
    let pos = w["pos_embed"].clone();
    let nan = candle_core::Tensor::full(f32::NAN, pos.dims(), &dev).unwrap();
    w.insert("pos_embed".into(), pos.broadcast_add(&nan.narrow(2, 0, 32).unwrap()).unwrap());
    candle_core::safetensors::save(&w, s.dir.path().join("nan_weights.safetensors")).unwrap();
    let nan_noise = candle_core::Tensor::full(f32::NAN, (2, 1, 8, 8), &dev).unwrap();
    nan_noise.write_npy(s.dir.path().join("nan_noise.npy")).unwrap();
    candle_core::Tensor::zeros((2, 3, 8, 8), candle_core::DType::F32, &dev)
        .unwrap()
        .write_npy(s.dir.path().join("rgb_noise.npy"))
        .unwrap();
    s.write("cifar_test_only/test_batch.bin", vec![0u8; 3073]);
    s.write("bad_images/a.png", b"not a png at all");
    s.write("metrics_bad.jsonl", "{not json\n");
    s
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn bad_input_and_faults_fail_clearly() {
    let s = scene();
    let (tiny, ck) = (s.p("tiny.toml"), s.p("run/checkpoints/step_00000002.safetensors"));
    let fresh = |tag: &str| s.p(&format!("fresh_{tag}"));
    let train = |cfg: &str, tag: &str, more: &[&str]| {
        [args(&["train", "--config", cfg, "--run-dir", &fresh(tag)]), args(more)].concat()
    };
    let sample = |more: &[&str]| {
        let out = if more.contains(&"--out") { vec![] } else { args(&["--out", &s.p("g.png")]) };
        [args(&["sample", "--checkpoint", &ck]), out, args(more)].concat()
    };
    let official = |file: &str, more: &[&str]| {
        [args(&["sample", "--checkpoint", file, "--config", &s.p("official.json"), "--out", &s.p("o.png")]), args(more)]
            .concat()
    };
    // (what, arguments, every piece the error must contain)
    let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
        // ---- configs: each names its key (and the file where there is one)
        (
            "unknown key",
            train(&s.config("c1.toml", "train", "learning_rate = 1"), "1", &[]),
            vec!["c1.toml", "unknown field `learning_rate`"],
        ),
        (
            "unknown section",
            train(&s.write("c2.toml", format!("{TINY}[optim]\nlr = 1\n")), "2", &[]),
            vec!["c2.toml", "unknown field `optim`"],
        ),
        ("TOML syntax", train(&s.write("c3.toml", "[model\nimg_size = 8"), "3", &[]), vec!["c3.toml"]),
        (
            "sampler unknown",
            train(&s.config("c4.toml", "sample", "sampler = \"heun\""), "4", &[]),
            vec!["c4.toml", "sample.sampler", "heun", "euler-ode"],
        ),
        (
            "sample steps 0",
            train(&s.write("c5.toml", TINY.replace("steps = 3", "steps = 0")), "5", &[]),
            vec!["c5.toml", "sample.steps = 0"],
        ),
        (
            "sample n 0",
            train(&s.write("c6.toml", TINY.replace("n = 4", "n = 0")), "6", &[]),
            vec!["c6.toml", "sample.n = 0"],
        ),
        (
            "weight decay NaN",
            train(&s.config("c7.toml", "train", "weight_decay = nan"), "7", &[]),
            vec!["c7.toml", "train.weight_decay = NaN"],
        ),
        (
            "weight decay negative",
            train(&s.config("c8.toml", "train", "weight_decay = -0.1"), "8", &[]),
            vec!["train.weight_decay = -0.1"],
        ),
        ("max_steps 0", train(&s.config("c9.toml", "train", "max_steps = 0"), "9", &[]), vec!["train.max_steps = 0"]),
        ("lr negative", train(&s.config("c10.toml", "train", "lr = -1.0"), "10", &[]), vec!["train.lr = -1"]),
        (
            "ema decay above 1",
            train(&s.config("c11.toml", "train", "ema_decay = 2.0"), "11", &[]),
            vec!["train.ema_decay = 2"],
        ),
        ("beta1 above 1", train(&s.config("c12.toml", "train", "beta1 = 1.5"), "12", &[]), vec!["train.beta1 = 1.5"]),
        (
            "grad clip negative",
            train(&s.config("c13.toml", "train", "grad_clip = -1.0"), "13", &[]),
            vec!["train.grad_clip = -1"],
        ),
        ("eps infinite", train(&s.config("c14.toml", "train", "eps = inf"), "14", &[]), vec!["train.eps = inf"]),
        ("kappa 0", train(&s.write("c15.toml", TINY.replace("cs:0.5", "cs:0")), "15", &[]), vec!["c15.toml", "kappa"]),
        (
            "heads do not divide the width",
            train(&s.write("c16.toml", TINY.replace("num_heads = 2", "num_heads = 3")), "16", &[]),
            vec!["c16.toml", "num_heads"],
        ),
        ("config missing", train(&s.p("nope.toml"), "17", &[]), vec!["nope.toml"]),
        // ---- training flags: each names its flag
        ("--lr nan", train(&tiny, "18", &["--lr", "nan"]), vec!["--lr NaN", "finite"]),
        ("--lr negative", train(&tiny, "19", &["--lr=-1"]), vec!["--lr -1"]),
        ("--batch-size 0", train(&tiny, "20", &["--batch-size", "0"]), vec!["--batch-size 0", "train.batch_size"]),
        ("--max-steps 0", train(&tiny, "21", &["--max-steps", "0"]), vec!["--max-steps 0", "train.max_steps"]),
        ("--scaling bad", train(&tiny, "22", &["--scaling", "cs:-2"]), vec!["--scaling", "kappa"]),
        ("--set without =", train(&tiny, "23", &["--set", "train.lr"]), vec!["--set train.lr", "SECTION.KEY=VALUE"]),
        (
            "--set unknown key",
            train(&tiny, "24", &["--set", "train.lrate=1"]),
            vec!["train.lrate", "unknown field `lrate`"],
        ),
        (
            "--device typo",
            train(&tiny, "34", &["--device", "gpu"]),
            vec!["gpu", "[possible values: auto, cpu, cuda, metal]"],
        ),
        (
            "--cpu with --device",
            train(&tiny, "34", &["--device", "cuda", "--cpu"]),
            vec!["--cpu", "cannot be used with"],
        ),
        ("bf16 on the CPU", train(&tiny, "34", &["--cpu", "--dtype", "bf16"]), vec!["--dtype BF16 needs a GPU"]),
        ("--resume and --overwrite", train(&tiny, "25", &["--resume", "--overwrite"]), vec!["--overwrite", "--resume"]),
        // ---- data
        ("data missing", train(&tiny, "26", &["--data", &s.p("no_such_data")]), vec!["no_such_data", "not found"]),
        (
            "CIFAR split missing",
            train(&tiny, "27", &["--data", &format!("cifar:{}", s.p("cifar_test_only"))]),
            vec!["cifar_test_only", "test split", ":test"],
        ),
        ("unreadable images", train(&tiny, "28", &["--data", &format!("folder:{}", s.p("bad_images"))]), vec!["a.png"]),
        #[cfg(not(feature = "hub"))]
        (
            "hub dataset without the feature",
            train(&tiny, "28b", &["--data", "hf:mnist"]),
            vec!["hf:mnist", "--features hub"],
        ),
        ("init-from missing", train(&tiny, "29", &["--init-from", &s.p("nope.safetensors")]), vec!["nope.safetensors"]),
        // ---- run folders
        (
            "run exists",
            args(&["train", "--config", &tiny, "--run-dir", &s.p("run")]),
            vec!["already holds a run", "--resume", "--overwrite"],
        ),
        ("resume nothing", train(&tiny, "31", &["--resume"]), vec!["--resume", "fresh_31", "does not exist"]),
        (
            "resume missing file",
            train(&tiny, "32", &["--resume", &s.p("run/checkpoints/step_00000099.safetensors")]),
            vec!["step_00000099.safetensors", "no such file"],
        ),
        ("resume truncated", train(&tiny, "33", &["--resume", &s.p("trunc.safetensors")]), vec!["trunc.safetensors"]),
        // ---- sample flags
        ("-n 0", sample(&["-n", "0"]), vec!["-n 0"]),
        ("-n huge", sample(&["-n", "100000000000"]), vec!["-n 100000000000", "memory"]),
        ("--batch-size 0", sample(&["--batch-size", "0"]), vec!["--batch-size 0"]),
        ("--steps 0", sample(&["--steps", "0", "-n", "2"]), vec!["steps must be at least 1"]),
        ("sampler unknown", sample(&["--sampler", "heun", "-n", "2"]), vec!["heun", "dpm-solver"]),
        ("--guidance nan", sample(&["--guidance", "nan", "-n", "2"]), vec!["--guidance NaN"]),
        ("--class on unconditional", sample(&["--class", "3", "-n", "2"]), vec!["--class"]),
        ("sample bf16 on the CPU", sample(&["--cpu", "--dtype", "bf16", "-n", "2"]), vec!["--dtype BF16 needs a GPU"]),
        ("--init-noise NaN", sample(&["--init-noise", &s.p("nan_noise.npy")]), vec!["nan_noise.npy", "non-finite"]),
        ("--init-noise shape", sample(&["--init-noise", &s.p("rgb_noise.npy")]), vec!["rgb_noise.npy", "shape"]),
        ("--init-noise missing", sample(&["--init-noise", &s.p("nope.npy")]), vec!["nope.npy"]),
        (
            "--preset with our checkpoint",
            sample(&["--preset", "cifar10-uvit-s2"]),
            vec!["step_00000002.safetensors", "--preset"],
        ),
        ("--scaling with our checkpoint", sample(&["--scaling", "ls"]), vec!["--scaling", "leave it out"]),
        // ---- output paths
        (
            "PNG on a full disk",
            sample(&["-n", "2", "--out", "/dev/full", "--overwrite"]),
            vec!["/dev/full", "No space left"],
        ),
        (
            "an existing grid",
            sample(&["-n", "2", "--out", "/dev/full"]),
            vec!["/dev/full: the file exists", "--overwrite"],
        ),
        (
            "npy on a full disk",
            sample(&["-n", "2", "--save-tensor", "/dev/full", "--overwrite"]),
            vec!["/dev/full", "No space left"],
        ),
        ("npz on a full disk", sample(&["-n", "2", "--npz", "/dev/full", "--overwrite"]), vec!["/dev/full"]),
        (
            "PNG in a file's folder",
            sample(&["-n", "2", "--out", &format!("{}/x.png", s.p("tiny.toml"))]),
            vec!["tiny.toml"],
        ),
        // ---- checkpoints
        ("checkpoint missing", official(&s.p("nope.pth"), &[]), vec!["nope.pth", "no such file"]),
        ("random bytes as .pth", official(&s.p("rand.pth"), &[]), vec!["rand.pth", "not a PyTorch checkpoint"]),
        (
            "random bytes as .safetensors",
            official(&s.p("rand.safetensors"), &[]),
            vec!["rand.safetensors", "not a valid safetensors file"],
        ),
        ("empty file", official(&s.p("empty.safetensors"), &[]), vec!["empty.safetensors", "0 bytes"]),
        (
            "NaN in weights",
            official(&s.p("nan_weights.safetensors"), &[]),
            vec!["nan_weights.safetensors", "`pos_embed`", "non-finite"],
        ),
        ("truncated training checkpoint", official(&s.p("trunc.safetensors"), &[]), vec!["trunc.safetensors"]),
        (
            "wrong architecture",
            args(&[
                "sample",
                "--checkpoint",
                &repo("tests/fixtures/uvit_0_none_plain.pth"),
                "--preset",
                "cifar10-uvit-s2",
            ]),
            vec!["pos_embed", "expected [1, 257, 512]"],
        ),
        (
            "unknown official key",
            args(&[
                "sample",
                "--checkpoint",
                &repo("tests/fixtures/uvit_0_none_plain.pth"),
                "--config",
                &s.write("bad.json", "{\"img_size\": 8, \"patchsize\": 2}"),
            ]),
            vec!["bad.json", "patchsize"],
        ),
        (
            "--schedule unknown",
            official(&repo("tests/fixtures/uvit_0_none_plain.pth"), &["--schedule", "cosine"]),
            vec!["--schedule", "cosine", "vp-linear"],
        ),
        // ---- info and plot
        (
            "info missing checkpoint",
            args(&["info", "--preset", "cifar10-uvit-s2", "--checkpoint", &s.p("nope.pth")]),
            vec!["nope.pth", "no such file"],
        ),
        (
            "info ours with --preset",
            args(&["info", "--preset", "cifar10-uvit-s2", "--checkpoint", &ck]),
            vec!["step_00000002.safetensors", "--preset"],
        ),
        (
            "plot missing metrics",
            args(&["plot", "--metrics", &s.p("nope.jsonl"), "--out", &s.p("p.png")]),
            vec!["nope.jsonl"],
        ),
        (
            "plot bad metrics",
            args(&["plot", "--metrics", &s.p("metrics_bad.jsonl"), "--out", &s.p("p.png")]),
            vec!["metrics_bad.jsonl"],
        ),
    ];
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for (what, a, want) in &cases {
        let Some(o) = run_with_deadline(a, Duration::from_secs(60)) else {
            failures.push(format!("{what}: still running after 60 s (the input was accepted)"));
            continue;
        };
        let err = text(&o.stderr);
        let mut problems = Vec::new();
        if o.status.success() {
            problems.push("exited 0".to_string());
        }
        if err.contains("panicked") || o.status.code() == Some(101) {
            problems.push("panicked".to_string());
        }
        if err.contains("Stack backtrace") || err.contains("stack backtrace") {
            problems.push("printed a backtrace for an error".to_string());
        }
        problems.extend(want.iter().filter(|w| !err.contains(*w)).map(|w| format!("no {w:?} in the error")));
        if !problems.is_empty() {
            failures.push(format!(
                "{what}: {}\n    stderr: {}",
                problems.join("; "),
                err.trim().replace('\n', "\n            ")
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    // Nothing was written where it was refused.
    assert!(!Path::new(&fresh("1")).join("metrics.jsonl").exists());
}
