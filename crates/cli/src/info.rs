//! `scalelong info`: what a model is made of and how its long skips are scaled.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::Args;
use scalelong_backbones::{checkpoint as weights_file, params, ModelConfig, SkipScaling, UViT, UViTConfig};
use scalelong_train::checkpoint::{self, Group};
use scalelong_train::TrainConfig;

use crate::model_spec::ModelArgs;

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Also load this checkpoint (.safetensors or .pth) and check that it fits the model; one of
    /// our training checkpoints brings its own model config.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

pub fn run(args: &InfoArgs) -> Result<()> {
    if let Some(path) = args.checkpoint.as_ref().filter(|p| checkpoint::is_training_checkpoint(p)) {
        return training_checkpoint(path, &args.model);
    }
    if let Some(path) = args.checkpoint.as_ref().filter(|p| !p.is_file()) {
        bail!("--checkpoint {}: no such file", path.display());
    }
    let cfg = args.model.resolve()?;
    print_uvit(&cfg)?;
    if let Some(path) = &args.checkpoint {
        UViT::from_checkpoint(&cfg, path, DType::F32, &Device::Cpu)?;
        println!("\ncheckpoint {} fits this model", path.display());
    }
    Ok(())
}

/// One of our training checkpoints: its model (from the config inside), step, and a check that
/// its weights and EMA weights fit that model.
fn training_checkpoint(path: &Path, model: &ModelArgs) -> Result<()> {
    let given = model.given();
    if !given.is_empty() {
        bail!(
            "{}: a scalelong training checkpoint holds its own model config; leave out {}",
            path.display(),
            given.join(", ")
        );
    }
    let ck = checkpoint::load(path, &Device::Cpu)?;
    let cfg = TrainConfig::from_toml(ck.meta("config")?, &format!("stored in {}", path.display()))
        .map_err(anyhow::Error::msg)?;
    let specs = match &cfg.model {
        ModelConfig::UViT(c) => {
            print_uvit(c)?;
            UViT::param_specs(c)?
        }
        ModelConfig::UNet2D(c) => {
            let specs = cfg.model.param_specs()?;
            println!(
                "UNet2D: {} channels, {}x{} images, blocks {:?}, skip scaling {}, {} parameters",
                c.in_channels,
                c.sample_size.unwrap_or_default(),
                c.sample_size.unwrap_or_default(),
                c.block_out_channels,
                c.scaling,
                thousands(params::count(&specs))
            );
            specs
        }
    };
    for group in [Group::Model, Group::Ema] {
        weights_file::check(&format!("{} ({} weights)", path.display(), group.prefix()), &specs, &ck.group(group))?;
    }
    println!(
        "\ntraining checkpoint {}: step {}, data {}; weights and EMA weights fit this model",
        path.display(),
        ck.meta("step")?,
        cfg.data.spec
    );
    Ok(())
}

fn print_uvit(cfg: &UViTConfig) -> Result<()> {
    let specs = UViT::param_specs(cfg)?;
    println!(
        "U-ViT: {}x{}x{} images, patch {}, width {}, depth {}, {} heads, {} tokens{}",
        cfg.in_chans,
        cfg.img_size,
        cfg.img_size,
        cfg.patch_size,
        cfg.embed_dim,
        cfg.depth,
        cfg.num_heads,
        cfg.num_tokens(),
        cfg.num_classes.map(|n| format!(", {n} classes")).unwrap_or_default()
    );
    println!("skip scaling: {}\n", cfg.scaling);
    println!("{:<14} {:>14}", "module", "parameters");
    for (module, n) in params::count_by_module(&specs) {
        println!("{module:<14} {:>14}", thousands(n));
    }
    println!("{:<14} {:>14}\n", "total", thousands(params::count(&specs)));

    let n = cfg.num_skips();
    println!("{:<6} {:<16} coefficient", "skip", "merged by");
    for i in 1..=n {
        let k = n - i; // out-blocks merge the innermost skip first
        let coef = match cfg.scaling {
            SkipScaling::Learned => "LS gate se (shared)".to_string(),
            SkipScaling::LearnedPerSkip => format!("LS gate se.{k}"),
            s => format!("{}", s.constant_coefficient(i, n).expect("constant mode")),
        };
        let place = if i == 1 {
            " (outermost)"
        } else if i == n {
            " (innermost)"
        } else {
            ""
        };
        println!("{:<6} {:<16} {coef}{place}", i, format!("out_blocks.{k}"));
    }
    Ok(())
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
