//! Which model a command works on: a preset or a config file, with command-line overrides.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::builder::TypedValueParser;
use clap::Args;
use scalelong_backbones::uvit::PRESETS;
use scalelong_backbones::{Architecture, Backbone, ModelConfig, SkipScaling, UNet2DConfig, UViTConfig};
use scalelong_train::TrainConfig;

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// An official U-ViT config: cifar10-uvit-s2, celeba64-uvit-s4, imagenet64-uvit-m4, imagenet64-uvit-l4.
    #[arg(long, conflicts_with = "config", value_parser = clap::builder::PossibleValuesParser::new(PRESETS).map(String::from))]
    pub preset: Option<String>,
    /// A TOML config (configs/*.toml; its [model] table is used), or a JSON file of the official
    /// `UViT(...)` constructor arguments.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Long-skip scaling, overriding the preset or file: none, inv-sqrt2, cs:KAPPA (e.g. cs:0.5), ls, ls-per-skip.
    #[arg(long)]
    pub scaling: Option<SkipScaling>,
}

impl ModelArgs {
    /// The flags given, by name (a training checkpoint carries its own model, so none may be).
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("--preset", self.preset.is_some()),
            ("--config", self.config.is_some()),
            ("--scaling", self.scaling.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect()
    }

    /// Refuses the flags given (and `more`, other flags set) for a scalelong training checkpoint,
    /// which holds its own model config and schedule.
    pub fn refuse_for_checkpoint(&self, path: &Path, more: &[&'static str]) -> Result<()> {
        let given = [self.given(), more.to_vec()].concat();
        if !given.is_empty() {
            bail!(
                "{}: a scalelong training checkpoint holds its own model config and schedule, so {} would be \
                 ignored; leave {} out",
                path.display(),
                given.join(", "),
                if given.len() == 1 { "it" } else { "them" }
            );
        }
        Ok(())
    }

    /// The model the flags name: a preset, or a config file, with `--scaling` applied.
    pub fn resolve(&self) -> Result<ModelConfig> {
        let mut cfg = match (&self.preset, &self.config) {
            (Some(name), None) => ModelConfig::UViT(UViTConfig::preset(name)?),
            (None, Some(path)) => read_config(path)?,
            (None, None) => {
                bail!("no model given: pass --preset NAME (one of {}) or --config FILE", PRESETS.join(", "))
            }
            (Some(_), Some(_)) => unreachable!("clap rejects --preset with --config"),
        };
        if let Some(s) = self.scaling {
            cfg.set_scaling(s);
        }
        cfg.param_specs()?; // builds the model once: every check of the config, no allocation
        Ok(cfg)
    }
}

/// Official U-ViT weights (`nnet_ema.pth` or `.safetensors`), whose architecture the flags name.
/// `dtype`: the weights are cast to it.
pub fn load_official(path: &Path, model: &ModelArgs, dtype: DType, device: &Device) -> Result<(UViTConfig, Backbone)> {
    if model.preset.is_none() && model.config.is_none() {
        bail!(
            "{} is not a scalelong training checkpoint, so its architecture is unknown: pass --preset NAME or --config FILE",
            path.display()
        );
    }
    let cfg = match model.resolve()? {
        ModelConfig::UViT(c) => c,
        ModelConfig::UNet2D(_) => bail!(
            "{}: a UNet2D's weights outside a training checkpoint come with their noise schedule in a diffusers \
             folder: pass --weights DIR (or hf://OWNER/REPO) instead of --checkpoint",
            path.display()
        ),
    };
    let net = cfg.load(path, dtype, device)?;
    Ok((cfg, net.into()))
}

/// A training config's `[model]` table (TOML), the official `UViT(...)` arguments (JSON), or a
/// diffusers `config.json` (JSON with `_class_name`).
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    let source = path.display().to_string();
    if path.extension().is_some_and(|e| e == "json") {
        let diffusers = serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v.get("_class_name").is_some());
        return Ok(match diffusers {
            true => ModelConfig::UNet2D(UNet2DConfig::from_json(&text, &source)?),
            false => {
                ModelConfig::UViT(UViTConfig::from_official_json(&text).with_context(|| format!("in config {source}"))?)
            }
        });
    }
    Ok(TrainConfig::from_toml(&text, &source)?.model)
}
