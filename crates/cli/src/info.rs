//! `scalelong info`: what a model is made of and how its long skips are scaled.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device};
use clap::Args;
use scalelong_backbones::{params, SkipScaling, UViT};

use crate::model_spec::ModelArgs;

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Also load this checkpoint (.safetensors or .pth) and check that it fits the model.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

pub fn run(args: &InfoArgs) -> Result<()> {
    let cfg = args.model.resolve()?;
    let specs = UViT::param_specs(&cfg)?;
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

    if let Some(path) = &args.checkpoint {
        UViT::from_checkpoint(&cfg, path, DType::F32, &Device::Cpu)?;
        println!("\ncheckpoint {} fits this model", path.display());
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
