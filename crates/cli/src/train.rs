//! `scalelong train`: the main job.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::device::{DeviceOpts, DtypeArg};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use scalelong_backbones::{Architecture, SkipScaling};
use scalelong_train::{run_dir, Event, RunEnd, Start, TrainConfig, Trainer};

/// The recipe used when no --config is given: the embedded MNIST on a small U-ViT.
const DEFAULT_CONFIG: &str = include_str!("../../../configs/mnist-unet-cpu.toml");

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training config (TOML, see configs/). Default: configs/mnist-unet-cpu.toml, built in.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Dataset: `mnist` (embedded), a folder, or idx:DIR, cifar:DIR, folder:DIR, celeba:DIR, hf:NAME.
    #[arg(long)]
    data: Option<String>,
    /// Run folder: checkpoints/, metrics.jsonl and samples/ go here. Default: runs/<config name>.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Stop after this many optimizer steps (train.max_steps).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Images per optimizer step (train.batch_size).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate after warm-up (train.lr).
    #[arg(long)]
    lr: Option<f64>,
    /// Long-skip scaling (model.scaling): none, inv-sqrt2, cs:KAPPA, ls, ls-per-skip.
    #[arg(long)]
    scaling: Option<SkipScaling>,
    /// Start from pretrained weights (train.init_from): a weights file, a diffusers folder, or
    /// hf://OWNER/REPO[@REVISION][/SUBFOLDER]. Their shapes must fit [model]; LS gates start fresh.
    #[arg(long)]
    init_from: Option<String>,
    /// Seed of the initial weights, data order and noise (train.seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Steps between checkpoints (checkpoint.every).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Steps between EMA sample grids (sample.every).
    #[arg(long)]
    sample_every: Option<u64>,
    /// Any other field: --set train.grad_clip=1.0 --set sample.n=64 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    sets: Vec<String>,
    /// Continue from the newest checkpoint in the run folder, or from the checkpoint PATH. Without
    /// it, a run folder that already holds a run is refused.
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    resume: Option<Option<PathBuf>>,
    /// Start a new run in a folder that holds one, deleting its checkpoints, metrics and samples.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    #[command(flatten)]
    device: DeviceOpts,
    /// Compute dtype: f32, or bf16 / f16 on a GPU (master weights stay f32).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
}

impl TrainArgs {
    fn config(&self) -> Result<(TrainConfig, String)> {
        let (mut cfg, name) = match &self.config {
            Some(p) => (TrainConfig::read(p)?, p.file_stem().unwrap_or_default().to_string_lossy().into_owned()),
            None => (TrainConfig::from_toml(DEFAULT_CONFIG, "built-in mnist-unet-cpu.toml")?, "mnist-unet-cpu".into()),
        };
        if let Some(lr) = self.lr.filter(|v| !(v.is_finite() && *v >= 0.0)) {
            bail!("--lr {lr}: expected a finite number >= 0");
        }
        // (config key, the flag that set it, the value as TOML)
        let mut sets: Vec<(&str, &str, String)> = Vec::new();
        let mut put = |k: &'static str, flag: &'static str, v: Option<String>| {
            if let Some(v) = v {
                sets.push((k, flag, v));
            }
        };
        put("data.spec", "--data", self.data.as_ref().map(|d| toml::Value::String(d.clone()).to_string()));
        put("train.max_steps", "--max-steps", self.max_steps.map(|v| v.to_string()));
        put("train.batch_size", "--batch-size", self.batch_size.map(|v| v.to_string()));
        put("train.lr", "--lr", self.lr.map(|v| format!("{v:e}")));
        put("model.scaling", "--scaling", self.scaling.map(|v| toml::Value::String(v.to_string()).to_string()));
        put("train.seed", "--seed", self.seed.map(|v| v.to_string()));
        put(
            "train.init_from",
            "--init-from",
            self.init_from.as_ref().map(|v| toml::Value::String(v.clone()).to_string()),
        );
        put("checkpoint.every", "--checkpoint-every", self.checkpoint_every.map(|v| v.to_string()));
        put("sample.every", "--sample-every", self.sample_every.map(|v| v.to_string()));
        for (k, flag, v) in sets {
            cfg.set(k, &v).map_err(|e| anyhow::anyhow!("{flag} {v}: {e}"))?;
        }
        apply_sets(&mut cfg, &self.sets)?;
        Ok((cfg, name))
    }
}

/// Applies `--set SECTION.KEY=VALUE` overrides in order.
pub fn apply_sets(cfg: &mut TrainConfig, sets: &[String]) -> Result<()> {
    for s in sets {
        let (k, v) = s.split_once('=').with_context(|| format!("--set {s}: expected SECTION.KEY=VALUE"))?;
        cfg.set(k.trim(), v.trim())?;
    }
    Ok(())
}

impl TrainArgs {
    fn start(&self) -> Start {
        match (&self.resume, self.overwrite) {
            (Some(Some(path)), _) => Start::ResumeFrom(path.clone()),
            (Some(None), _) => Start::Resume,
            (None, true) => Start::Overwrite,
            (None, false) => Start::New,
        }
    }

    /// The run folder: --run-dir, else the folder of a checkpoint given to --resume, else
    /// runs/<config name>.
    fn run_dir(&self, name: &str) -> PathBuf {
        if let Some(dir) = &self.run_dir {
            return dir.clone();
        }
        match &self.resume {
            Some(Some(ck)) if ck.parent().is_some_and(|p| p.ends_with("checkpoints")) => {
                ck.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default()
            }
            _ => PathBuf::from("runs").join(name),
        }
    }
}

/// Exit status after a signal stopped training (128 + the signal number, as shells report it).
#[derive(Debug)]
pub struct Interrupted(pub i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by signal {}", self.0 - 128)
    }
}

impl std::error::Error for Interrupted {}

/// SIGINT and SIGTERM raise `flag` and record which came; a second one ends the process at once.
fn catch_signals(flag: &Arc<AtomicBool>, which: &Arc<AtomicUsize>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flag.clone())?;
        signal_hook::flag::register_usize(sig, which.clone(), sig as usize)?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(())
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let (cfg, name) = args.config()?;
    let run_dir = args.run_dir(&name);
    let (device, dtype) = (args.device.device()?, args.dtype.dtype());
    args.dtype.check(&device)?;
    // Last of the checks, as --overwrite deletes the previous run.
    let resume_from = run_dir::prepare(&run_dir, &args.start())?;
    tracing::info!(run_dir = %run_dir.display(), data = %cfg.data.spec, arch = cfg.model.arch(), scaling = %cfg.model.scaling(), "loading data and model");
    let mut trainer = match &resume_from {
        Some(path) => Trainer::resumed_from(cfg.clone(), &run_dir, &device, dtype, path)?,
        None => Trainer::new(cfg.clone(), &run_dir, &device, dtype, false)?,
    };
    let (stop, signal) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    catch_signals(&stop, &signal)?;
    trainer.stop_when(stop);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    std::fs::write(run_dir.join("config.toml"), cfg.to_toml())
        .with_context(|| format!("writing {}/config.toml", run_dir.display()))?;
    tracing::info!(images = trainer.dataset().len(), source = %trainer.dataset().source, start_step = trainer.step(), "training");
    let bar = ProgressBar::new(cfg.train.max_steps).with_position(trainer.step());
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps, ETA {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let first = trainer.step();
    let result = trainer.run(&mut |event| match event {
        Event::Step(r) => {
            bar.set_position(r.step);
            let ips = (r.step - first) as f64 * cfg.train.batch_size as f64 * cfg.train.grad_accum as f64
                / started.elapsed().as_secs_f64();
            bar.set_message(format!("loss {:.4}, {ips:.1} img/s{}", r.loss, if r.skipped { " (skipped)" } else { "" }));
        }
        Event::Checkpoint(p) => bar.suspend(|| tracing::info!(path = %p.display(), "checkpoint")),
        Event::Samples(p) => bar.suspend(|| tracing::info!(path = %p.display(), "samples")),
    });
    bar.finish();
    if result? == RunEnd::Stopped {
        let sig = signal.load(Ordering::SeqCst) as i32;
        let last = scalelong_train::checkpoint::path_for(&trainer.checkpoint_dir(), trainer.step());
        eprintln!(
            "stopped by signal {sig} after step {}; checkpoint {} written. Continue with --resume.",
            trainer.step(),
            last.display()
        );
        return Err(Interrupted(128 + sig).into());
    }
    tracing::info!(steps = trainer.step(), seconds = started.elapsed().as_secs_f64(), run_dir = %run_dir.display(), "done");
    Ok(())
}
