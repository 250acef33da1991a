use candle_core::{DType, Device, IndexOp, Tensor, Var};

use crate::Architecture;

use super::*;

/// google/ddpm-cifar10-32's config.json.
const DDPM_CIFAR10: &str = r#"{
  "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4",
  "act_fn": "silu", "attention_head_dim": null, "block_out_channels": [128, 256, 256, 256],
  "center_input_sample": false,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
  "downsample_padding": 0, "flip_sin_to_cos": false, "freq_shift": 1, "in_channels": 3,
  "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32,
  "out_channels": 3, "sample_size": 32, "time_embedding_type": "positional",
  "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
}"#;

fn count(cfg: &UNet2DConfig) -> usize {
    cfg.param_specs().unwrap().iter().map(|p| p.shape.elem_count()).sum()
}

#[test]
fn ddpm_cifar10_layout() {
    let cfg = UNet2DConfig::from_json(DDPM_CIFAR10, "test").unwrap();
    assert_eq!(cfg.skip_channels(), [128, 128, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256]);
    // The published parameter count of the DDPM CIFAR-10 UNet (diffusers).
    assert_eq!(count(&cfg), 35_746_307);
    // LS per skip adds a channel gate of hidden width C / 16 per skip.
    let ls = cfg.clone().with_scaling(SkipScaling::LearnedPerSkip);
    let gate = |c: usize| 2 * c * (c / 16) + c / 16 + c;
    assert_eq!(count(&ls) - count(&cfg), 4 * gate(128) + 8 * gate(256));
    // One shared gate cannot serve skips of different widths.
    let err = cfg.clone().with_scaling(SkipScaling::Learned).validate().unwrap_err().to_string();
    assert!(err.contains("[128, 128, 128, 128, 256") && err.contains("ls-per-skip"), "{err}");
}

#[test]
fn diffusers_config_round_trips_and_scaled_skips_are_refused() {
    let cfg = UNet2DConfig::from_json(DDPM_CIFAR10, "test").unwrap();
    let json = cfg.to_diffusers_json().unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["_class_name"], "UNet2DModel");
    assert!(v.get("scaling").is_none(), "{json}");
    let back = UNet2DConfig::from_json(&json, "exported").unwrap();
    assert_eq!(
        (back.block_out_channels, back.attention_head_dim),
        (cfg.block_out_channels.clone(), cfg.attention_head_dim)
    );
    let err = cfg.with_scaling(SkipScaling::Constant { kappa: 0.5 }).to_diffusers_json().unwrap_err().to_string();
    assert!(err.contains("cs:0.5") && err.contains("only `none` exports"), "{err}");
}

#[test]
fn unsupported_configs_are_named() {
    let bad = DDPM_CIFAR10.replace("\"AttnUpBlock2D\"", "\"CrossAttnUpBlock2D\"");
    let err = UNet2DConfig::from_json(&bad, "x/config.json").unwrap_err().to_string();
    assert!(err.contains("x/config.json") && err.contains("CrossAttnUpBlock2D") && err.contains("UpBlock2D"), "{err}");
    let bad = DDPM_CIFAR10.replace("\"positional\"", "\"fourier\"");
    let err = UNet2DConfig::from_json(&bad, "c").unwrap_err().to_string();
    assert!(err.contains("time_embedding_type") && err.contains("fourier"), "{err}");
    let bad = DDPM_CIFAR10.replace("\"act_fn\"", "\"activation\"");
    let err = UNet2DConfig::from_json(&bad, "c").unwrap_err().to_string();
    assert!(err.contains("unknown field `activation`"), "{err}");
}

#[test]
fn nearest_upsample_and_its_gradient() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::arange(0f32, 8.0, &dev)?.reshape((1, 2, 2, 2))?)?;
    let up = upsample_nearest2x(x.as_tensor())?;
    assert_eq!(
        up.i((0, 0))?.to_vec2::<f32>()?,
        [[0., 0., 1., 1.], [0., 0., 1., 1.], [2., 2., 3., 3.], [2., 2., 3., 3.]]
    );
    // The input is used twice: each use's gradient must add up (4 from the upsample, 1 direct).
    let probe = Tensor::ones((1, 2, 4, 4), DType::F32, &dev)?;
    let loss = ((up * probe)?.sum_all()? + x.as_tensor().sum_all()?)?;
    let g = loss.backward()?.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(g, vec![5.0; 8]);
    Ok(())
}
