//! The training loop.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scalelong_backbones::{checkpoint as weights_file, weights, Backbone, Taps};
use scalelong_data::{DataPosition, DataSpec, ImageDataset, Loader, LoaderConfig};
use scalelong_diffusion::{drop_labels, noise, Schedule, TrainingObjective};

use crate::checkpoint::{self, Group, FORMAT, FORMAT_KEY};
use crate::config::{Fit, TrainConfig};
use crate::diagnostics::{self, Diagnostics, Probe};
use crate::init::SeededVars;
use crate::optim::{AdamW, AdamWConfig};
use crate::sampling::{self, Conditioning};

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
    /// A fresh run (weights from the seed), or, with `resume`, the latest checkpoint in
    /// `run_dir/checkpoints` (a fresh run if there is none).
    pub fn new(config: TrainConfig, run_dir: &Path, device: &Device, dtype: DType, resume: bool) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
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
        let mut trainer = Self {
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
            stop: None,
            config,
        };
        match checkpoint::list(&trainer.checkpoint_dir()).pop().filter(|_| resume) {
            Some((_, path)) => trainer.resume_from(&path)?,
            None if !trainer.config.train.init_from.is_empty() => trainer.init_from()?,
            None => {}
        }
        Ok(trainer)
    }

    /// Starts from pretrained weights (`train.init_from`): every parameter the file has, with the
    /// shape the model wants; LS calibration networks (`se.*`) the file lacks keep their fresh
    /// initialisation. Anything else missing, unexpected or wrongly shaped is an error naming it.
    fn init_from(&mut self) -> Result<()> {
        let spec = self.config.train.init_from.clone();
        let offline = weights::offline_from_env(false);
        let path = match Path::new(&spec).is_file() {
            true => PathBuf::from(&spec),
            false => weights::resolve(&spec, offline)?.weights,
        };
        let tensors = match checkpoint::is_training_checkpoint(&path) {
            true => checkpoint::load(&path, &self.device)?.group(Group::Ema),
            false => weights_file::read_tensors(&path, &self.device)?,
        };
        let specs: Vec<_> = self
            .config
            .model
            .param_specs()?
            .into_iter()
            .filter(|p| !p.name.starts_with("se.") || tensors.contains_key(&p.name))
            .collect();
        weights_file::check(&format!("train.init_from {}", path.display()), &specs, &tensors)?;
        for (name, var) in self.names.iter().zip(self.opt.params()) {
            if let Some(t) = tensors.get(name) {
                var.set(&t.to_dtype(DType::F32)?.to_device(&self.device)?)?;
            }
        }
        for (e, p) in self.ema.iter_mut().zip(self.opt.params()) {
            *e = p.as_tensor().copy()?.detach();
        }
        tracing::info!(from = %path.display(), tensors = specs.len(), "initialised from pretrained weights");
        Ok(())
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

    /// The next micro-batch of the data (images on the device, labels after dropping for
    /// classifier-free guidance); counts its images into `images`.
    fn next_batch(&mut self, images: &mut usize) -> Result<(Tensor, Option<Tensor>)> {
        let t = &self.config.train;
        let (dataset, config, position) = (&self.dataset, &self.config, self.position);
        let loader = self.loader.get_or_insert_with(|| Loader::new(dataset.clone(), loader_config(config), position));
        let batch = loader.next_batch();
        self.position = batch.next;
        let (b, c, h, w) = batch.shape;
        *images += b;
        let x0 = Tensor::from_vec(batch.images, (b, c, h, w), &Device::Cpu)?
            .to_device(&self.device)?
            .to_dtype(self.dtype)?;
        let labels = match (&batch.labels, self.config.model.num_classes()) {
            (Some(l), Some(_)) => {
                let y = Tensor::new(l.as_slice(), &self.device)?;
                Some(match self.null_label {
                    Some(null) => drop_labels(&y, t.p_uncond, null as i64, &mut self.rng)?,
                    None => y,
                })
            }
            _ => None,
        };
        Ok((x0, labels))
    }

    /// Test hook: the next micro-batches use these instead of the data loader and the RNG.
    #[doc(hidden)]
    pub fn feed(&mut self, batches: impl IntoIterator<Item = FedBatch>) {
        self.fed.extend(batches);
    }

    /// One optimizer step (over `grad_accum` micro-batches).
    pub fn train_step(&mut self) -> Result<StepReport> {
        let t = self.config.train.clone();
        let lr = self.config.lr_at(self.step);
        let compute = self.compute_model()?;
        let mut grads: Option<Vec<Tensor>> = None;
        let mut loss_sum = 0.0;
        let mut images = 0;
        let every = self.config.diagnostics.every;
        let diagnose = self.probe.is_some() && every > 0 && (self.step + 1).is_multiple_of(every);
        let mut taps = diagnose.then(Taps::default);
        for _ in 0..t.grad_accum {
            let (labels, nb) = match self.fed.pop_front() {
                Some(fed) => {
                    images += fed.x0.dim(0)?;
                    let x0 = fed.x0.to_device(&self.device)?.to_dtype(self.dtype)?;
                    let noise = fed.noise.to_device(&self.device)?.to_dtype(self.dtype)?;
                    (None, self.objective.noised(&x0, &fed.u, noise)?)
                }
                None => {
                    let (x0, labels) = self.next_batch(&mut images)?;
                    (labels, self.objective.noise_batch(&x0, &mut self.rng)?)
                }
            };
            // Taps of the first micro-batch only: the diagnostics describe one forward pass.
            let out = match taps.as_mut().filter(|t| t.blocks.is_empty()) {
                Some(taps) => compute.forward_with_taps(&nb.x_t, &nb.t_input, labels.as_ref(), taps)?,
                None => compute.forward(&nb.x_t, &nb.t_input, labels.as_ref())?,
            };
            let loss = self.objective.loss(&out.to_dtype(DType::F32)?, &nb.target.to_dtype(DType::F32)?)?;
            let loss = (loss / t.grad_accum as f64)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let store = loss.backward()?;
            let step_grads = self
                .opt
                .params()
                .iter()
                .map(|v| match store.get(v.as_tensor()) {
                    Some(g) => g.detach().to_dtype(DType::F32),
                    None => v.as_tensor().zeros_like(),
                })
                .collect::<Result<Vec<_>>>()?;
            grads = Some(match grads {
                None => step_grads,
                Some(acc) => acc.iter().zip(&step_grads).map(|(a, g)| a + g).collect::<Result<_>>()?,
            });
        }
        let mut grads = grads.expect("grad_accum >= 1");
        // One device-to-host copy for the whole norm, not one per parameter.
        let per_param = grads.iter().map(|g| g.sqr()?.sum_all()).collect::<Result<Vec<_>>>()?;
        let per_param = Tensor::stack(&per_param, 0)?.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
        let squared = per_param.to_vec1::<f64>()?;
        let grad_norm = squared.iter().sum::<f64>().sqrt();
        let skipped = !loss_sum.is_finite() || !grad_norm.is_finite();
        if skipped {
            self.skipped += 1;
            self.bad_in_a_row += 1;
            tracing::warn!(step = self.step + 1, loss_sum, grad_norm, "non-finite loss or gradient: step skipped");
            if self.bad_in_a_row >= t.max_nonfinite {
                candle_core::bail!(
                    "{} steps in a row had a non-finite loss or gradient (last at step {}); stopping. The last checkpoint in {} is intact; try a lower train.lr or train.grad_clip",
                    self.bad_in_a_row,
                    self.step + 1,
                    self.checkpoint_dir().display()
                );
            }
        } else {
            self.bad_in_a_row = 0;
            if t.grad_clip > 0.0 && grad_norm > t.grad_clip {
                let scale = t.grad_clip / (grad_norm + 1e-6);
                grads = grads.iter().map(|g| g * scale).collect::<Result<_>>()?;
            }
            self.opt.step(&grads, lr)?;
            let d = t.ema_decay;
            for (e, p) in self.ema.iter_mut().zip(self.opt.params()) {
                *e = ((&*e * d)? + (p.as_tensor().detach() * (1.0 - d))?)?;
            }
        }
        self.step += 1;
        let diagnostics = match taps {
            Some(taps) => Some(self.diagnose(&taps, &squared)?),
            None => None,
        };
        Ok(StepReport { step: self.step, loss: loss_sum, lr, grad_norm, skipped, images, diagnostics })
    }

    /// The diagnostics record of the step just taken: forward-pass norms and gradients from that
    /// step, validation loss and robustness of the weights after its update.
    fn diagnose(&self, taps: &Taps, squared_grads: &[f64]) -> Result<Diagnostics> {
        let probe = self.probe.as_ref().expect("diagnose only with a probe");
        let f = diagnostics::from_taps(taps)?;
        let skips = self.config.model.encoder_blocks();
        let model =
            self.config.model.build(VarBuilder::from_tensors(self.detached(false), DType::F32, &self.device))?;
        let ema = self.config.model.build(VarBuilder::from_tensors(self.detached(true), DType::F32, &self.device))?;
        Ok(Diagnostics {
            feature_norm: f.feature_norm,
            block_feature_norms: f.block_feature_norms,
            skip_norms: f.skip_norms,
            scaled_skip_norms: f.scaled_skip_norms,
            gates: f.gates,
            block_grad_norms: diagnostics::block_grad_norms(&self.names, squared_grads, skips),
            val_loss: probe.val_loss(&model, &self.objective)?,
            val_loss_ema: probe.val_loss(&ema, &self.objective)?,
            robustness: probe.robustness(&model)?,
        })
    }

    /// The current or EMA weights, detached (evaluation builds no autograd graph).
    fn detached(&self, ema: bool) -> HashMap<String, Tensor> {
        let ws = if ema { self.ema_weights() } else { self.weights() };
        ws.into_iter().map(|(n, t)| (n, t.detach())).collect()
    }

    /// The model to run forward: the trained one in f32, or one on casts of its weights (gradients
    /// flow back through the casts to the f32 master weights).
    fn compute_model(&self) -> Result<Backbone> {
        if self.dtype == DType::F32 {
            return Ok(self.model.clone());
        }
        let ts = self
            .weights()
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(self.dtype)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        self.config.model.build(VarBuilder::from_tensors(ts, self.dtype, &self.device))
    }

    /// Trains until `train.max_steps` (or the stop flag), writing metrics, checkpoints and sample
    /// grids into the run folder and telling `observer` about each.
    pub fn run(&mut self, observer: &mut dyn FnMut(&Event)) -> Result<RunEnd> {
        let io = |e: std::io::Error| candle_core::Error::Msg(format!("run folder {}: {e}", self.run_dir.display()));
        std::fs::create_dir_all(self.checkpoint_dir()).map_err(io)?;
        let mut metrics = open_metrics(&self.run_dir.join("metrics.jsonl"), self.step).map_err(io)?;
        let cfg = self.config.clone();
        let (mut window_loss, mut window_n, mut window_images, mut window_start) = (0.0, 0u64, 0usize, Instant::now());
        while self.step < cfg.train.max_steps {
            let r = self.train_step()?;
            if !r.skipped {
                window_loss += r.loss;
                window_n += 1;
            }
            window_images += r.images;
            let log_now = r.step % cfg.log.every.max(1) == 0 || r.step == cfg.train.max_steps;
            if log_now || r.diagnostics.is_some() {
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                let mut line = serde_json::json!({
                    "step": r.step,
                    "loss": if window_n > 0 { window_loss / window_n as f64 } else { f64::NAN },
                    "lr": r.lr,
                    "grad_norm": r.grad_norm,
                    "img_per_s": window_images as f64 / secs,
                    "skipped_total": self.skipped,
                });
                if let (Some(d), Some(obj)) = (&r.diagnostics, line.as_object_mut()) {
                    if let serde_json::Value::Object(fields) =
                        serde_json::to_value(d).map_err(candle_core::Error::wrap)?
                    {
                        obj.extend(fields);
                    }
                }
                writeln!(metrics, "{line}").map_err(|e| candle_core::Error::Msg(format!("metrics.jsonl: {e}")))?;
                metrics.flush().map_err(|e| candle_core::Error::Msg(format!("metrics.jsonl: {e}")))?;
                (window_loss, window_n, window_images, window_start) = (0.0, 0, 0, Instant::now());
            }
            observer(&Event::Step(r.clone()));
            let last = r.step == cfg.train.max_steps;
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
                observer(&Event::Samples(path));
            }
        }
        Ok(RunEnd::Finished)
    }

    /// Writes `checkpoints/step_N.safetensors` atomically and deletes all but the newest `keep`.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let dir = self.checkpoint_dir();
        std::fs::create_dir_all(&dir).map_err(|e| candle_core::Error::Msg(format!("{}: {e}", dir.display())))?;
        let mut tensors = Vec::with_capacity(4 * self.names.len());
        for (i, name) in self.names.iter().enumerate() {
            tensors.push((Group::Model.key(name), self.opt.params()[i].as_tensor().clone()));
            tensors.push((Group::Ema.key(name), self.ema[i].clone()));
            tensors.push((Group::AdamM.key(name), self.opt.m[i].clone()));
            tensors.push((Group::AdamV.key(name), self.opt.v[i].clone()));
        }
        let meta: HashMap<String, String> = [
            (FORMAT_KEY, FORMAT.to_string()),
            ("arch", self.config.model.arch().to_string()),
            ("config", self.config.to_toml()),
            ("step", self.step.to_string()),
            ("adam_step", self.opt.step.to_string()),
            ("rng_word_pos", self.rng.get_word_pos().to_string()),
            ("data_epoch", self.position.epoch.to_string()),
            ("data_offset", self.position.offset.to_string()),
            ("skipped", self.skipped.to_string()),
            ("null_label", self.null_label.map(|n| n.to_string()).unwrap_or_default()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let path = checkpoint::path_for(&dir, self.step);
        checkpoint::save(&path, &tensors, meta)?;
        let all = checkpoint::list(&dir);
        for (_, old) in all.iter().take(all.len().saturating_sub(self.config.checkpoint.keep)) {
            let _ = std::fs::remove_file(old);
        }
        Ok(path)
    }

    /// Continues from the checkpoint at `path`: weights, EMA, AdamW moments, step, RNG and data
    /// position. If it cannot be read, the error names the previous checkpoint in its folder.
    /// Checkpoints newer than it in the run's folder are set aside (`*.superseded`), so they are
    /// neither resumed from later nor kept in place of the new ones.
    pub fn resume_from(&mut self, path: &Path) -> Result<()> {
        if let Err(e) = self.restore(path) {
            let hint = match crate::run_dir::previous_checkpoint(path) {
                Some(prev) => format!(
                    "; the previous checkpoint is {}: continue from it with `scalelong train --resume {}`",
                    prev.display(),
                    prev.display()
                ),
                None => String::new(),
            };
            candle_core::bail!("cannot resume from {}: {e}{hint}", path.display());
        }
        let moved = crate::run_dir::set_aside_newer(&self.checkpoint_dir(), self.step)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", self.checkpoint_dir().display())))?;
        for p in moved {
            tracing::warn!(path = %p.display(), "a checkpoint newer than the one resumed from was set aside");
        }
        Ok(())
    }

    /// Stops [`Trainer::run`] after the step in progress once `flag` is raised (e.g. by a signal).
    pub fn stop_when(&mut self, flag: Arc<AtomicBool>) {
        self.stop = Some(flag);
    }

    fn restore(&mut self, path: &Path) -> Result<()> {
        let ck = checkpoint::load(path, &self.device)?;
        let saved = TrainConfig::from_toml(ck.meta("config")?, &format!("stored in {}", path.display()))
            .map_err(candle_core::Error::Msg)?;
        if saved.model != self.config.model {
            candle_core::bail!(
                "cannot resume from {}: it holds a different model ([model] differs from the config given)",
                path.display()
            );
        }
        let [model, ema, m, v] = Group::ALL.map(|g| ck.group(g));
        for (i, name) in self.names.iter().enumerate() {
            let want = self.opt.params()[i].dims().to_vec();
            let get = |group: &HashMap<String, Tensor>, what: &str| -> Result<Tensor> {
                let t = group
                    .get(name)
                    .ok_or_else(|| candle_core::Error::Msg(format!("{}: missing {what} `{name}`", path.display())))?;
                if t.dims() != want.as_slice() {
                    candle_core::bail!(
                        "{}: {what} `{name}` has shape {:?}, expected {want:?}",
                        path.display(),
                        t.dims()
                    );
                }
                Ok(t.clone())
            };
            let (w, e, m1, m2) = (
                get(&model, "weight")?,
                get(&ema, "EMA weight")?,
                get(&m, "AdamW first moment")?,
                get(&v, "AdamW second moment")?,
            );
            self.opt.params()[i].set(&w)?;
            self.ema[i] = e;
            self.opt.m[i] = m1;
            self.opt.v[i] = m2;
        }
        self.step = ck.meta_parse("step")?;
        self.opt.step = ck.meta_parse("adam_step")?;
        self.skipped = ck.meta_parse("skipped")?;
        self.rng = ChaCha8Rng::seed_from_u64(self.config.train.seed);
        self.rng.set_word_pos(ck.meta_parse("rng_word_pos")?);
        self.position = DataPosition { epoch: ck.meta_parse("data_epoch")?, offset: ck.meta_parse("data_offset")? };
        self.loader = None;
        tracing::info!(step = self.step, checkpoint = %path.display(), "resumed");
        Ok(())
    }

    /// Samples a grid from the EMA weights (fixed noise, so grids from different steps compare).
    pub fn sample_grid(&self, path: &Path) -> Result<()> {
        let ema: HashMap<String, Tensor> = self.ema_weights().into_iter().collect();
        let model = self.config.model.build(VarBuilder::from_tensors(ema, DType::F32, &self.device))?;
        let s = &self.config.sample;
        let sampler = s.sampler.build(s.steps, &Schedule::Vp(self.config.train.schedule.sde()))?;
        let m = &self.config.model;
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.train.seed.wrapping_add(1));
        let size = m.image_size();
        let x = noise::randn((s.n, m.in_channels(), size, size), DType::F32, &self.device, &mut rng)?;
        let labels = match m.num_classes() {
            Some(_) => Some(Tensor::new(
                (0..s.n as u32).map(|i| i % self.dataset.num_classes().max(1) as u32).collect::<Vec<_>>(),
                &self.device,
            )?),
            None => None,
        };
        let clip_x0 = s.clip_x0.then(|| Schedule::Vp(self.config.train.schedule.sde()));
        let images = sampling::sample(
            &model,
            sampler.as_ref(),
            &x,
            &Conditioning { labels, guidance: None, clip_x0 },
            &mut rng,
        )?;
        let cols = (s.n as f64).sqrt().ceil() as usize;
        scalelong_data::save_grid(&images, path, cols).map_err(candle_core::Error::wrap)
    }
}

/// The diagnostics probe, from `diagnostics.val_data` or else the training data.
fn probe(config: &TrainConfig, train: &ImageDataset, objective: &TrainingObjective, device: &Device) -> Result<Probe> {
    let d = &config.diagnostics;
    let held_out;
    let data = if d.val_data.is_empty() {
        train
    } else {
        let spec: DataSpec = d
            .val_data
            .parse()
            .map_err(|e| candle_core::Error::Msg(format!("diagnostics.val_data = {:?}: {e}", d.val_data)))?;
        held_out =
            load_data(config, &spec).map_err(|e| candle_core::Error::Msg(format!("diagnostics.val_data: {e}")))?;
        &held_out
    };
    Probe::new(data, objective, d, config.model.num_classes().is_some(), config.train.seed, device)
}

/// A dataset brought to the model's channels and size as `data.fit` says.
fn load_data(config: &TrainConfig, spec: &DataSpec) -> std::result::Result<ImageDataset, scalelong_data::DataError> {
    let m = &config.model;
    match config.data.fit {
        Fit::Resize => spec.load(m.in_channels(), m.image_size()),
        Fit::Pad => spec.load_padded(m.in_channels(), m.image_size()),
    }
}

fn loader_config(c: &TrainConfig) -> LoaderConfig {
    LoaderConfig { batch_size: c.train.batch_size, seed: c.train.seed, hflip: c.data.hflip, prefetch: 4 }
}

/// For a class-conditional model, checks the class count against the data; returns the "no class"
/// label when training for classifier-free guidance.
fn check_classes(config: &TrainConfig, data: &ImageDataset) -> Result<Option<u32>> {
    let Some(n) = config.model.num_classes() else { return Ok(None) };
    if data.labels().is_none() {
        candle_core::bail!("model.num_classes = {n} but the dataset {} has no labels", data.source);
    }
    let classes = data.num_classes();
    let want = if config.train.p_uncond > 0.0 { classes + 1 } else { classes };
    if n != want {
        candle_core::bail!(
            "model.num_classes = {n} but the dataset {} has {classes} classes: expected {want}{}",
            data.source,
            if config.train.p_uncond > 0.0 {
                " (one more for the \"no class\" label of classifier-free guidance)"
            } else {
                ""
            }
        );
    }
    Ok((config.train.p_uncond > 0.0).then_some(classes as u32))
}

/// Opens `metrics.jsonl` for appending, dropping lines past `step` left by an interrupted run.
fn open_metrics(path: &Path, step: u64) -> std::io::Result<std::fs::File> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let kept: String = text
            .lines()
            .filter(|l| {
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
