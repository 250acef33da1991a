//! `scalelong sample`: images from a trained or official model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use clap::Args;
use rand::SeedableRng;
use scalelong_backbones::{UViT, UViTConfig};
use scalelong_diffusion::{noise, Schedule, VpSde};
use scalelong_train::sampling::{self, Conditioning};
use scalelong_train::{checkpoint, TrainConfig};

use crate::model_spec::ModelArgs;

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A checkpoint: ours (checkpoints/step_N.safetensors, architecture inside), or official U-ViT
    /// weights (nnet_ema.pth or .safetensors) with --preset or --config.
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// dpm-solver (DPM-Solver fast), euler-ode (probability-flow ODE) or euler-sde (reverse SDE).
    #[arg(long, default_value = "dpm-solver")]
    sampler: String,
    /// Network evaluations (DPM-Solver) or steps (Euler).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Number of images.
    #[arg(short = 'n', long = "num", default_value_t = 64)]
    n: usize,
    /// Where the PNG grid goes.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Class label for class-conditional models (default: cycle through the classes).
    #[arg(long = "class")]
    class: Option<u32>,
    /// Classifier-free guidance scale (models trained with train.p_uncond > 0).
    #[arg(long)]
    guidance: Option<f64>,
    /// Start from this noise (.npy or .safetensors with one tensor, (N, C, H, W); N replaces -n).
    #[arg(long)]
    init_noise: Option<PathBuf>,
    /// Also write the raw samples (N, C, H, W) as .npy, to compare with another implementation.
    #[arg(long)]
    save_tensor: Option<PathBuf>,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Clip the predicted clean image to [-1, 1] at every step (DDPM's clip_denoised; not in the
    /// official samplers; it keeps samples of briefly trained models in range, nothing more).
    #[arg(long)]
    clip_x0: bool,
    /// Use the trained weights instead of their EMA (our checkpoints).
    #[arg(long)]
    no_ema: bool,
    /// Noise schedule of official weights: vp-linear (the official models) or vp-cosine.
    #[arg(long, default_value = "vp-linear")]
    schedule: String,
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

struct Loaded {
    model: UViT,
    sde: VpSde,
    null_label: Option<u32>,
}

fn load(args: &SampleArgs, device: &Device) -> Result<Loaded> {
    if checkpoint::is_training_checkpoint(&args.checkpoint) {
        let ck = checkpoint::load(&args.checkpoint, device)?;
        let cfg = TrainConfig::from_toml(ck.meta("config")?, &args.checkpoint.display().to_string())
            .map_err(anyhow::Error::msg)?;
        let weights: HashMap<String, Tensor> = ck.group(if args.no_ema { "model" } else { "ema" });
        let model = UViT::new(&cfg.model, VarBuilder::from_tensors(weights, DType::F32, device))?;
        let null_label = ck.meta("null_label").ok().and_then(|v| v.parse().ok());
        return Ok(Loaded { model, sde: cfg.train.schedule.sde(), null_label });
    }
    if args.model.preset.is_none() && args.model.config.is_none() {
        bail!(
            "{} is not a scalelong training checkpoint, so its architecture is unknown: pass --preset NAME or --config FILE",
            args.checkpoint.display()
        );
    }
    let cfg: UViTConfig = args.model.resolve()?;
    let model = UViT::from_checkpoint(&cfg, &args.checkpoint, DType::F32, device)?;
    let sde = match args.schedule.as_str() {
        "vp-linear" => VpSde::LINEAR,
        "vp-cosine" => VpSde::COSINE,
        s => bail!("--schedule {s}: expected vp-linear or vp-cosine"),
    };
    Ok(Loaded { model, sde, null_label: None })
}

fn read_noise(path: &Path, device: &Device) -> Result<Tensor> {
    let t = if path.extension().is_some_and(|e| e == "npy") {
        Tensor::read_npy(path).with_context(|| format!("reading {}", path.display()))?
    } else {
        let all =
            candle_core::safetensors::load(path, device).with_context(|| format!("reading {}", path.display()))?;
        if all.len() != 1 {
            bail!("{}: expected exactly one tensor, found {}", path.display(), all.len());
        }
        all.into_values().next().expect("one tensor")
    };
    Ok(t.to_dtype(DType::F32)?.to_device(device)?)
}

pub fn run(args: &SampleArgs) -> Result<()> {
    let device = crate::device::device(&args.device)?;
    let Loaded { model, sde, null_label } = load(args, &device)?;
    let cfg = model.config().clone();
    let shape = (args.n, cfg.in_chans, cfg.img_size, cfg.img_size);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let x = match &args.init_noise {
        Some(p) => {
            let t = read_noise(p, &device)?;
            if t.rank() != 4 || t.dims()[1..] != [shape.1, shape.2, shape.3] {
                bail!(
                    "{}: noise has shape {:?}, expected (N, {}, {}, {})",
                    p.display(),
                    t.dims(),
                    shape.1,
                    shape.2,
                    shape.3
                );
            }
            t
        }
        None => noise::randn(shape, DType::F32, &device, &mut rng)?,
    };
    let n = x.dim(0)?;
    let labels = match (cfg.num_classes, args.class) {
        (None, Some(_)) => bail!("--class given but the model is unconditional"),
        (None, None) => None,
        (Some(k), Some(c)) if c as usize >= k => bail!("--class {c}: the model has classes 0..{k}"),
        (Some(_), Some(c)) => Some(Tensor::full(c, n, &device)?),
        (Some(k), None) => {
            let real = null_label.map_or(k, |l| l as usize) as u32;
            Some(Tensor::new((0..n as u32).map(|i| i % real).collect::<Vec<_>>(), &device)?)
        }
    };
    let guidance = match (args.guidance, null_label) {
        (None, _) => None,
        (Some(s), Some(null)) => Some((s, null)),
        (Some(_), None) => bail!("--guidance needs a model trained for classifier-free guidance (train.p_uncond > 0)"),
    };
    let sampler = sampling::vp_sampler(&args.sampler, args.steps, sde)?;
    let started = std::time::Instant::now();
    let images = sampling::sample(
        &model,
        sampler.as_ref(),
        &x,
        &Conditioning { labels, guidance, clip_x0: args.clip_x0.then_some(Schedule::Vp(sde)) },
        &mut rng,
    )?;
    tracing::info!(images = n, seconds = started.elapsed().as_secs_f64(), "sampled");
    let cols = (n as f64).sqrt().ceil() as usize;
    scalelong_data::save_grid(&images, &args.out, cols)?;
    println!("wrote {}", args.out.display());
    if let Some(p) = &args.save_tensor {
        images.write_npy(p).with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
