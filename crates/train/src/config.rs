//! Training configuration: one TOML file with `[model]`, `[data]`, `[train]`, `[checkpoint]`,
//! `[log]` and `[sample]` tables. Unknown keys are errors; every field can be overridden by
//! `section.key=value`.

use std::path::Path;

use scalelong_backbones::ModelConfig;
use scalelong_diffusion::{Prediction, SamplerKind, Schedule, VpSde};
use serde::{Deserialize, Serialize};

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `mnist` (embedded), a folder, or `idx:` / `cifar:` / `folder:` / `celeba:` / `hf:` + name.
    pub spec: String,
    /// Random horizontal flips (the official recipe flips).
    pub hflip: bool,
    /// Bring images to the model's size by `resize` (bilinear) or `pad` (black borders, for
    /// smaller images such as MNIST's 28x28 in a 32x32 model).
    pub fit: Fit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    Resize,
    Pad,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { spec: "mnist".into(), hflip: true, fit: Fit::Resize }
    }
}

/// Learning-rate shape after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrDecay {
    Constant,
    Cosine,
}

/// The noise schedule a model is trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseSchedule {
    VpLinear,
    VpCosine,
}

impl std::str::FromStr for NoiseSchedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vp-linear" => Ok(Self::VpLinear),
            "vp-cosine" => Ok(Self::VpCosine),
            _ => Err(format!("unknown schedule `{s}`: expected vp-linear or vp-cosine")),
        }
    }
}

impl NoiseSchedule {
    pub fn sde(self) -> VpSde {
        match self {
            Self::VpLinear => VpSde::LINEAR,
            Self::VpCosine => VpSde::COSINE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub batch_size: usize,
    pub max_steps: u64,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Linear warm-up from 0 over this many steps.
    pub warmup_steps: u64,
    pub lr_decay: LrDecay,
    /// Clip gradients to this global L2 norm (0 = off).
    pub grad_clip: f64,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub ema_decay: f64,
    pub seed: u64,
    /// Probability of training a class-conditional model without its label (classifier-free
    /// guidance); > 0 adds a "no class" label.
    pub p_uncond: f64,
    pub prediction: Prediction,
    pub schedule: NoiseSchedule,
    /// Stop after this many non-finite steps in a row.
    pub max_nonfinite: u32,
    /// Start from pretrained weights: a weights file, a diffusers folder, or hf://OWNER/REPO
    /// (empty = from the seed). Ignored when resuming.
    pub init_from: String,
}

impl Default for OptimConfig {
    /// The official CIFAR-10 recipe.
    fn default() -> Self {
        Self {
            batch_size: 128,
            max_steps: 500_000,
            lr: 2e-4,
            beta1: 0.99,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.03,
            warmup_steps: 2500,
            lr_decay: LrDecay::Constant,
            grad_clip: 0.0,
            grad_accum: 1,
            ema_decay: 0.9999,
            seed: 1234,
            p_uncond: 0.0,
            prediction: Prediction::Eps,
            schedule: NoiseSchedule::VpLinear,
            max_nonfinite: 10,
            init_from: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Steps between checkpoints (a final one is always written).
    pub every: u64,
    /// Checkpoints kept (older ones are deleted).
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { every: 5000, keep: 3 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Steps between metrics lines.
    pub every: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { every: 10 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    /// Steps between EMA sample grids (0 = only at the end).
    pub every: u64,
    pub n: usize,
    /// `euler-ode` (the official training-time grids), `dpm-solver`, `euler-sde`.
    #[serde(deserialize_with = "sampler_field")]
    pub sampler: SamplerKind,
    pub steps: usize,
    /// Clip the predicted clean image to [-1, 1] at every step (DDPM's clip_denoised); keeps
    /// samples in range. The official grids do not clip.
    pub clip_x0: bool,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self { every: 5000, n: 16, sampler: SamplerKind::EulerOde, steps: 50, clip_x0: false }
    }
}

/// `sample.sampler`, naming the key when the name is unknown.
fn sampler_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SamplerKind, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map_err(|e| serde::de::Error::custom(format!("sample.sampler = {name:?}: {e}")))
}

/// Stability diagnostics written into `metrics.jsonl` (definitions in docs/stability.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsConfig {
    /// Steps between diagnostics records (0 = off).
    pub every: u64,
    /// Dataset of the validation batch and the robustness probe, e.g. the test split
    /// (`idx:DIR:t10k`); empty = the training data (then not held out).
    pub val_data: String,
    /// Images in the fixed validation batch.
    pub val_images: usize,
    /// Images per probe time in the robustness probe.
    pub probe_images: usize,
    /// Diffusion times t in (0, 1] at which robustness is measured.
    pub probe_t: Vec<f64>,
    /// Standard deviation of the input perturbation (pixels are in [-1, 1]).
    pub probe_eps: f64,
}

impl Default for DiagnosticsConfig {
    fn default() -> Self {
        Self {
            every: 100,
            val_data: String::new(),
            val_images: 64,
            probe_images: 8,
            probe_t: vec![0.1, 0.5, 0.9],
            probe_eps: 1e-2,
        }
    }
}

impl TrainConfig {
    pub fn from_toml(text: &str, source: &str) -> Result<Self, String> {
        let cfg: Self = toml::from_str(text).map_err(|e| format!("config {source}: {e}"))?;
        cfg.validate().map_err(|e| format!("config {source}: {e}"))?;
        Ok(cfg)
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serialises")
    }

    /// Sets `section.key` (e.g. `train.batch_size`, `model.scaling`) to a TOML value; a bare word
    /// is taken as a string. The result is re-checked.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
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

    pub fn validate(&self) -> Result<(), String> {
        self.model.validate().map_err(|e| e.to_string())?;
        let t = &self.train;
        let d = &self.diagnostics;
        let sm = &self.sample;
        let checks: [(bool, String); 16] = [
            (t.batch_size > 0, format!("train.batch_size = {} must be positive", t.batch_size)),
            (t.max_steps > 0, format!("train.max_steps = {} must be at least 1", t.max_steps)),
            (
                t.weight_decay.is_finite() && t.weight_decay >= 0.0,
                format!("train.weight_decay = {} must be a finite number >= 0", t.weight_decay),
            ),
            (
                sm.sampler.fits(&Schedule::Vp(t.schedule.sde())),
                format!(
                    "sample.sampler = {:?} does not fit this model's VP-SDE schedule: expected one of {}",
                    sm.sampler.name(),
                    SamplerKind::names_for(&Schedule::Vp(t.schedule.sde()))
                ),
            ),
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
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(msg),
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
        let err = cfg.set("train.batchsize", "64").unwrap_err();
        assert!(err.contains("unknown field `batchsize`"), "{err}");
        let err = cfg.set("model.scaling", "cs:-1").unwrap_err();
        assert!(err.contains("finite number > 0"), "{err}");
        let err = cfg.set("train.lr", "-1").unwrap_err();
        assert!(err.contains("train.lr = -1"), "{err}");
        let err = TrainConfig::from_toml(&format!("{SMALL}[train]\nlearning_rate = 1\n"), "x.toml").unwrap_err();
        assert!(err.contains("x.toml") && err.contains("unknown field `learning_rate`"), "{err}");
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
