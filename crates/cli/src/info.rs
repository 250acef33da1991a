//! `scalelong info`: what a model is made of and how its long skips are scaled.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::Args;
use scalelong_backbones::params::{self, ParamSpec};
use scalelong_backbones::{checkpoint as weights_file, Architecture, ModelConfig, SkipFactor, SkipScaling};
use scalelong_train::checkpoint::{self, Group};

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
    print_model(&cfg)?;
    if let Some(path) = &args.checkpoint {
        cfg.load(path, DType::F32, &Device::Cpu)?;
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
    let ck = checkpoint::load_groups(path, &[Group::Model, Group::Ema], &Device::Cpu)?;
    let cfg = ck.config()?;
    let specs = print_model(&cfg.model)?;
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

/// The model, its parameters by module and how each long skip is scaled; returns the parameters.
fn print_model(cfg: &ModelConfig) -> Result<Vec<ParamSpec>> {
    let specs = cfg.param_specs()?;
    let classes = cfg.num_classes().map(|n| format!(", {n} classes")).unwrap_or_default();
    println!("{}{classes}", cfg.describe());
    println!("skip scaling: {}\n", cfg.scaling());
    println!("{:<14} {:>14}", "module", "parameters");
    for (module, n) in params::count_by_module(&specs) {
        println!("{module:<14} {:>14}", thousands(n));
    }
    println!("{:<14} {:>14}\n", "total", thousands(params::count(&specs)));

    let n = cfg.num_skips();
    let width = (1..=n).map(|i| cfg.merged_by(i).len()).max().unwrap_or(0).max(16);
    println!("{:<6} {:<width$} coefficient", "skip", "merged by");
    for i in 1..=n {
        let coef = match cfg.scaling().factor(i, n)? {
            SkipFactor::Constant(c) => c.to_string(),
            SkipFactor::Gate => {
                let shared = if cfg.scaling() == SkipScaling::Learned { " (shared)" } else { "" };
                format!("LS gate {}{shared}", cfg.gate_name(i).unwrap_or_default())
            }
        };
        let place = match i {
            1 => " (outermost)",
            _ if i == n => " (innermost)",
            _ => "",
        };
        println!("{:<6} {:<width$} {coef}{place}", i, cfg.merged_by(i));
    }
    Ok(specs)
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
