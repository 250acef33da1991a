//! The training loop: a [`Trainer`] built from a config (here), its step (`step`), what it reads
//! and writes (`files`) and what it needs before the first step (`setup`).

mod eval;
mod files;
mod setup;
mod step;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scalelong_backbones::{Architecture, Backbone};
use scalelong_data::{DataPosition, DataSpec, ImageDataset, Loader};
use scalelong_diffusion::{Schedule, TrainingObjective};

use crate::checkpoint;
use crate::config::TrainConfig;
use crate::diagnostics::{Diagnostics, Probe};
use crate::init::SeededVars;
use crate::metrics::MetricsLine;
use crate::optim::{AdamW, AdamWConfig};
use setup::{check_classes, load_data, probe};

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Steps completed after this one.
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// True when the loss or a gradient was not finite and the update was skipped.
    pub skipped: bool,
    pub images: usize,
    /// Stability diagnostics, on the steps `diagnostics.every` asks for.
    pub diagnostics: Option<Diagnostics>,
}

/// How [`Trainer::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// `train.max_steps` reached.
    Finished,
    /// The stop flag was raised: the step in progress was finished and a checkpoint written.
    Stopped,
}

/// Things a front end may want to show.
#[derive(Debug, Clone)]
pub enum Event {
    Step(StepReport),
    Checkpoint(PathBuf),
    Samples(PathBuf),
}

pub struct Trainer {
    config: TrainConfig,
    run_dir: PathBuf,
    device: Device,
    dtype: DType,
    names: Vec<String>,
    model: Backbone,
    opt: AdamW,
    ema: Vec<Tensor>,
    objective: TrainingObjective,
    rng: ChaCha8Rng,
    dataset: Arc<ImageDataset>,
    /// Started at `position` by the first step, so a resumed run starts only one worker.
    loader: Option<Loader>,
    position: DataPosition,
    step: u64,
    skipped: u64,
    bad_in_a_row: u32,
    null_label: Option<u32>,
    probe: Option<Probe>,
    /// Raised from outside (a signal handler) to stop after the current step.
    stop: Option<Arc<AtomicBool>>,
    /// Test hook: batches that replace the data and the noise draws of the next micro-batches.
    fed: std::collections::VecDeque<FedBatch>,
    /// The FID network and reference, loaded at the first evaluation.
    evaluator: Option<eval::Evaluator>,
}

/// A micro-batch given from outside: clean images, one uniform draw per image (the time t of a
/// VP schedule) and the noise. Used by the training-loop parity test to feed the official loop's
/// batches; not a user-facing feature.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct FedBatch {
    pub x0: Tensor,
    pub u: Vec<f64>,
    pub noise: Tensor,
}

impl Trainer {
    /// A fresh run (weights from the seed, or `train.init_from`), or, with `resume`, the latest
    /// checkpoint in `run_dir/checkpoints` (a fresh run if there is none).
    pub fn new(config: TrainConfig, run_dir: &Path, device: &Device, dtype: DType, resume: bool) -> Result<Self> {
        let mut trainer = Self::build(config, run_dir, device, dtype)?;
        match checkpoint::list(&trainer.checkpoint_dir()).pop().filter(|_| resume) {
            Some((_, path)) => trainer.resume_from(&path)?,
            None if !trainer.config.train.init_from.is_empty() => trainer.init_from()?,
            None => {}
        }
        Ok(trainer)
    }

    /// A run continued from the checkpoint at `path`: weights, EMA, AdamW moments, step, RNG and
    /// data position. If it cannot be read, the error names the previous checkpoint in its folder;
    /// newer checkpoints beside it are set aside (`*.superseded`). Pretrained weights
    /// (`train.init_from`) are not loaded: the checkpoint replaces them.
    pub fn resumed_from(
        config: TrainConfig,
        run_dir: &Path,
        device: &Device,
        dtype: DType,
        path: &Path,
    ) -> Result<Self> {
        let mut trainer = Self::build(config, run_dir, device, dtype)?;
        trainer.resume_from(path)?;
        Ok(trainer)
    }

    /// Data, model with seeded weights, optimizer and EMA, at step 0.
    fn build(config: TrainConfig, run_dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        config.validate().map_err(candle_core::Error::wrap)?;
        let spec: DataSpec = config.data.spec.parse().map_err(candle_core::Error::wrap)?;
        let dataset = Arc::new(load_data(&config, &spec).map_err(candle_core::Error::wrap)?);
        let null_label = check_classes(&config, &dataset)?;
        let objective = TrainingObjective::new(Schedule::Vp(config.train.schedule.sde()), config.train.prediction);
        let probe = match config.diagnostics.every {
            0 => None,
            _ => Some(probe(&config, &dataset, &objective, device)?),
        };
        let seeded = SeededVars::new(config.train.seed);
        let model = config.model.build(seeded.var_builder(device))?;
        let (names, vars): (Vec<String>, Vec<Var>) = seeded.vars().into_iter().unzip();
        let ema = vars.iter().map(|v| Ok(v.as_tensor().copy()?.detach())).collect::<Result<Vec<_>>>()?;
        let t = &config.train;
        let adam = AdamWConfig { beta1: t.beta1, beta2: t.beta2, eps: t.eps, weight_decay: t.weight_decay };
        Ok(Self {
            run_dir: run_dir.to_path_buf(),
            device: device.clone(),
            dtype,
            names,
            model,
            opt: AdamW::new(vars, adam)?,
            ema,
            objective,
            rng: ChaCha8Rng::seed_from_u64(config.train.seed),
            loader: None,
            dataset,
            position: DataPosition::default(),
            step: 0,
            skipped: 0,
            bad_in_a_row: 0,
            null_label,
            probe,
            fed: Default::default(),
            evaluator: None,
            stop: None,
            config,
        })
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    pub fn dataset(&self) -> &ImageDataset {
        &self.dataset
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        self.run_dir.join("checkpoints")
    }

    /// Current weights, by name (sorted).
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        self.names.iter().cloned().zip(self.opt.params().iter().map(|v| v.as_tensor().clone())).collect()
    }

    /// The EMA weights, by name (sorted).
    pub fn ema_weights(&self) -> Vec<(String, Tensor)> {
        self.names.iter().cloned().zip(self.ema.iter().cloned()).collect()
    }

    /// Test hook: the next micro-batches use these instead of the data loader and the RNG.
    #[doc(hidden)]
    pub fn feed(&mut self, batches: impl IntoIterator<Item = FedBatch>) {
        self.fed.extend(batches);
    }

    /// Trains until `train.max_steps` (or the stop flag), writing metrics, checkpoints and sample
    /// grids into the run folder and telling `observer` about each.
    pub fn run(&mut self, observer: &mut dyn FnMut(&Event)) -> Result<RunEnd> {
        let run_dir = self.run_dir.clone();
        let io = |e: std::io::Error| candle_core::Error::Msg(format!("run folder {}: {e}", run_dir.display()));
        std::fs::create_dir_all(self.checkpoint_dir()).map_err(io)?;
        let mut metrics = open_metrics(&self.run_dir.join("metrics.jsonl"), self.step).map_err(io)?;
        let mut board = match self.config.log.tensorboard {
            true => Some(crate::tensorboard::EventWriter::create(&self.run_dir).map_err(io)?),
            false => None,
        };
        let cfg = self.config.clone();
        let (mut window_loss, mut window_n, mut window_images, mut window_start) = (0.0, 0u64, 0usize, Instant::now());
        while self.step < cfg.train.max_steps {
            let r = match self.train_step() {
                Ok(r) => r,
                Err(e) if self.bad_in_a_row >= cfg.train.max_nonfinite => {
                    // Said in the metrics too, so a study counts the run as diverged, not failed.
                    let line = MetricsLine {
                        step: self.step + 1,
                        loss: f64::NAN,
                        lr: f64::NAN,
                        grad_norm: f64::NAN,
                        img_per_s: f64::NAN,
                        skipped_total: self.skipped,
                        fid: None,
                        kid: None,
                        kid_std: None,
                        diverged: true,
                        diagnostics: None,
                    };
                    writeln!(metrics, "{}", line.to_json())
                        .and_then(|_| metrics.flush())
                        .map_err(|e| candle_core::Error::Msg(format!("metrics.jsonl: {e}")))?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            if !r.skipped {
                window_loss += r.loss;
                window_n += 1;
            }
            window_images += r.images;
            let last = r.step == cfg.train.max_steps;
            let log_now = r.step % cfg.log.every.max(1) == 0 || last;
            let quality = match cfg.eval.every > 0 && (last || r.step % cfg.eval.every == 0) {
                true => Some(self.evaluate()?),
                false => None,
            };
            if log_now || r.diagnostics.is_some() || quality.is_some() {
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                let record = MetricsLine {
                    step: r.step,
                    loss: if window_n > 0 { window_loss / window_n as f64 } else { f64::NAN },
                    lr: r.lr,
                    grad_norm: r.grad_norm,
                    img_per_s: window_images as f64 / secs,
                    skipped_total: self.skipped,
                    fid: quality.map(|q| q.fid),
                    kid: quality.and_then(|q| q.kid).map(|k| k.mean),
                    kid_std: quality.and_then(|q| q.kid).map(|k| k.std),
                    diverged: false,
                    diagnostics: r.diagnostics.clone(),
                };
                if let Some(board) = board.as_mut() {
                    board.scalars(r.step, &record.scalars()).map_err(io)?;
                }
                let line = record.to_json();
                writeln!(metrics, "{line}").map_err(|e| candle_core::Error::Msg(format!("metrics.jsonl: {e}")))?;
                metrics.flush().map_err(|e| candle_core::Error::Msg(format!("metrics.jsonl: {e}")))?;
                (window_loss, window_n, window_images, window_start) = (0.0, 0, 0, Instant::now());
            }
            observer(&Event::Step(r.clone()));
            if last || (cfg.checkpoint.every > 0 && r.step % cfg.checkpoint.every == 0) {
                let path = self.save_checkpoint()?;
                observer(&Event::Checkpoint(path));
            }
            if !last && self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
                if !(cfg.checkpoint.every > 0 && r.step % cfg.checkpoint.every == 0) {
                    let path = self.save_checkpoint()?;
                    observer(&Event::Checkpoint(path));
                }
                return Ok(RunEnd::Stopped);
            }
            if last || (cfg.sample.every > 0 && r.step % cfg.sample.every == 0) {
                let path = self.run_dir.join("samples").join(format!("step_{:08}.png", r.step));
                self.sample_grid(&path)?;
                if let Some(board) = board.as_mut() {
                    let png = std::fs::read(&path).map_err(io)?;
                    board.image(r.step, "samples", &png, png_size(&png)).map_err(io)?;
                }
                observer(&Event::Samples(path));
            }
        }
        Ok(RunEnd::Finished)
    }

    /// Stops [`Trainer::run`] after the step in progress once `flag` is raised (e.g. by a signal).
    pub fn stop_when(&mut self, flag: Arc<AtomicBool>) {
        self.stop = Some(flag);
    }
}

/// (height, width, channels) of a PNG the grids write (RGB, 8 bits), from its header.
fn png_size(png: &[u8]) -> (u32, u32, u32) {
    let be = |at: usize| png.get(at..at + 4).map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
    (be(20), be(16), 3)
}

/// Opens `metrics.jsonl` for appending, dropping lines past `step` left by an interrupted run.
fn open_metrics(path: &Path, step: u64) -> std::io::Result<std::fs::File> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let kept: String = text
            .lines()
            .filter(|l| {
                // By `step` alone: a line is never dropped for a field this version reads differently.
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(path, kept)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}
