//! Which model a command works on: a preset or a config file, with command-line overrides.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::builder::TypedValueParser;
use clap::Args;
use scalelong_backbones::uvit::PRESETS;
use scalelong_backbones::{ModelConfig, SkipScaling, UViTConfig};
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

    pub fn resolve(&self) -> Result<UViTConfig> {
        let base = match (&self.preset, &self.config) {
            (Some(name), None) => UViTConfig::preset(name)?,
            (None, Some(path)) => read_config(path)?,
            (None, None) => {
                bail!("no model given: pass --preset NAME (one of {}) or --config FILE", PRESETS.join(", "))
            }
            (Some(_), Some(_)) => unreachable!("clap rejects --preset with --config"),
        };
        let cfg = match self.scaling {
            Some(s) => base.with_scaling(s),
            None => base,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn read_config(path: &Path) -> Result<UViTConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        return UViTConfig::from_official_json(&text).with_context(|| format!("in config {}", path.display()));
    }
    match TrainConfig::from_toml(&text, &path.display().to_string()).map_err(anyhow::Error::msg)?.model {
        ModelConfig::UViT(c) => Ok(c),
        ModelConfig::UNet2D(_) => bail!("{}: a UNet2D config; this command takes U-ViT configs", path.display()),
    }
}
