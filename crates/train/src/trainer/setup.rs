//! What a run needs before its first step: the data brought to the model's shape, the loader's
//! settings, the class labels check and the diagnostics probe.

use candle_core::{Device, Result};
use scalelong_backbones::Architecture;
use scalelong_data::{DataSpec, ImageDataset, LoaderConfig};
use scalelong_diffusion::TrainingObjective;

use crate::config::{Fit, TrainConfig};
use crate::diagnostics::Probe;

/// The diagnostics probe, from `diagnostics.val_data` or else the training data.
pub(super) fn probe(
    config: &TrainConfig,
    train: &ImageDataset,
    objective: &TrainingObjective,
    device: &Device,
) -> Result<Probe> {
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
pub(super) fn load_data(
    config: &TrainConfig,
    spec: &DataSpec,
) -> std::result::Result<ImageDataset, scalelong_data::DataError> {
    let m = &config.model;
    match config.data.fit {
        Fit::Resize => spec.load(m.in_channels(), m.train_size()),
        Fit::Pad => spec.load_padded(m.in_channels(), m.train_size()),
    }
}

pub(super) fn loader_config(c: &TrainConfig) -> LoaderConfig {
    LoaderConfig { batch_size: c.train.batch_size, seed: c.train.seed, hflip: c.data.hflip, prefetch: 4 }
}

/// For a class-conditional model, checks the class count against the data; returns the "no class"
/// label when training for classifier-free guidance.
pub(super) fn check_classes(config: &TrainConfig, data: &ImageDataset) -> Result<Option<u32>> {
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
