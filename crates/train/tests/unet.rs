//! Training a diffusers-style UNet2D: diagnostics, and fine-tuning from pretrained weights with a
//! scaling switched on.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use scalelong_backbones::Architecture;
use scalelong_train::{Event, TrainConfig, Trainer};

fn tiny_unet(scaling: &str) -> TrainConfig {
    TrainConfig::from_toml(
        &format!(
            r#"
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
scaling = "{scaling}"
[train]
batch_size = 4
max_steps = 2
warmup_steps = 1
lr = 1e-3
[checkpoint]
every = 0
keep = 1
[sample]
every = 0
n = 4
steps = 2
[diagnostics]
every = 1
val_images = 4
probe_images = 2
"#
        ),
        "tiny unet",
    )
    .unwrap()
}

#[test]
fn unet_trains_with_diagnostics_and_round_trips_its_config() {
    let cfg = tiny_unet("cs:0.5");
    assert_eq!(TrainConfig::from_toml(&cfg.to_toml(), "round trip").unwrap(), cfg);
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(cfg, dir.path(), &Device::Cpu, DType::F32, false).unwrap();
    let mut records = Vec::new();
    t.run(&mut |e| {
        if let Event::Step(r) = e {
            records.push(r.diagnostics.clone().unwrap());
        }
    })
    .unwrap();
    for d in &records {
        // Two down blocks, the mid-block, two up blocks; skips: conv_in, ResNet, downsample, ResNet.
        assert_eq!((d.block_feature_norms.len(), d.block_grad_norms.len(), d.skip_norms.len()), (5, 5, 4));
        for (i, (s, scaled)) in d.skip_norms.iter().zip(&d.scaled_skip_norms).enumerate() {
            let want = s * 0.5f64.powi(i as i32);
            assert!((scaled - want).abs() <= 1e-5 * want, "skip {}: {scaled} vs {want}", i + 1);
        }
        assert!(d.block_grad_norms.iter().all(|g| *g > 0.0) && d.val_loss.is_finite());
    }
    assert!(dir.path().join("samples/step_00000002.png").is_file());
}

#[test]
fn fine_tuning_from_pretrained_weights_with_learned_gates() {
    // "Pretrained": a plain UNet's weights, saved as diffusers would (no `se.*`).
    let dir = tempfile::tempdir().unwrap();
    let plain = Trainer::new(tiny_unet("none"), dir.path(), &Device::Cpu, DType::F32, false).unwrap();
    let mut pretrained: HashMap<String, Tensor> =
        plain.weights().into_iter().map(|(n, w)| Ok((n, (w + 0.25)?))).collect::<candle_core::Result<_>>().unwrap();
    let file = dir.path().join("diffusion_pytorch_model.safetensors");
    candle_core::safetensors::save(&pretrained, &file).unwrap();
    let mut cfg = tiny_unet("ls-per-skip");
    cfg.train.init_from = file.to_string_lossy().into_owned();
    let run = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(cfg.clone(), run.path(), &Device::Cpu, DType::F32, false).unwrap();
    let gates = t.weights().iter().filter(|(n, _)| n.starts_with("se.")).count();
    assert_eq!(gates, 4 * 4, "one two-layer gate per skip");
    for (name, w) in t.weights() {
        if let Some(p) = pretrained.get(&name) {
            let diff = (&w - p).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{name}");
        }
    }
    t.run(&mut |_| {}).unwrap();
    // A wrong shape or a missing tensor is named, with the file.
    pretrained.insert("conv_in.bias".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    pretrained.remove("conv_out.weight");
    candle_core::safetensors::save(&pretrained, &file).unwrap();
    let err = Trainer::new(cfg, tempfile::tempdir().unwrap().path(), &Device::Cpu, DType::F32, false)
        .err()
        .expect("bad weights are refused")
        .to_string();
    for want in ["train.init_from", "diffusion_pytorch_model.safetensors", "conv_in.bias", "conv_out.weight"] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}

#[test]
fn the_shipped_fine_tuning_config_is_the_ddpm_cifar10_unet() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/cifar10-ddpm-unet-finetune-cs.toml");
    let cfg = TrainConfig::read(std::path::Path::new(path)).unwrap();
    let specs = cfg.model.param_specs().unwrap();
    assert_eq!(specs.iter().map(|p| p.shape.elem_count()).sum::<usize>(), 35_746_307);
    assert_eq!(cfg.model.arch(), "unet2d");
    let mut with_dropout = cfg.clone();
    let err = with_dropout.set("model.dropout", "0.1").unwrap_err().to_string();
    assert!(err.contains("model.dropout = 0.1") && err.contains("expected 0"), "{err}");
}
