//! The tables of a training config besides `[model]`, each with the official recipe's defaults.

use scalelong_diffusion::{Prediction, SamplerKind, UnknownName, VpSde};
use serde::{Deserialize, Serialize};

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

/// Mixed precision of the training step, as `torch.autocast("cpu", torch.bfloat16)`: `off` (f32),
/// or `bf16`: the GEMMs of Linear layers, convolutions and attention with bf16 operands and f32
/// sums (on AMX tiles where the CPU has them), forward and backward; weights, gradients, norms,
/// element-wise ops and AdamW stay f32. In `[eval]` and `scalelong sample --autocast`: the
/// network's GEMMs while sampling (the sampler's state and the FID Inception network stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Autocast {
    #[default]
    Off,
    Bf16,
}

impl Autocast {
    /// Runs `f` in this precision: inside `autocast_bf16` for `bf16`, as it is for `off`.
    pub fn run<T>(self, f: impl FnOnce() -> T) -> T {
        match self {
            Self::Bf16 => scalelong_backbones::ops::autocast_bf16(f),
            Self::Off => f(),
        }
    }
}

/// The noise schedule a model is trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseSchedule {
    VpLinear,
    VpCosine,
}

impl std::str::FromStr for NoiseSchedule {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s {
            "vp-linear" => Ok(Self::VpLinear),
            "vp-cosine" => Ok(Self::VpCosine),
            _ => Err(UnknownName { kind: "schedule", name: s.to_string(), expected: "vp-linear or vp-cosine".into() }),
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
    pub autocast: Autocast,
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
            autocast: Autocast::Off,
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
    /// Also write TensorBoard event files into the run folder (the metrics' scalars and the
    /// sample grids), for `tensorboard --logdir runs/`.
    pub tensorboard: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { every: 10, tensorboard: false }
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

/// Sample quality during training: FID (and KID) of the EMA weights against a reference, written
/// into `metrics.jsonl` as `fid`, `kid`, `kid_std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Steps between evaluations (0 = off); the last step is always evaluated when on.
    pub every: u64,
    /// Images sampled per evaluation (the same seeded noise each time).
    pub num_samples: usize,
    #[serde(deserialize_with = "eval_sampler_field")]
    pub sampler: SamplerKind,
    pub steps: usize,
    /// Images per sampling and Inception batch.
    pub batch_size: usize,
    /// Reference: pytorch-fid statistics (`.npz`, FID only) or a dataset spec (FID and KID, its
    /// features cached in the run folder); empty = the training data.
    pub reference: String,
    /// Images of a reference dataset used (the first ones).
    pub reference_images: usize,
    /// The FID Inception weights; empty = pytorch-fid's cache (`$TORCH_HOME/hub/checkpoints`).
    pub inception: String,
    /// Clip each predicted clean image to [-1, 1] while sampling (not in the official eval; keeps
    /// the ODE samplers' samples of briefly trained models from saturating).
    pub clip_x0: bool,
    /// The network's GEMMs while sampling: `off` (f32) or `bf16` (as `train.autocast`; faster
    /// where the CPU has AMX; FIDs then are of bf16 sampling).
    pub autocast: Autocast,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every: 0,
            num_samples: 1000,
            sampler: SamplerKind::DpmSolver,
            steps: 50,
            batch_size: 100,
            reference: String::new(),
            reference_images: 10_000,
            inception: String::new(),
            clip_x0: false,
            autocast: Autocast::Off,
        }
    }
}

fn eval_sampler_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SamplerKind, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map_err(|e| serde::de::Error::custom(format!("eval.sampler = {name:?}: {e}")))
}
