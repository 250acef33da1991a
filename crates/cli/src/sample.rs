//! `scalelong sample`: images from a trained or official model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use scalelong_backbones::{weights, Architecture, Backbone, UNet2DConfig};
use scalelong_diffusion::{SamplerKind, Schedule, SchedulerConfig};
use scalelong_train::checkpoint::{self, Group};
use scalelong_train::config::{Autocast, NoiseSchedule};
use scalelong_train::evaluation::{self, Labels, SampleSpec};

use crate::device::{DeviceOpts, DtypeArg};
use crate::model_spec::ModelArgs;
use crate::sample_out::Outputs;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A checkpoint: ours (checkpoints/step_N.safetensors, architecture inside), or official U-ViT
    /// weights (nnet_ema.pth or .safetensors) with --preset or --config.
    #[arg(long, required_unless_present = "weights", conflicts_with = "weights")]
    checkpoint: Option<PathBuf>,
    /// Pretrained diffusers UNet2DModel weights: hf://OWNER/REPO[@REVISION][/SUBFOLDER] (through the
    /// Hugging Face cache, HF_HOME / HF_HUB_CACHE), or a folder with config.json and
    /// diffusion_pytorch_model.safetensors. --scaling applies a constant scaling to their skips.
    #[arg(long)]
    weights: Option<String>,
    /// Never touch the network: use only the Hugging Face cache (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    model: ModelArgs,
    /// VP-SDE models (U-ViT): dpm-solver (default), euler-ode or euler-sde. Discrete-schedule
    /// models (diffusers UNets): ddim (default), dpm-solver++ or ddpm.
    #[arg(long, value_parser = crate::device::sampler_parser())]
    sampler: Option<SamplerKind>,
    /// Network evaluations (DPM-Solver) or steps (Euler).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Number of images.
    #[arg(short = 'n', long = "num", default_value_t = 64)]
    n: usize,
    /// Images per sampler call. Batch k's noise comes from stream k of the seed, so a batch is the
    /// same image for image whatever -n is (10k samples can be drawn in parts).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// A PNG grid of the samples (the default output: samples.png when no other is asked for).
    #[arg(long)]
    out: Option<PathBuf>,
    /// One PNG per image, 000000.png, 000001.png, ... (what pytorch-fid, clean-fid and
    /// torch-fidelity read); written batch by batch.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// The samples as guided-diffusion's evaluator reads them: an .npz holding arr_0, (N, H, W, C)
    /// uint8.
    #[arg(long)]
    npz: Option<PathBuf>,
    /// Replace existing output files.
    #[arg(long)]
    overwrite: bool,
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
    /// Seed of the noise (of every batch: see --batch-size).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Clip the predicted clean image to [-1, 1] at every step (DDPM's clip_denoised; not in the
    /// official samplers; it keeps samples of briefly trained models in range, nothing more).
    #[arg(long)]
    clip_x0: bool,
    /// Use the trained weights instead of their EMA (our checkpoints).
    #[arg(long)]
    no_ema: bool,
    /// Noise schedule of official weights: vp-linear (the official models; default) or vp-cosine.
    #[arg(long, value_parser = crate::device::schedule_parser())]
    schedule: Option<NoiseSchedule>,
    #[command(flatten)]
    device: DeviceOpts,
    /// The network's weights and activations (the sampler's state stays f32).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
    /// `bf16`: the network's GEMMs with bf16 operands and f32 sums, weights and activations f32
    /// (as `torch.autocast`; on AMX tiles where the CPU has them, else slower than `off`).
    #[arg(long, value_parser = crate::device::autocast_parser(), default_value = "off")]
    autocast: Autocast,
}

struct Loaded {
    model: Backbone,
    schedule: Schedule,
    /// A diffusers folder's scheduler config: how its discrete samplers are set up.
    scheduler: Option<SchedulerConfig>,
    null_label: Option<u32>,
}

fn load(args: &SampleArgs, device: &Device) -> Result<Loaded> {
    let dtype = args.dtype.dtype();
    let Some(checkpoint) = &args.checkpoint else {
        let spec = args.weights.as_deref().expect("clap requires --checkpoint or --weights");
        return load_diffusers(spec, args, device);
    };
    if !checkpoint.is_file() {
        bail!("--checkpoint {}: no such file", checkpoint.display());
    }
    if checkpoint::is_training_checkpoint(checkpoint) {
        let schedule: &[&str] = if args.schedule.is_some() { &["--schedule"] } else { &[] };
        args.model.refuse_for_checkpoint(checkpoint, schedule)?;
        let group = if args.no_ema { Group::Model } else { Group::Ema };
        let ck = checkpoint::load_groups(checkpoint, &[group], device)?;
        let cfg = ck.config()?;
        let model = ck.model(&cfg, group, dtype, device)?;
        let null_label = ck.meta("null_label").ok().and_then(|v| v.parse().ok());
        return Ok(Loaded { model, schedule: Schedule::Vp(cfg.train.schedule.sde()), scheduler: None, null_label });
    }
    let (_, model) = crate::model_spec::load_official(checkpoint, &args.model, dtype, device)?;
    let sde = args.schedule.unwrap_or(NoiseSchedule::VpLinear).sde();
    Ok(Loaded { model, schedule: Schedule::Vp(sde), scheduler: None, null_label: None })
}

/// A diffusers UNet2DModel and its noise schedule (scheduler_config.json, or DDPM's linear one).
fn load_diffusers(spec: &str, args: &SampleArgs, device: &Device) -> Result<Loaded> {
    let files = weights::resolve(spec, weights::offline_from_env(args.offline))?;
    let text = std::fs::read_to_string(&files.config).with_context(|| format!("reading {}", files.config.display()))?;
    let class: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", files.config.display()))?;
    if let Some(name) = class["_class_name"].as_str().filter(|n| *n != "UNet2DModel") {
        bail!("{}: `_class_name` = {name} is not supported: expected UNet2DModel", files.config.display());
    }
    let mut cfg = UNet2DConfig::from_json(&text, &files.config.display().to_string())?;
    if let Some(s) = args.model.scaling {
        cfg = cfg.with_scaling(s);
        cfg.validate()?;
    }
    let model = cfg.load(&files.weights, args.dtype.dtype(), device)?;
    let scheduler = match &files.scheduler {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            SchedulerConfig::from_json(&text, &p.display().to_string())?
        }
        None => SchedulerConfig::ddpm_default(),
    };
    let schedule = scheduler.schedule()?;
    tracing::info!(config = %files.config.display(), weights = %files.weights.display(), steps = schedule.len(), "loaded UNet2DModel");
    Ok(Loaded {
        model: model.into(),
        schedule: Schedule::Discrete(schedule),
        scheduler: Some(scheduler),
        null_label: None,
    })
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
    let t = t.to_dtype(DType::F32)?;
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!("{}: the noise holds a non-finite value ({} at flat index {i})", path.display(), values[i]);
    }
    Ok(t.to_device(device)?)
}

/// Bytes of memory available to this process (Linux: MemAvailable), if known.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Refuses a request whose samples (f32) and grid (RGB) cannot fit in memory, before allocating.
fn check_fits(n: usize, c: usize, size: usize) -> Result<()> {
    let bytes = (n as u128) * (c as u128) * (size as u128).pow(2) * 4 + (n as u128) * 3 * (size as u128 + 2).pow(2);
    let side = ((n as f64).sqrt().ceil() as u128) * (size as u128 + 2) + 2;
    if side > u32::MAX as u128 / 2 {
        bail!("-n {n}: a grid of {n} images of {size}x{size} is too large for a PNG; sample fewer");
    }
    if let Some(avail) = available_memory().filter(|&a| bytes > a as u128) {
        bail!(
            "-n {n}: the samples and their grid need about {:.1} GB of memory, more than the {:.1} GB available; \
             sample fewer images per run (vary --seed across runs)",
            bytes as f64 / 1e9,
            avail as f64 / 1e9
        );
    }
    Ok(())
}

pub fn run(args: &SampleArgs) -> Result<()> {
    let device = args.device.device()?;
    args.dtype.check(&device)?;
    let Loaded { model, schedule, scheduler, null_label } = load(args, &device)?;
    let size = model.image_size().context("the model's config has no sample_size")?;
    if args.n == 0 || args.batch_size == 0 {
        bail!("-n {} and --batch-size {}: both must be at least 1", args.n, args.batch_size);
    }
    if let Some(g) = args.guidance.filter(|g| !g.is_finite()) {
        bail!("--guidance {g}: expected a finite number");
    }
    let nothing_else = args.out_dir.is_none() && args.npz.is_none() && args.save_tensor.is_none();
    let grid = args.out.clone().or_else(|| nothing_else.then(|| PathBuf::from("samples.png")));
    let mut outputs =
        Outputs::new(grid, args.out_dir.clone(), args.npz.clone(), args.save_tensor.clone(), args.overwrite)?;
    let channels = model.in_channels();
    let init_noise = match &args.init_noise {
        Some(p) => {
            let t = read_noise(p, &device)?;
            if t.rank() != 4 || t.dims()[1..] != [channels, size, size] {
                bail!("{}: noise has shape {:?}, expected (N, {channels}, {size}, {size})", p.display(), t.dims());
            }
            Some(t)
        }
        None => None,
    };
    let n = init_noise.as_ref().map_or(Ok(args.n), |t| t.dim(0))?;
    if init_noise.is_none() && outputs.keeps_samples() {
        check_fits(n, channels, size)?;
    }
    let labels = match (model.num_classes(), args.class) {
        (None, Some(_)) => bail!("--class given but the model is unconditional"),
        (None, None) => Labels::None,
        (Some(k), Some(c)) if c as usize >= k => bail!("--class {c}: the model has classes 0..{k}"),
        (Some(_), Some(c)) => Labels::Fixed(c),
        (Some(k), None) => Labels::Cycle(null_label.map_or(k, |l| l as usize)),
    };
    let guidance = match (args.guidance, null_label) {
        (None, _) => None,
        (Some(s), Some(null)) => Some((s, null)),
        (Some(_), None) => bail!("--guidance needs a model trained for classifier-free guidance (train.p_uncond > 0)"),
    };
    let kind = args.sampler.unwrap_or_else(|| SamplerKind::default_for(&schedule));
    let sampler = match &scheduler {
        Some(config) => config.sampler(kind, args.steps)?,
        None => kind.build(args.steps, &schedule)?,
    };
    let spec = SampleSpec {
        n,
        batch_size: args.batch_size,
        channels,
        size,
        seed: args.seed,
        labels,
        guidance,
        clip_x0: args.clip_x0.then_some(schedule.clone()),
        init_noise,
        autocast: args.autocast,
    };
    let started = std::time::Instant::now();
    let bar = ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} images, {eta} left")
            .expect("valid template"),
    );
    evaluation::sample_batches(&model, sampler.as_ref(), &spec, &device, |batch, done| {
        outputs.take(batch).map_err(candle_core::Error::wrap)?;
        bar.set_position(done as u64);
        Ok(())
    })?;
    bar.finish_and_clear();
    tracing::info!(images = n, seconds = started.elapsed().as_secs_f64(), "sampled");
    outputs.finish()?;
    Ok(())
}
