//! What a run reads and writes besides its metrics: pretrained weights, checkpoints (atomic,
//! exactly resumable) and sample grids.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scalelong_backbones::{checkpoint as weights_file, is_gate_param, weights, Architecture, Backbone};
use scalelong_data::DataPosition;
use scalelong_diffusion::{Sampler, SamplerKind, Schedule};

use super::Trainer;
use crate::checkpoint::{self, Group, FORMAT, FORMAT_KEY};
use crate::config::Autocast;
use crate::evaluation::{self, Labels, SampleSpec};

impl Trainer {
    /// Starts from pretrained weights (`train.init_from`): every parameter the file has, with the
    /// shape the model wants; LS calibration networks (`se.*`) the file lacks keep their fresh
    /// initialisation. Anything else missing, unexpected or wrongly shaped is an error naming it.
    pub(super) fn init_from(&mut self) -> Result<()> {
        let spec = self.config.train.init_from.clone();
        let offline = weights::offline_from_env(false);
        let path = match Path::new(&spec).is_file() {
            true => PathBuf::from(&spec),
            false => weights::resolve(&spec, offline)?.weights,
        };
        let tensors = match checkpoint::is_training_checkpoint(&path) {
            true => checkpoint::load_groups(&path, &[Group::Ema], &self.device)?.group(Group::Ema),
            false => weights_file::read_tensors(&path, &self.device)?,
        };
        let specs: Vec<_> = self
            .config
            .model
            .param_specs()?
            .into_iter()
            .filter(|p| !is_gate_param(&p.name) || tensors.contains_key(&p.name))
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

    /// Writes `checkpoints/step_N.safetensors` atomically and deletes all but the newest `keep`.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let dir = self.checkpoint_dir();
        std::fs::create_dir_all(&dir).map_err(|e| candle_core::Error::Msg(format!("{}: {e}", dir.display())))?;
        let mut tensors = Vec::with_capacity(4 * self.names.len());
        let (m, v, adam_steps) = self.opt.state();
        for (i, name) in self.names.iter().enumerate() {
            tensors.push((Group::Model.key(name), self.opt.params()[i].as_tensor().clone()));
            tensors.push((Group::Ema.key(name), self.ema[i].clone()));
            tensors.push((Group::AdamM.key(name), m[i].clone()));
            tensors.push((Group::AdamV.key(name), v[i].clone()));
        }
        let meta: HashMap<String, String> = [
            (FORMAT_KEY, FORMAT.to_string()),
            ("arch", self.config.model.arch().to_string()),
            ("config", self.config.to_toml()),
            ("step", self.step.to_string()),
            ("adam_step", adam_steps.to_string()),
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
    pub(super) fn resume_from(&mut self, path: &Path) -> Result<()> {
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

    fn restore(&mut self, path: &Path) -> Result<()> {
        let ck = checkpoint::load(path, &self.device)?;
        let saved = ck.config()?;
        if saved.model != self.config.model {
            candle_core::bail!(
                "cannot resume from {}: it holds a different model ([model] differs from the config given)",
                path.display()
            );
        }
        let [model, ema, m, v] = Group::ALL.map(|g| ck.group(g));
        let mut moments = (Vec::with_capacity(self.names.len()), Vec::with_capacity(self.names.len()));
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
            moments.0.push(m1);
            moments.1.push(m2);
        }
        self.opt.restore(moments.0, moments.1, ck.meta_parse("adam_step")?)?;
        self.step = ck.meta_parse("step")?;
        self.skipped = ck.meta_parse("skipped")?;
        self.rng = ChaCha8Rng::seed_from_u64(self.config.train.seed);
        self.rng.set_word_pos(ck.meta_parse("rng_word_pos")?);
        self.position = DataPosition { epoch: ck.meta_parse("data_epoch")?, offset: ck.meta_parse("data_offset")? };
        self.loader = None;
        tracing::info!(step = self.step, checkpoint = %path.display(), "resumed");
        Ok(())
    }

    /// The EMA weights as a network (what grids and evaluations sample).
    pub(super) fn ema_model(&self) -> Result<Backbone> {
        let ema: HashMap<String, Tensor> = self.ema_weights().into_iter().collect();
        self.config.model.build(VarBuilder::from_tensors(ema, DType::F32, &self.device))
    }

    /// What the EMA weights are sampled with: `n` images in batches of `batch_size`, noise from the
    /// training seed plus `seed_offset` (1 for grids, 2 for evaluations), the sampler, the model's
    /// shape and class labels.
    pub(super) fn sample_setup(
        &self,
        n: usize,
        batch_size: usize,
        seed_offset: u64,
        (sampler, steps, clip_x0): (SamplerKind, usize, bool),
    ) -> Result<(Box<dyn Sampler>, SampleSpec)> {
        let schedule = Schedule::Vp(self.config.train.schedule.sde());
        let m = &self.config.model;
        let spec = SampleSpec {
            n,
            batch_size,
            channels: m.in_channels(),
            size: m.train_size(),
            seed: self.config.train.seed.wrapping_add(seed_offset),
            labels: match m.num_classes() {
                Some(_) => Labels::Cycle(self.dataset.num_classes().max(1)),
                None => Labels::None,
            },
            guidance: None,
            clip_x0: clip_x0.then(|| schedule.clone()),
            init_noise: None,
            autocast: Autocast::Off,
        };
        Ok((sampler.build(steps, &schedule)?, spec))
    }

    /// Samples a grid from the EMA weights (fixed noise, so grids from different steps compare).
    pub fn sample_grid(&self, path: &Path) -> Result<()> {
        let model = self.ema_model()?;
        let s = &self.config.sample;
        let (sampler, spec) = self.sample_setup(s.n, s.n, 1, (s.sampler, s.steps, s.clip_x0))?;
        let mut images = None;
        evaluation::sample_batches(&model, sampler.as_ref(), &spec, &self.device, |batch, _| {
            images = Some(batch);
            Ok(())
        })?;
        let images = images.expect("one batch of n >= 1 images");
        let cols = (s.n as f64).sqrt().ceil() as usize;
        scalelong_data::save_grid(&images, path, cols).map_err(candle_core::Error::wrap)
    }
}
