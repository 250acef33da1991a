//! Pretrained diffusers weights through the binary, from a Hugging Face cache made offline.

use std::path::Path;
use std::process::{Command, Output};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A Hugging Face cache (standard layout) holding one diffusers UNet made from a parity fixture.
fn hub_cache(root: &Path) -> String {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity/unet_0_cs.safetensors");
    let parity = std::env::var("SCALELONG_PARITY_DIR").map(std::path::PathBuf::from).ok();
    let fixture = parity.map(|d| d.join("unet_0_cs.safetensors")).unwrap_or(fixture);
    let bytes = std::fs::read(&fixture).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["config"]).unwrap();
    for k in ["scaling", "kappa", "skips"] {
        config.as_object_mut().unwrap().remove(k);
    }
    config["_class_name"] = "UNet2DModel".into();
    let all = candle_core::safetensors::load(&fixture, &candle_core::Device::Cpu).unwrap();
    let weights: std::collections::HashMap<String, candle_core::Tensor> =
        all.into_iter().filter_map(|(k, v)| k.strip_prefix("model.").map(|n| (n.to_string(), v))).collect();
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let repo = root.join("models--scalelong-test--tiny-unet");
    let snap = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), rev).unwrap();
    std::fs::write(snap.join("config.json"), config.to_string()).unwrap();
    candle_core::safetensors::save(&weights, snap.join("diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(
        snap.join("scheduler_config.json"),
        r#"{"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 1000}"#,
    )
    .unwrap();
    snap.to_string_lossy().into_owned()
}

#[test]
fn sample_pretrained_unet_from_the_hub_cache_offline() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let snapshot = hub_cache(&cache);
    let run = |weights: &str, out: &Path, cache: &Path, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_scalelong"))
            .args(["sample", "--weights", weights, "-n", "2", "--steps", "3", "--out", out.to_str().unwrap()])
            .args(extra)
            .env("HF_HUB_CACHE", cache)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
    let o = run(
        "hf://scalelong-test/tiny-unet",
        &dir.path().join("a.png"),
        &cache,
        &["--save-tensor", a.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(dir.path().join("a.png")).unwrap().width(), 2 * 18 + 2);
    // The same files given as a local folder sample the same values; a pinned revision works too.
    let o = run(&snapshot, &dir.path().join("b.png"), &cache, &["--save-tensor", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let read = |p: &Path| candle_core::Tensor::read_npy(p).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(read(&a), read(&b));
    let pinned = "hf://scalelong-test/tiny-unet@0123456789abcdef0123456789abcdef01234567";
    assert!(run(pinned, &dir.path().join("c.png"), &cache, &["--sampler", "dpm-solver++"]).status.success());
    // Not in the cache and offline: the missing file and the way to fetch it are named.
    let o = run("hf://google/ddpm-cifar10-32", &dir.path().join("d.png"), &cache, &[]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("config.json") && e.contains("not in the Hugging Face cache"), "{e}");
    // A sampler of the other family is refused by name.
    let o = run("hf://scalelong-test/tiny-unet", &dir.path().join("e.png"), &cache, &["--sampler", "dpm-solver"]);
    assert!(!o.status.success() && stderr(&o).contains("ddim"), "{}", stderr(&o));

    // Fine-tuning the pretrained UNet with CS switched on, from the cache, offline.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&snapshot).join("config.json")).unwrap()).unwrap();
    let mut model = toml::Table::new();
    model.insert("arch".into(), "unet2d".into());
    for (k, v) in config.as_object().unwrap() {
        if !v.is_null() && !k.starts_with('_') {
            model.insert(k.clone(), toml::Value::try_from(v).unwrap());
        }
    }
    let toml_cfg = format!(
        "[model]\n{}\n[train]\nbatch_size = 2\nwarmup_steps = 1\n[checkpoint]\nevery = 0\n[sample]\nevery = 0\nn = 1\nsteps = 2\n",
        toml::to_string(&model).unwrap()
    );
    let cfg = dir.path().join("finetune.toml");
    std::fs::write(&cfg, toml_cfg).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_scalelong"))
        .args(["train", "--config", cfg.to_str().unwrap(), "--run-dir"])
        .arg(dir.path().join("ft"))
        .args(["--init-from", "hf://scalelong-test/tiny-unet", "--scaling", "cs:0.5", "--max-steps", "2"])
        .env("HF_HUB_CACHE", &cache)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("initialised from pretrained weights"), "{}", stderr(&o));
    assert!(dir.path().join("ft/checkpoints/step_00000002.safetensors").is_file());
}
