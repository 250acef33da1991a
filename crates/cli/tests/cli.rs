//! The `scalelong` binary as a user runs it.

use std::process::{Command, Output};

mod common;
use common::{repo, TINY};

fn scalelong(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scalelong")).args(args).output().expect("running scalelong")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn info_prints_counts_and_skip_coefficients() {
    let o = scalelong(&["info", "--preset", "cifar10-uvit-s2", "--scaling", "cs:0.5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("total              44,255,328"), "{out}");
    assert!(out.contains("in_blocks          18,905,088"), "{out}");
    assert!(out.contains("1      out_blocks.5     1 (outermost)"), "{out}");
    assert!(out.contains("6      out_blocks.0     0.03125 (innermost)"), "{out}");

    let o = scalelong(&["info", "--preset", "cifar10-uvit-s2", "--scaling", "ls-per-skip"]);
    let out = stdout(&o);
    assert!(out.contains("total              44,306,310") && out.contains("LS gate se.0 (innermost)"), "{out}");
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    // The reader is gone before the first line is printed (as `scalelong info ... | true`).
    let mut child = Command::new(env!("CARGO_BIN_EXE_scalelong"))
        .args(["info", "--preset", "cifar10-uvit-s2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE, as `head` expects: {:?}", out.status);
}

#[test]
fn info_describes_unets_from_toml_and_diffusers_configs() {
    // The UNet's skips are merged by the up-block ResNets, innermost first.
    let o = scalelong(&["info", "--config", &repo("configs/cifar10-ddpm-unet-finetune-cs.toml")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("UNet2D 32x32x3") && out.contains("skip scaling: cs:0.5"), "{out}");
    assert!(out.contains("1      up_blocks.3.resnets.2 1 (outermost)"), "{out}");
    assert!(out.contains("12     up_blocks.0.resnets.0 0.00048828125 (innermost)"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("config.json");
    std::fs::write(
        &json,
        r#"{"_class_name": "UNet2DModel", "block_out_channels": [32, 64], "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "sample_size": 16, "norm_num_groups": 8, "attention_head_dim": null}"#,
    )
    .unwrap();
    let o = scalelong(&["info", "--config", json.to_str().unwrap(), "--scaling", "ls-per-skip"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("1      up_blocks.1.resnets.1 LS gate se.3 (outermost)"), "{out}");
    assert!(out.contains("4      up_blocks.0.resnets.0 LS gate se.0 (innermost)"), "{out}");
}

#[test]
fn info_reads_config_files_and_checks_checkpoints() {
    let o = scalelong(&["info", "--config", &repo("configs/mnist-uvit-cpu.toml")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("skip scaling: cs:0.5"));

    let official = r#"{"img_size": 8, "patch_size": 2, "in_chans": 3, "embed_dim": 32, "depth": 6, "num_heads": 4, "num_classes": -1, "scalelong": 0}"#;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("official.json");
    std::fs::write(&json, official).unwrap();
    let pth = repo("tests/fixtures/uvit_0_none_plain.pth");
    let o = scalelong(&["info", "--config", json.to_str().unwrap(), "--checkpoint", &pth]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("fits this model"), "{}", stdout(&o));

    // The same checkpoint against the wrong architecture names what does not fit.
    let o = scalelong(&["info", "--preset", "cifar10-uvit-s2", "--checkpoint", &pth]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("`pos_embed` has shape [1, 17, 32], expected [1, 257, 512]"), "{}", stderr(&o));
}

#[test]
fn bad_input_gives_clear_errors() {
    let o = scalelong(&["info", "--preset", "cifar10-uvit-s2", "--scaling", "cs:-1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("invalid kappa `-1`") && stderr(&o).contains("finite number > 0"), "{}", stderr(&o));

    let o = scalelong(&["info", "--preset", "cifar10-uvit-s2", "--scaling", "cs:2"]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("amplifies"), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[model]\nimg_size = 32\npatchsize = 2\n").unwrap();
    let o = scalelong(&["info", "--config", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("bad.toml") && err.contains("unknown field `patchsize`") && err.contains("`patch_size`"),
        "{err}"
    );

    let o = scalelong(&["info"]);
    assert!(!o.status.success() && stderr(&o).contains("--preset NAME"), "{}", stderr(&o));
}

#[test]
fn train_resume_and_sample_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let run = dir.path().join("run");
    let (cfg_s, run_s) = (cfg.to_str().unwrap(), run.to_str().unwrap());
    let o = scalelong(&["train", "--config", cfg_s, "--run-dir", run_s, "--max-steps", "4", "--scaling", "ls"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(run.join("checkpoints/step_00000004.safetensors").is_file());
    assert!(run.join("samples/step_00000004.png").is_file());
    let o =
        scalelong(&["train", "--config", cfg_s, "--run-dir", run_s, "--max-steps", "6", "--scaling", "ls", "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resumed"), "{}", stderr(&o));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6, "{metrics}");
    // Resuming with another architecture is refused.
    let o = scalelong(&["train", "--config", cfg_s, "--run-dir", run_s, "--max-steps", "8", "--resume"]);
    assert!(!o.status.success() && stderr(&o).contains("different model"), "{}", stderr(&o));

    let ck = run.join("checkpoints/step_00000006.safetensors");
    // `info` reads our training checkpoints: the model from the config inside, both weight sets checked.
    let o = scalelong(&["info", "--checkpoint", ck.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("skip scaling: ls") && out.contains("step 6") && out.contains("EMA weights fit"), "{out}");
    let (grid, raw) = (dir.path().join("grid.png"), dir.path().join("raw.npy"));
    let args = [
        "sample",
        "--checkpoint",
        ck.to_str().unwrap(),
        "-n",
        "4",
        "--steps",
        "3",
        "--out",
        grid.to_str().unwrap(),
        "--save-tensor",
        raw.to_str().unwrap(),
    ];
    let o = scalelong(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&grid).unwrap().width(), 2 * 10 + 2);
    let first = candle_core::Tensor::read_npy(&raw).unwrap();
    assert_eq!(first.dims(), &[4, 1, 8, 8]);
    // Given noise, sampling is reproducible value by value.
    let noise = dir.path().join("noise.npy");
    candle_core::Tensor::randn(0f32, 1.0, (3, 1, 8, 8), &candle_core::Device::Cpu).unwrap().write_npy(&noise).unwrap();
    let mut outs = Vec::new();
    for k in 0..3 {
        let out = dir.path().join(format!("from_noise_{k}.npy"));
        let mut a: Vec<&str> = args[..7].to_vec();
        let (n, o_s) = (noise.to_str().unwrap().to_string(), out.to_str().unwrap().to_string());
        a.extend([
            "--sampler",
            "euler-ode",
            "--init-noise",
            &n,
            "--save-tensor",
            &o_s,
            "--out",
            grid.to_str().unwrap(),
            "--overwrite",
        ]);
        if k == 2 {
            a.extend(["--autocast", "bf16"]);
        }
        let o = scalelong(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        outs.push(candle_core::Tensor::read_npy(&out).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    assert_eq!(outs[0].len(), 3 * 64);
    assert_eq!(outs[0], outs[1]);
    // --autocast bf16: the network's GEMM operands rounded to bf16 move the samples a little.
    let moved = outs[0].iter().zip(&outs[2]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved > 0.0 && moved < 0.1, "bf16 samples moved by {moved}");
    let o = scalelong(&[&args[..7], &["--guidance", "2"]].concat());
    assert!(!o.status.success() && stderr(&o).contains("classifier-free guidance"), "{}", stderr(&o));
}

#[test]
fn sample_writes_what_evaluators_read_batch_by_batch_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    std::fs::write(p("tiny.toml"), TINY).unwrap();
    let o = scalelong(&["train", "--config", &p("tiny.toml"), "--run-dir", &p("run"), "--max-steps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ck = p("run/checkpoints/step_00000002.safetensors");
    let sample = |n: &str, batch: &str, dir_name: &str, npz: &str| {
        let args =
            ["sample", "--checkpoint", &ck, "-n", n, "--batch-size", batch, "--steps", "3", "--sampler", "euler-sde"];
        scalelong(&[&args[..], &["--out-dir", &p(dir_name), "--npz", &p(npz)]].concat())
    };
    let o = sample("5", "2", "all", "all.npz");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!dir.path().join("samples.png").exists(), "a grid nobody asked for");
    // One PNG per image, and guided-diffusion's arr_0 (N, H, W, C) uint8 holding the same pixels.
    let npz = candle_core::Tensor::read_npz(p("all.npz")).unwrap();
    assert_eq!(npz.len(), 1);
    let (name, arr) = &npz[0];
    assert_eq!((name.as_str(), arr.dims(), arr.dtype()), ("arr_0", &[5usize, 8, 8, 1][..], candle_core::DType::U8));
    let pixels = arr.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    for i in 0..5 {
        let png = image::open(dir.path().join(format!("all/{i:06}.png"))).unwrap().to_luma8();
        assert_eq!(png.as_raw()[..], pixels[i * 64..(i + 1) * 64], "image {i}");
    }
    assert!(!dir.path().join("all/000005.png").exists());
    // Each batch is seeded on its own: the first two batches of 5 are the images of -n 4 (even
    // with the stochastic sampler).
    let o = sample("4", "2", "part", "part.npz");
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..4 {
        let name = format!("{i:06}.png");
        let (a, b) =
            (std::fs::read(dir.path().join("all").join(&name)), std::fs::read(dir.path().join("part").join(&name)));
        assert_eq!(a.unwrap(), b.unwrap(), "{name}");
    }
    // Existing outputs are refused, and replaced with --overwrite.
    let o = sample("4", "2", "part", "other.npz");
    assert!(!o.status.success() && stderr(&o).contains("the folder holds PNG files"), "{}", stderr(&o));
    let o = sample("4", "2", "new", "part.npz");
    assert!(!o.status.success() && stderr(&o).contains("part.npz: the file exists"), "{}", stderr(&o));
    let o =
        scalelong(&["sample", "--checkpoint", &ck, "-n", "2", "--steps", "2", "--out-dir", &p("part"), "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn sample_from_official_weights_and_bad_train_input() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("official.json");
    std::fs::write(&json, r#"{"img_size": 8, "patch_size": 2, "in_chans": 3, "embed_dim": 32, "depth": 6, "num_heads": 4, "num_classes": -1, "scalelong": 0}"#).unwrap();
    let pth = repo("tests/fixtures/uvit_0_none_plain.pth");
    let out = dir.path().join("official.png");
    let o = scalelong(&[
        "sample",
        "--checkpoint",
        &pth,
        "--config",
        json.to_str().unwrap(),
        "-n",
        "2",
        "--steps",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.is_file());
    let o = scalelong(&["sample", "--checkpoint", &pth]);
    assert!(!o.status.success() && stderr(&o).contains("--preset NAME or --config FILE"), "{}", stderr(&o));

    let run = dir.path().join("run");
    let o = scalelong(&["train", "--data", "/no/such/data", "--run-dir", run.to_str().unwrap(), "--max-steps", "1"]);
    assert!(
        !o.status.success() && stderr(&o).contains("/no/such/data") && stderr(&o).contains("not found"),
        "{}",
        stderr(&o)
    );
    let o = scalelong(&["train", "--set", "train.learning_rate=1", "--run-dir", run.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("unknown field `learning_rate`"), "{}", stderr(&o));
}

#[test]
fn plot_writes_a_png_and_names_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    std::fs::write(&a, "{\"step\": 10, \"loss\": 0.9}\n{\"step\": 20, \"loss\": 0.5}\n").unwrap();
    std::fs::write(&b, "{\"step\": 10, \"loss\": 0.8}\n{\"loss\": 1}\n").unwrap();
    let out = dir.path().join("loss.png");
    let spec = format!("{}=run a", a.display());
    let o = scalelong(&["plot", "--metrics", &spec, "--out", out.to_str().unwrap(), "--log-y"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&out).unwrap().width(), 900);
    let o = scalelong(&["plot", "--metrics", &spec, "--out", out.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("loss.png: the file exists"), "{}", stderr(&o));
    let out_s = out.to_str().unwrap();
    let o = scalelong(&["plot", "--metrics", b.to_str().unwrap(), "--out", out_s, "--overwrite"]);
    assert!(!o.status.success() && stderr(&o).contains("b.jsonl:2: no numeric `step`"), "{}", stderr(&o));
    // A field on some lines only (diagnostics, evaluations) plots those lines; on none, it is named.
    std::fs::write(
        &b,
        "{\"step\": 10, \"loss\": 0.8}\n{\"step\": 20, \"loss\": 0.7, \"fid\": 90}\n{\"step\": 30, \"fid\": null}\n",
    )
    .unwrap();
    let o = scalelong(&["plot", "--metrics", b.to_str().unwrap(), "--key", "fid", "--out", out_s, "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = scalelong(&["plot", "--metrics", b.to_str().unwrap(), "--key", "kid", "--out", out_s, "--overwrite"]);
    assert!(!o.status.success() && stderr(&o).contains("no `kid` values"), "{}", stderr(&o));
}

#[test]
fn study_runs_every_mode_resumes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, format!("{TINY}[diagnostics]\nevery = 2\nval_images = 4\nprobe_images = 2\n")).unwrap();
    let out = dir.path().join("study");
    let (cfg_s, out_s) = (cfg.to_str().unwrap(), out.to_str().unwrap());
    let study = |steps: &str, jobs: &str| {
        scalelong(
            &["study", "--config", cfg_s, "--out", out_s, "--modes", "none,cs", "--seeds", "2"]
                .iter()
                .copied()
                .chain(["--max-steps", steps, "--jobs", jobs])
                .collect::<Vec<_>>(),
        )
    };
    let o = study("4", "2");
    assert!(o.status.success(), "{}", stderr(&o));
    for png in ["feature_norm", "grad_norm", "loss", "val_loss", "robustness"] {
        assert_eq!(image::open(out.join(format!("{png}.png"))).unwrap().width(), 900, "{png}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| none | ") && report.contains("| cs:0.5 | "), "{report}");
    assert!(report.contains("seeds 1234, 1235") && report.contains("4 steps"), "{report}");
    // Longer runs continue where the first study stopped; finished runs are not trained again.
    let o = study("6", "1");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("to_do=4"), "{}", stderr(&o));
    let metrics = std::fs::read_to_string(out.join("runs/cs0.5-seed1235/metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());
    let o = study("6", "1");
    assert!(o.status.success() && stderr(&o).contains("to_do=0"), "{}", stderr(&o));
    // Bad input is named.
    let o = scalelong(&["study", "--config", cfg_s, "--out", out_s, "--modes", "none,cs:-2"]);
    assert!(!o.status.success() && stderr(&o).contains("cs:-2"), "{}", stderr(&o));
    let o = scalelong(&["study", "--config", cfg_s, "--out", out_s, "--set", "diagnostics.every=0"]);
    assert!(!o.status.success() && stderr(&o).contains("diagnostics.every"), "{}", stderr(&o));
}

#[test]
fn study_over_a_grid_reports_every_cell_and_counts_divergence_as_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, format!("{TINY}[diagnostics]\nevery = 2\nval_images = 4\nprobe_images = 2\n")).unwrap();
    let out = dir.path().join("scan");
    let (cfg_s, out_s) = (cfg.to_str().unwrap(), out.to_str().unwrap());
    // lr 1e30 makes every step non-finite: those runs stop after 2 and are a result, not a failure.
    let args = [
        "study",
        "--config",
        cfg_s,
        "--out",
        out_s,
        "--modes",
        "none,cs",
        "--seeds",
        "1",
        "--max-steps",
        "4",
        "--set",
        "model.depth=2,4",
        "--set",
        "train.lr=1e-3,1e30",
        "--set",
        "train.max_nonfinite=2",
        "--set",
        "train.warmup_steps=0",
        "--jobs",
        "2",
    ];
    let o = scalelong(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    for png in ["scan_val_loss", "scan_spikes", "scan_norm_growth"] {
        image::open(out.join(format!("{png}.png"))).unwrap();
    }
    assert!(out.join("runs/depth4-lr1e30-cs0.5-seed1234/metrics.jsonl").exists());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("The grid: `model.depth` in {2, 4} x `train.lr` in {1e-3, 1e30}"), "{report}");
    assert!(report.contains("| depth=2, lr=1e-3 | none | 1234 | - | "), "{report}");
    assert!(report.contains("| depth=4, lr=1e30 | cs:0.5 | 1234 | 3 | - | 2 | 0 | - | - | - |"), "{report}");
    assert!(report.contains("### depth=4, lr=1e30") && !report.contains("Not finished"), "{report}");
    // Diverged runs are finished: nothing is trained again.
    let o = scalelong(&args);
    assert!(o.status.success() && stderr(&o).contains("to_do=0"), "{}", stderr(&o));
    // A bad grid value is named.
    let o = scalelong(&["study", "--config", cfg_s, "--out", out_s, "--set", "train.lr=1e-3,fast"]);
    assert!(!o.status.success() && stderr(&o).contains("train.lr=fast"), "{}", stderr(&o));
}
