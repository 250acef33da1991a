//! `scalelong export` through the binary: the exported weights load in our own loaders (official
//! U-ViT arguments + state dict; a diffusers folder) and compute what the checkpoint computes.
//! `tests/fixtures/check_official_export.py` checked the same files once with torch and the
//! official code (not run here: no Python in the tests).

use std::process::{Command, Output};

mod common;
use common::{Scene, TINY};

fn scalelong(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scalelong")).args(args).output().expect("running scalelong")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn values(path: &str) -> Vec<f32> {
    candle_core::Tensor::read_npy(path).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

const TINY_UNET: &str = r#"
[model]
arch = "unet2d"
sample_size = 8
in_channels = 1
out_channels = 1
block_out_channels = [8, 16]
layers_per_block = 1
down_block_types = ["DownBlock2D", "AttnDownBlock2D"]
up_block_types = ["AttnUpBlock2D", "UpBlock2D"]
norm_num_groups = 4
attention_head_dim = 8
scaling = "none"
[train]
batch_size = 4
warmup_steps = 1
[checkpoint]
every = 0
[sample]
every = 0
n = 2
steps = 2
"#;

#[test]
fn official_export_samples_as_the_checkpoint_does() {
    let s = Scene { dir: tempfile::tempdir().unwrap() };
    let cfg = s.write("tiny.toml", TINY.replace("cs:0.5", "ls"));
    assert!(scalelong(&["train", "--config", &cfg, "--run-dir", &s.p("run"), "--max-steps", "2"]).status.success());
    let ck = s.p("run/checkpoints/step_00000002.safetensors");
    let noise = s.p("z.npy");
    candle_core::Tensor::randn(0f32, 1.0, (3, 1, 8, 8), &candle_core::Device::Cpu).unwrap().write_npy(&noise).unwrap();
    let sample = |extra: &[&str], out: &str| {
        let base = ["sample", "--init-noise", &noise, "--steps", "3", "--save-tensor", out];
        scalelong(&[&base[..], extra].concat())
    };
    let o = sample(&["--checkpoint", &ck], &s.p("ours.npy"));
    assert!(o.status.success(), "{}", stderr(&o));
    for file in ["nnet_ema.pth", "nnet_ema.safetensors"] {
        let out = s.p(file);
        let o = scalelong(&["export", &ck, "--format", "official", "--out", &out]);
        assert!(o.status.success(), "{}", stderr(&o));
        let json = s.p("nnet_ema.json");
        let o = sample(&["--checkpoint", &out, "--config", &json], &s.p(&format!("{file}.npy")));
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        assert_eq!(values(&s.p(&format!("{file}.npy"))), values(&s.p("ours.npy")), "{file}");
        // The second export meets the first's nnet_ema.json: refused without --overwrite.
        if file.ends_with(".pth") {
            std::fs::remove_file(&json).unwrap();
        }
    }
    let o = scalelong(&["export", &ck, "--format", "official", "--out", &s.p("nnet_ema.pth")]);
    assert!(!o.status.success() && stderr(&o).contains("the file exists"), "{}", stderr(&o));
    let o = scalelong(&["export", &ck, "--format", "diffusers", "--out", &s.p("d")]);
    assert!(!o.status.success() && stderr(&o).contains("use --format official"), "{}", stderr(&o));
    let o = scalelong(&["export", &ck, "--format", "official", "--out", &s.p("w.bin")]);
    assert!(!o.status.success() && stderr(&o).contains("expected a .pth or .safetensors"), "{}", stderr(&o));
}

#[test]
fn diffusers_export_is_a_folder_our_hub_loader_reads_and_scaled_skips_are_refused() {
    let s = Scene { dir: tempfile::tempdir().unwrap() };
    let cfg = s.write("unet.toml", TINY_UNET);
    assert!(scalelong(&["train", "--config", &cfg, "--run-dir", &s.p("run"), "--max-steps", "2"]).status.success());
    let ck = s.p("run/checkpoints/step_00000002.safetensors");
    let o = scalelong(&["export", &ck, "--format", "diffusers", "--out", &s.p("folder")]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The EMA weights, under diffusers' names, as the checkpoint holds them.
    let exported =
        candle_core::safetensors::load(s.p("folder/diffusion_pytorch_model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let stored = candle_core::safetensors::load(&ck, &candle_core::Device::Cpu).unwrap();
    assert!(!exported.is_empty());
    for (name, t) in &exported {
        let ema = &stored[&format!("ema.{name}")];
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            ema.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{name}"
        );
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.p("folder/config.json")).unwrap()).unwrap();
    assert_eq!(config["_class_name"], "UNet2DModel");
    let o = scalelong(&["sample", "--weights", &s.p("folder"), "-n", "2", "--steps", "2", "--out", &s.p("g.png")]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A UNet whose skips are scaled has no diffusers equivalent.
    let cfg = s.write("unet_cs.toml", TINY_UNET.replace("scaling = \"none\"", "scaling = \"cs:0.5\""));
    assert!(scalelong(&["train", "--config", &cfg, "--run-dir", &s.p("cs"), "--max-steps", "1"]).status.success());
    let o = scalelong(&[
        "export",
        &s.p("cs/checkpoints/step_00000001.safetensors"),
        "--format",
        "diffusers",
        "--out",
        &s.p("x"),
    ]);
    assert!(!o.status.success() && stderr(&o).contains("only `none` exports to diffusers"), "{}", stderr(&o));
    let o = scalelong(&["export", &ck, "--format", "official", "--out", &s.p("x.pth")]);
    assert!(!o.status.success() && stderr(&o).contains("use --format diffusers"), "{}", stderr(&o));
}
