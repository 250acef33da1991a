//! `scalelong export`: a training checkpoint's weights as other tools load them: a diffusers
//! `UNet2DModel` folder, or the official U-ViT code's state dict (`torch.save`'s `.pth`, or
//! `.safetensors`) with its `UViT(...)` arguments beside it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use scalelong_backbones::{torch_save, ModelConfig};
use scalelong_train::checkpoint::{self, Group};
use scalelong_train::config::NoiseSchedule;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A folder with config.json, diffusion_pytorch_model.safetensors and scheduler_config.json,
    /// for `UNet2DModel.from_pretrained` (UNet runs with unscaled skips).
    Diffusers,
    /// The official code's state dict: OUT ending in .pth (as torch.save writes it) or
    /// .safetensors, and its UViT(...) arguments in OUT with the extension .json (U-ViT runs).
    Official,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A training checkpoint (runs/NAME/checkpoints/step_N.safetensors).
    checkpoint: PathBuf,
    #[arg(long, value_enum)]
    format: Format,
    /// The folder (diffusers) or the weights file (official).
    #[arg(long)]
    out: PathBuf,
    /// Export the trained weights instead of their EMA.
    #[arg(long)]
    no_ema: bool,
    /// Replace existing output files.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    let path = &args.checkpoint;
    if !checkpoint::is_training_checkpoint(path) {
        bail!("{}: not a scalelong training checkpoint (checkpoints/step_N.safetensors of a run)", path.display());
    }
    let group = if args.no_ema { Group::Model } else { Group::Ema };
    let ck = checkpoint::load_groups(path, &[group], &Device::Cpu)?;
    let cfg = ck.config()?;
    let weights = ck.group(group);
    let which = if args.no_ema { "trained" } else { "EMA" };
    match (args.format, &cfg.model) {
        (Format::Diffusers, ModelConfig::UNet2D(unet)) => {
            let json =
                unet.to_diffusers_json().with_context(|| format!("exporting {} to diffusers", path.display()))?;
            if cfg.train.schedule != NoiseSchedule::VpLinear {
                bail!(
                    "{}: trained with the {:?} schedule; diffusers' DDPMScheduler here is the linear one (vp-linear) only",
                    path.display(),
                    cfg.train.schedule
                );
            }
            let dir = &args.out;
            let files =
                ["config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"].map(|f| dir.join(f));
            refuse_existing(&files, args.overwrite)?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            write(&files[0], json.as_bytes())?;
            candle_core::safetensors::save(&weights, &files[1])
                .with_context(|| format!("writing {}", files[1].display()))?;
            // The VP-linear SDE (beta 0.1..20) the model was trained on, in DDPM's 1000 discrete steps.
            let scheduler = serde_json::json!({
                "_class_name": "DDPMScheduler",
                "num_train_timesteps": 1000,
                "beta_start": 0.0001,
                "beta_end": 0.02,
                "beta_schedule": "linear",
                "prediction_type": "epsilon",
                "clip_sample": false,
            });
            write(&files[2], serde_json::to_string_pretty(&scheduler)?.as_bytes())?;
            println!("wrote {} ({} {which} tensors)", dir.display(), weights.len());
        }
        (Format::Official, ModelConfig::UViT(uvit)) => {
            let json = uvit
                .to_official_json()
                .with_context(|| format!("exporting {} to the official format", path.display()))?;
            let out = &args.out;
            let config = out.with_extension("json");
            refuse_existing(&[out.clone(), config.clone()], args.overwrite)?;
            match out.extension().and_then(|e| e.to_str()) {
                Some("pth") => torch_save::write_pth(out, &sorted(&weights))?,
                Some("safetensors") => candle_core::safetensors::save(&weights, out)
                    .with_context(|| format!("writing {}", out.display()))?,
                _ => bail!("--out {}: expected a .pth or .safetensors file", out.display()),
            }
            write(&config, json.as_bytes())?;
            println!(
                "wrote {} ({} {which} tensors) and its UViT(...) arguments {}",
                out.display(),
                weights.len(),
                config.display()
            );
        }
        (Format::Diffusers, ModelConfig::UViT(_)) => {
            bail!("{}: a U-ViT has no diffusers model class: use --format official", path.display())
        }
        (Format::Official, ModelConfig::UNet2D(_)) => {
            bail!("{}: the official code has no conv UNet: use --format diffusers", path.display())
        }
    }
    Ok(())
}

fn sorted(weights: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = weights.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn refuse_existing(files: &[PathBuf], overwrite: bool) -> Result<()> {
    files.iter().try_for_each(|f| crate::output::refuse_existing("--out", f, overwrite))
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
