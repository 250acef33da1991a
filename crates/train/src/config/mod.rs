//! Training configuration: one TOML file with `[model]`, `[data]`, `[train]`, `[checkpoint]`,
//! `[log]` and `[sample]` tables. Unknown keys are errors; every field can be overridden by
//! `section.key=value`. The tables other than `[model]` are in `sections`.

mod sections;

use crate::ConfigError;
use std::path::Path;

use scalelong_backbones::{Architecture, ModelConfig};
use scalelong_diffusion::{SamplerKind, Schedule};
use serde::{Deserialize, Serialize};

pub use sections::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The backbone: a U-ViT, or `arch = "unet2d"` and diffusers' UNet2DModel keys.
    pub model: ModelConfig,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub train: OptimConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub sample: SampleConfig,
    #[serde(default)]
    pub diagnostics: DiagnosticsConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

impl TrainConfig {
    pub fn from_toml(text: &str, source: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| format!("config {source}: {e}"))?;
        cfg.validate().map_err(|e| format!("config {source}: {e}"))?;
        Ok(cfg)
    }

    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serialises")
    }

    /// Sets `section.key` (e.g. `train.batch_size`, `model.scaling`) to a TOML value; a bare word
    /// is taken as a string. The result is re-checked.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let mut doc: toml::Table = toml::from_str(&self.to_toml()).expect("round trip");
        let (section, field) = key
            .split_once('.')
            .ok_or_else(|| format!("override `{key}`: expected section.key, e.g. train.batch_size"))?;
        let table = doc
            .get_mut(section)
            .and_then(|t| t.as_table_mut())
            .ok_or_else(|| format!("override `{key}`: unknown section `{section}`"))?;
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        table.insert(field.to_string(), parsed);
        let text = toml::to_string(&doc).expect("table serialises");
        *self = Self::from_toml(&text, &format!("with override {key}={value}"))?;
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.model.validate_for_training().map_err(|e| e.to_string())?;
        let t = &self.train;
        let d = &self.diagnostics;
        let sm = &self.sample;
        let e = &self.eval;
        let schedule = Schedule::Vp(t.schedule.sde());
        let fits = |key: &str, kind: SamplerKind| {
            let msg = format!(
                "{key} = {:?} does not fit this model's VP-SDE schedule: expected one of {}",
                kind.name(),
                SamplerKind::names_for(&schedule)
            );
            (kind.fits(&schedule), msg)
        };
        let checks: [(bool, String); 18] = [
            (t.batch_size > 0, format!("train.batch_size = {} must be positive", t.batch_size)),
            (t.max_steps > 0, format!("train.max_steps = {} must be at least 1", t.max_steps)),
            (
                t.weight_decay.is_finite() && t.weight_decay >= 0.0,
                format!("train.weight_decay = {} must be a finite number >= 0", t.weight_decay),
            ),
            fits("sample.sampler", sm.sampler),
            (
                sm.steps > 0 && sm.n > 0,
                format!("sample.steps = {} and sample.n = {} must be at least 1", sm.steps, sm.n),
            ),
            (t.lr.is_finite() && t.lr >= 0.0, format!("train.lr = {} must be a finite number >= 0", t.lr)),
            (
                (0.0..1.0).contains(&t.beta1) && (0.0..1.0).contains(&t.beta2),
                format!("train.beta1 = {}, beta2 = {} must be in [0, 1)", t.beta1, t.beta2),
            ),
            (t.eps.is_finite() && t.eps > 0.0, format!("train.eps = {} must be a finite number > 0", t.eps)),
            (t.grad_accum > 0, "train.grad_accum must be at least 1".to_string()),
            ((0.0..=1.0).contains(&t.ema_decay), format!("train.ema_decay = {} must be in [0, 1]", t.ema_decay)),
            ((0.0..1.0).contains(&t.p_uncond), format!("train.p_uncond = {} must be in [0, 1)", t.p_uncond)),
            (
                t.grad_clip.is_finite() && t.grad_clip >= 0.0,
                format!("train.grad_clip = {} must be a finite number >= 0 (0 = off)", t.grad_clip),
            ),
            (self.checkpoint.keep > 0, "checkpoint.keep must be at least 1".to_string()),
            (
                d.val_images > 0 && d.probe_images > 0,
                format!(
                    "diagnostics.val_images = {} and probe_images = {} must be at least 1",
                    d.val_images, d.probe_images
                ),
            ),
            (
                !d.probe_t.is_empty() && d.probe_t.iter().all(|t| *t > 0.0 && *t <= 1.0),
                format!("diagnostics.probe_t = {:?} must be a non-empty list of times in (0, 1]", d.probe_t),
            ),
            (
                d.probe_eps.is_finite() && d.probe_eps > 0.0,
                format!("diagnostics.probe_eps = {} must be a finite number > 0", d.probe_eps),
            ),
            fits("eval.sampler", e.sampler),
            (
                e.num_samples >= 2 && e.steps > 0 && e.batch_size > 0 && e.reference_images >= 2,
                format!(
                    "eval.num_samples = {}, reference_images = {} (at least 2), steps = {}, batch_size = {} (at least 1)",
                    e.num_samples, e.reference_images, e.steps, e.batch_size
                ),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(msg.into()),
            None => Ok(()),
        }
    }

    /// Learning rate for the optimizer step that follows `completed` steps: linear warm-up from 0
    /// (the official `min(step / warmup, 1)`), then constant or cosine down to 0 at `max_steps`.
    pub fn lr_at(&self, completed: u64) -> f64 {
        let t = &self.train;
        let warm = if t.warmup_steps == 0 { 1.0 } else { (completed as f64 / t.warmup_steps as f64).min(1.0) };
        let decay = match t.lr_decay {
            LrDecay::Constant => 1.0,
            LrDecay::Cosine => {
                let span = t.max_steps.saturating_sub(t.warmup_steps).max(1) as f64;
                let done = completed.saturating_sub(t.warmup_steps) as f64 / span;
                0.5 * (1.0 + (std::f64::consts::PI * done.min(1.0)).cos())
            }
        };
        t.lr * warm * decay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str =
        "[model]\nimg_size = 8\npatch_size = 2\nin_chans = 1\nembed_dim = 16\ndepth = 2\nnum_heads = 2\n";

    #[test]
    fn defaults_are_the_official_recipe_and_overrides_apply() {
        let mut cfg = TrainConfig::from_toml(SMALL, "test").unwrap();
        assert_eq!(
            (cfg.train.lr, cfg.train.beta1, cfg.train.weight_decay, cfg.train.warmup_steps),
            (2e-4, 0.99, 0.03, 2500)
        );
        cfg.set("train.batch_size", "64").unwrap();
        cfg.set("model.scaling", "cs:0.7").unwrap();
        cfg.set("data.spec", "idx:/data/fashion").unwrap();
        assert_eq!(cfg.train.batch_size, 64);
        assert_eq!(cfg.model.scaling().to_string(), "cs:0.7");
        assert_eq!(cfg.data.spec, "idx:/data/fashion");
        let err = cfg.set("train.batchsize", "64").unwrap_err().to_string();
        assert!(err.contains("unknown field `batchsize`"), "{err}");
        let err = cfg.set("model.scaling", "cs:-1").unwrap_err().to_string();
        assert!(err.contains("finite number > 0"), "{err}");
        let err = cfg.set("train.lr", "-1").unwrap_err().to_string();
        assert!(err.contains("train.lr = -1"), "{err}");
        let err =
            TrainConfig::from_toml(&format!("{SMALL}[train]\nlearning_rate = 1\n"), "x.toml").unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("unknown field `learning_rate`"), "{err}");
        assert_eq!(cfg.train.autocast, Autocast::Off);
        cfg.set("train.autocast", "bf16").unwrap();
        assert_eq!(cfg.train.autocast, Autocast::Bf16);
        let err = cfg.set("train.autocast", "fp8").unwrap_err().to_string();
        assert!(err.contains("unknown variant `fp8`") && err.contains("`bf16`"), "{err}");
    }

    #[test]
    fn learning_rate_schedule() {
        let mut cfg = TrainConfig::from_toml(SMALL, "test").unwrap();
        cfg.train.warmup_steps = 10;
        cfg.train.lr = 1.0;
        assert_eq!((cfg.lr_at(0), cfg.lr_at(5), cfg.lr_at(10), cfg.lr_at(1000)), (0.0, 0.5, 1.0, 1.0));
        cfg.train.lr_decay = LrDecay::Cosine;
        cfg.train.max_steps = 110;
        assert!((cfg.lr_at(60) - 0.5).abs() < 1e-12 && cfg.lr_at(110).abs() < 1e-12);
    }
}
