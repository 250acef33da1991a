//! Stability diagnostics: what ScaleLong says long skips do to training, measured on the run.
//! Every quantity is defined in docs/stability.md; the norms are per-sample L2 norms averaged
//! over the batch, so they do not depend on the batch size.

use candle_core::{DType, Device, Result, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scalelong_backbones::{Architecture, Backbone, Network, Taps};
use scalelong_data::{make_batch, DataPosition, ImageDataset, LoaderConfig};
use scalelong_diffusion::{noise, TrainingObjective};
use serde::{Deserialize, Serialize};

use crate::metrics::{nan_if_null, nans_if_null};

use crate::config::DiagnosticsConfig;

/// Mean, smallest and largest value of one LS gate over the batch and its gated axis.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GateStats {
    #[serde(deserialize_with = "nan_if_null")]
    pub mean: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub min: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub max: f64,
}

/// One diagnostics record (a `metrics.jsonl` line carries these fields next to the loss).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    /// Norm of the last out-block's output: the "norm of feature" of the paper's figure.
    #[serde(deserialize_with = "nan_if_null")]
    pub feature_norm: f64,
    /// Norm of every block's output, in execution order (in-blocks, mid-block, out-blocks).
    #[serde(deserialize_with = "nans_if_null")]
    pub block_feature_norms: Vec<f64>,
    /// Norm of each long skip before scaling, outermost (i = 1) first.
    #[serde(deserialize_with = "nans_if_null")]
    pub skip_norms: Vec<f64>,
    /// The same after scaling, as the out-block merges it.
    #[serde(deserialize_with = "nans_if_null")]
    pub scaled_skip_norms: Vec<f64>,
    /// Global gradient norm of each block's parameters, in execution order.
    #[serde(deserialize_with = "nans_if_null")]
    pub block_grad_norms: Vec<f64>,
    /// LS gates, outermost skip first (empty for constant scalings).
    pub gates: Vec<GateStats>,
    /// Loss of the current weights on the fixed validation batch.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_loss: f64,
    /// Loss of the EMA weights on the same batch.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_loss_ema: f64,
    /// ||f(x + delta) - f(x)|| / ||delta|| at each probe time, averaged over the probe images.
    #[serde(deserialize_with = "nans_if_null")]
    pub robustness: Vec<f64>,
}

/// Per-sample L2 norm over all but the batch axis, averaged over the batch.
pub fn mean_sample_norm(x: &Tensor) -> Result<f64> {
    let n = x.to_dtype(DType::F32)?.flatten_from(1)?.sqr()?.sum(1)?.sqrt()?.mean_all()?;
    Ok(n.to_scalar::<f32>()? as f64)
}

/// Groups per-parameter squared gradient norms (same order as `names`) into the norms of the
/// model's blocks, in execution order (as [`Architecture::block_of`] numbers them).
pub fn block_grad_norms(model: &impl Architecture, names: &[String], squared: &[f64]) -> Vec<f64> {
    let mut sums = vec![0.0; 2 * model.encoder_blocks() + 1];
    for (name, sq) in names.iter().zip(squared) {
        if let Some(b) = model.block_of(name) {
            sums[b] += sq;
        }
    }
    sums.into_iter().map(f64::sqrt).collect()
}

/// The forward-pass part of the diagnostics (fields as in [`Diagnostics`]).
pub struct TapNorms {
    pub feature_norm: f64,
    pub block_feature_norms: Vec<f64>,
    pub skip_norms: Vec<f64>,
    pub scaled_skip_norms: Vec<f64>,
    pub gates: Vec<GateStats>,
}

/// The forward-pass part of the diagnostics, from the taps of a training step.
pub fn from_taps(taps: &Taps) -> Result<TapNorms> {
    let norms = |ts: &[Tensor]| ts.iter().map(|t| mean_sample_norm(&t.detach())).collect::<Result<Vec<_>>>();
    let blocks = norms(&taps.blocks)?;
    let gates = taps
        .gates
        .iter()
        .map(|g| {
            let g = g.detach().to_dtype(DType::F32)?.flatten_all()?;
            let scalar = |t: Tensor| Ok::<_, candle_core::Error>(t.to_scalar::<f32>()? as f64);
            Ok(GateStats { mean: scalar(g.mean_all()?)?, min: scalar(g.min(0)?)?, max: scalar(g.max(0)?)? })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TapNorms {
        feature_norm: *blocks.last().unwrap_or(&f64::NAN),
        block_feature_norms: blocks,
        skip_norms: norms(&taps.skips)?,
        scaled_skip_norms: norms(&taps.scaled_skips)?,
        gates,
    })
}

/// The fixed inputs of the validation loss and the robustness probe, drawn once per run from
/// the seed, so every evaluation (and every run of a study) sees the same ones.
pub struct Probe {
    val_x_t: Tensor,
    val_t: Tensor,
    val_target: Tensor,
    val_labels: Option<Tensor>,
    /// `[x_t at every probe time; the same plus delta]`, for one forward pass.
    rob_x: Tensor,
    rob_t: Tensor,
    rob_labels: Option<Tensor>,
    rob_delta_norm: Tensor,
    rob_images: usize,
    rob_times: usize,
}

impl Probe {
    pub fn new(
        data: &ImageDataset,
        objective: &TrainingObjective,
        config: &DiagnosticsConfig,
        conditional: bool,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xD1A6_0057);
        let images = |n: usize| -> Result<(Tensor, Option<Tensor>)> {
            let cfg = LoaderConfig { batch_size: n, seed, hflip: false, prefetch: 0 };
            let batch = make_batch(data, &cfg, DataPosition::default());
            let x0 = Tensor::from_vec(batch.images, batch.shape, device)?;
            let y = batch.labels.filter(|_| conditional).map(|l| Tensor::new(l.as_slice(), device)).transpose()?;
            Ok((x0, y))
        };
        let (x0, val_labels) = images(config.val_images)?;
        let val = objective.noise_batch(&x0, &mut rng)?;
        let (x0, labels) = images(config.probe_images)?;
        let b = x0.dim(0)?;
        let times = config.probe_t.len();
        let t_input: Vec<f32> = config
            .probe_t
            .iter()
            .flat_map(|&t| std::iter::repeat_n(scalelong_diffusion::VpSde::model_input(t) as f32, b))
            .collect();
        let t_input = Tensor::new(t_input, device)?;
        let x0 = Tensor::cat(&vec![x0; times], 0)?;
        let (alpha, sigma) = objective.schedule.alpha_sigma_at_inputs(&t_input, &x0)?;
        let eps = noise::randn_like(&x0, &mut rng)?;
        let x_t = (x0.broadcast_mul(&alpha)? + eps.broadcast_mul(&sigma)?)?;
        let delta = (noise::randn_like(&x_t, &mut rng)? * config.probe_eps)?;
        let rob_labels = labels.map(|l| Tensor::cat(&vec![l; 2 * times], 0)).transpose()?;
        Ok(Self {
            val_x_t: val.x_t,
            val_t: val.t_input,
            val_target: val.target,
            val_labels,
            rob_x: Tensor::cat(&[&x_t, &(&x_t + &delta)?], 0)?,
            rob_t: Tensor::cat(&[&t_input, &t_input], 0)?,
            rob_labels,
            rob_delta_norm: delta.flatten_from(1)?.sqr()?.sum(1)?.sqrt()?,
            rob_images: b,
            rob_times: times,
        })
    }

    /// Loss of `model` on the validation batch.
    pub fn val_loss(&self, model: &Backbone, objective: &TrainingObjective) -> Result<f64> {
        let out = model.forward(&self.val_x_t, &self.val_t, self.val_labels.as_ref())?.detach();
        Ok(objective.loss(&out, &self.val_target)?.to_scalar::<f32>()? as f64)
    }

    /// Input sensitivity of `model` at each probe time.
    pub fn robustness(&self, model: &Backbone) -> Result<Vec<f64>> {
        let out = model.forward(&self.rob_x, &self.rob_t, self.rob_labels.as_ref())?.detach();
        let n = self.rob_images * self.rob_times;
        let diff = (out.narrow(0, n, n)? - out.narrow(0, 0, n)?)?.flatten_from(1)?.sqr()?.sum(1)?.sqrt()?;
        let ratio = (diff / &self.rob_delta_norm)?.reshape((self.rob_times, self.rob_images))?.mean(1)?;
        Ok(ratio.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
    }
}
