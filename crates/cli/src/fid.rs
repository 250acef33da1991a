//! `scalelong fid A B` and `scalelong fid-stats SOURCE --out FILE`: FID and KID as pytorch-fid
//! computes them, between folders of images, statistics files, datasets and our checkpoints.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use scalelong_backbones::{Architecture, Backbone, ModelConfig};
use scalelong_data::DataSpec;
use scalelong_diffusion::{SamplerKind, Schedule};
use scalelong_eval::{frechet_distance, images, kid, weights, FidInception, Stats};
use scalelong_train::checkpoint::{self, Group};
use scalelong_train::config::{Autocast, NoiseSchedule};
use scalelong_train::evaluation::{self, Labels, SampleSpec};

use crate::device::DeviceOpts;
use crate::model_spec::{load_official, ModelArgs};

/// How sources are read: the network, sampling of checkpoints, batching.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// The FID Inception weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth); default:
    /// where pytorch-fid keeps them ($TORCH_HOME/hub/checkpoints, ~/.cache/torch/hub/checkpoints).
    #[arg(long)]
    inception: Option<PathBuf>,
    /// Images sampled from a training checkpoint.
    #[arg(long, default_value_t = 1000)]
    num_samples: usize,
    /// Sampler for checkpoints: dpm-solver (default), euler-ode, euler-sde.
    #[arg(long, value_parser = crate::device::sampler_parser())]
    sampler: Option<SamplerKind>,
    /// Sampler steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Clip each predicted clean image to [-1, 1] while sampling (not in the official eval; keeps
    /// the ODE samplers' samples of briefly trained models from saturating).
    #[arg(long)]
    clip_x0: bool,
    /// Seed of the sampling noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `bf16`: the sampled network's GEMMs with bf16 operands (the Inception network stays f32).
    #[arg(long, value_parser = crate::device::autocast_parser(), default_value = "off")]
    autocast: Autocast,
    /// Images per sampling and Inception batch.
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// Use at most this many images of a dataset or folder (the first ones); default all.
    #[arg(long)]
    max_images: Option<usize>,
    #[command(flatten)]
    device: DeviceOpts,
    /// For official U-ViT weights (nnet_ema.pth) as a side: their architecture (VP-linear schedule).
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct FidArgs {
    /// A folder of images, pytorch-fid statistics (.npz), a dataset (mnist, idx:DIR[:t10k],
    /// cifar:DIR[:test]), one of our training checkpoints or official U-ViT weights with --preset or
    /// --config (sampled with --num-samples).
    a: String,
    /// The other side, in any of the same forms.
    b: String,
    #[command(flatten)]
    source: SourceArgs,
    /// KID: number of random subsets (torch-fidelity's default).
    #[arg(long, default_value_t = scalelong_eval::SUBSETS)]
    kid_subsets: usize,
    /// KID: images per subset (at most the smaller side).
    #[arg(long, default_value_t = scalelong_eval::SUBSET_SIZE)]
    kid_subset_size: usize,
}

#[derive(Debug, Args)]
pub struct FidStatsArgs {
    /// A folder of images, a dataset spec, one of our training checkpoints or official U-ViT weights
    /// (with --preset or --config).
    source: String,
    /// Where to write the statistics (`mu`, `sigma`; pytorch-fid's .npz format).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    args: SourceArgs,
}

/// One side: statistics only (an .npz), or features.
enum Side {
    Stats(Stats),
    Features(Tensor),
}

impl Side {
    fn stats(&self) -> Result<Stats> {
        Ok(match self {
            Self::Stats(s) => s.clone(),
            Self::Features(f) => Stats::from_features(f)?,
        })
    }
}

/// The Inception network, loaded when a source first needs it.
struct LazyInception<'a> {
    args: &'a SourceArgs,
    device: Device,
    net: Option<FidInception>,
}

impl LazyInception<'_> {
    fn get(&mut self) -> Result<&FidInception> {
        if self.net.is_none() {
            let path = weights::locate(self.args.inception.as_deref())?;
            self.net = Some(FidInception::load(&path, &self.device)?);
        }
        Ok(self.net.as_ref().expect("loaded above"))
    }
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what}"))
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

fn read_side(spec: &str, net: &mut LazyInception) -> Result<Side> {
    let args = net.args;
    let limit = args.max_images.unwrap_or(usize::MAX);
    let path = Path::new(spec);
    if spec.ends_with(".npz") {
        return Ok(Side::Stats(Stats::read_npz(path)?));
    }
    if path.is_file() && (checkpoint::is_training_checkpoint(path) || !args.model.given().is_empty()) {
        return sample_checkpoint(path, net).map(Side::Features);
    }
    if path.is_file() {
        bail!(
            "{spec}: not pytorch-fid statistics (.npz) nor a scalelong training checkpoint (for official U-ViT \
             weights, pass --preset NAME or --config FILE)"
        );
    }
    let data: DataSpec = spec.parse().with_context(|| format!("{spec}: not a folder, .npz, checkpoint or dataset"))?;
    if let DataSpec::Folder { dir } = &data {
        let files = images::list(dir)?;
        let n = files.len().min(limit);
        let progress = bar(n, &format!("images of {}", dir.display()));
        let mut parts = Vec::new();
        // One image at a time: a folder's images may differ in size (each is resized to 299).
        for chunk in files[..n].chunks(args.batch_size.max(1)) {
            let imgs: Vec<Tensor> = chunk.iter().map(|p| images::read_rgb(p)).collect::<candle_core::Result<_>>()?;
            let same = imgs.iter().all(|t| t.dims() == imgs[0].dims());
            match same {
                true => parts.push(net.get()?.features(&Tensor::cat(&imgs, 0)?)?),
                false => {
                    for t in &imgs {
                        parts.push(net.get()?.features(t)?);
                    }
                }
            }
            progress.inc(chunk.len() as u64);
        }
        progress.finish_and_clear();
        return Ok(Side::Features(Tensor::cat(&parts, 0)?));
    }
    let ds = data.load_as_stored()?;
    let n = ds.len().min(limit);
    let progress = bar(n, &format!("images of {spec}"));
    let f = evaluation::dataset_features(&ds, n, net.get()?, args.batch_size, &mut |done| {
        progress.set_position(done as u64)
    })?;
    progress.finish_and_clear();
    Ok(Side::Features(f))
}

/// A network to sample: a training checkpoint's EMA weights (with its config, schedule and "no class"
/// label), or official U-ViT weights.
fn sampling_model(
    path: &Path,
    args: &SourceArgs,
    device: &Device,
) -> Result<(Backbone, ModelConfig, Schedule, Option<usize>)> {
    if !checkpoint::is_training_checkpoint(path) {
        let (cfg, model) = load_official(path, &args.model, DType::F32, device)?;
        return Ok((model, ModelConfig::UViT(cfg), Schedule::Vp(NoiseSchedule::VpLinear.sde()), None));
    }
    args.model.refuse_for_checkpoint(path, &[])?;
    let ck = checkpoint::load_groups(path, &[Group::Ema], device)?;
    let cfg = ck.config()?;
    let model = ck.model(&cfg, Group::Ema, DType::F32, device)?;
    let null_label = ck.meta("null_label").ok().and_then(|v| v.parse::<usize>().ok());
    Ok((model, cfg.model, Schedule::Vp(cfg.train.schedule.sde()), null_label))
}

/// `--num-samples` images of a checkpoint (see [`sampling_model`]), as features.
fn sample_checkpoint(path: &Path, net: &mut LazyInception) -> Result<Tensor> {
    let args = net.args;
    let device = net.device.clone();
    let (model, cfg, schedule, null_label) = sampling_model(path, args, &device)?;
    let kind = args.sampler.unwrap_or(SamplerKind::DpmSolver);
    if !kind.fits(&schedule) {
        bail!(
            "--sampler {kind}: does not fit this model's VP-SDE schedule; expected one of {}",
            SamplerKind::names_for(&schedule)
        );
    }
    if args.num_samples < 2 || args.steps == 0 || args.batch_size == 0 {
        bail!(
            "--num-samples {} (at least 2), --steps {} and --batch-size {} (at least 1)",
            args.num_samples,
            args.steps,
            args.batch_size
        );
    }
    let sampler = kind.build(args.steps, &schedule)?;
    let labels = match (cfg.num_classes(), null_label) {
        (Some(_), Some(null)) => Labels::Cycle(null),
        (Some(k), None) => Labels::Cycle(k),
        (None, _) => Labels::None,
    };
    let spec = SampleSpec {
        n: args.num_samples,
        batch_size: args.batch_size,
        channels: cfg.in_channels(),
        size: cfg.train_size(),
        seed: args.seed,
        labels,
        guidance: None,
        clip_x0: args.clip_x0.then(|| schedule.clone()),
        init_noise: None,
        autocast: args.autocast,
    };
    let progress = bar(spec.n, &format!("samples of {}", path.display()));
    let f = evaluation::sample_features(&model, sampler.as_ref(), net.get()?, spec, &device, &mut |done| {
        progress.set_position(done as u64)
    })?;
    progress.finish_and_clear();
    Ok(f)
}

pub fn run(args: &FidArgs) -> Result<()> {
    let mut net = LazyInception { args: &args.source, device: args.source.device.device()?, net: None };
    let a = read_side(&args.a, &mut net).with_context(|| format!("reading {}", args.a))?;
    let b = read_side(&args.b, &mut net).with_context(|| format!("reading {}", args.b))?;
    let fid = frechet_distance(&a.stats()?, &b.stats()?)?;
    println!("FID {fid:.6}");
    match (&a, &b) {
        (Side::Features(fa), Side::Features(fb)) => {
            let k = kid(fa, fb, args.kid_subsets, args.kid_subset_size, 0)?;
            println!("KID {:.6e} +- {:.6e}", k.mean, k.std);
        }
        _ => println!("KID not computed: it needs images on both sides, and a statistics file holds none"),
    }
    Ok(())
}

pub fn run_stats(args: &FidStatsArgs) -> Result<()> {
    if args.source.ends_with(".npz") {
        bail!("{}: already statistics; give images, a dataset or a checkpoint", args.source);
    }
    let mut net = LazyInception { args: &args.args, device: args.args.device.device()?, net: None };
    let side = read_side(&args.source, &mut net).with_context(|| format!("reading {}", args.source))?;
    let stats = side.stats()?;
    stats.write_npz(&args.out)?;
    println!("wrote {} ({} dimensions)", args.out.display(), stats.dim());
    Ok(())
}
