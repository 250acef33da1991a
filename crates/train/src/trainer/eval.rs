//! `[eval]`: FID and KID of the EMA weights during training. The network and the reference are
//! loaded at the first evaluation; a reference dataset's features are cached in the run folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Result, Tensor};
use scalelong_data::DataSpec;
use scalelong_eval::{weights as inception_weights, FidInception, Stats};

use super::setup::load_data;
use super::Trainer;
use crate::checkpoint;
use crate::evaluation::{self, Quality, Reference};

pub(super) struct Evaluator {
    net: FidInception,
    reference: Reference,
}

/// Where a reference dataset's features are kept between evaluations and resumes.
const CACHE: &str = "fid_reference.safetensors";

impl Trainer {
    /// FID (and KID) of `eval.num_samples` samples of the EMA weights, from the same seeded noise
    /// at every evaluation.
    pub fn evaluate(&mut self) -> Result<Quality> {
        if self.evaluator.is_none() {
            self.evaluator = Some(self.load_evaluator()?);
        }
        let ev = self.evaluator.as_ref().expect("loaded above");
        let e = &self.config.eval;
        let model = self.ema_model()?;
        let (sampler, mut spec) = self.sample_setup(e.num_samples, e.batch_size, 2, (e.sampler, e.steps, e.clip_x0))?;
        spec.autocast = e.autocast;
        let started = std::time::Instant::now();
        let features = evaluation::sample_features(&model, sampler.as_ref(), &ev.net, spec, &self.device, &mut |_| {})?;
        let q = evaluation::quality(&features, &ev.reference)?;
        tracing::info!(step = self.step, fid = q.fid, kid = ?q.kid.map(|k| k.mean), seconds = started.elapsed().as_secs_f64(), "evaluated");
        Ok(q)
    }

    /// Computes the reference features into the run folder's cache (unless it holds them already)
    /// and returns the cache's path, or `None` when the reference is a statistics file. A study
    /// does this once and copies the file into each run's folder.
    pub fn cache_reference(&mut self) -> Result<Option<PathBuf>> {
        if self.config.eval.reference.ends_with(".npz") {
            return Ok(None);
        }
        if self.evaluator.is_none() {
            self.evaluator = Some(self.load_evaluator()?);
        }
        Ok(Some(self.run_dir.join(CACHE)))
    }

    fn load_evaluator(&self) -> Result<Evaluator> {
        let e = &self.config.eval;
        let explicit = (!e.inception.is_empty()).then(|| PathBuf::from(&e.inception));
        let path = inception_weights::locate(explicit.as_deref())
            .map_err(|err| candle_core::Error::Msg(format!("eval.inception: {err}")))?;
        let net = FidInception::load(&path, &self.device)?;
        let reference = if e.reference.ends_with(".npz") {
            let stats = Stats::read_npz(Path::new(&e.reference))
                .map_err(|err| candle_core::Error::Msg(format!("eval.reference: {err}")))?;
            Reference { stats, features: None }
        } else {
            Reference::from_features(self.reference_features(&net)?)?
        };
        Ok(Evaluator { net, reference })
    }

    /// Features of the reference dataset (`eval.reference`, else the training data) as the model
    /// sees it, from the run folder's cache when it was made from the same data.
    fn reference_features(&self, net: &FidInception) -> Result<Tensor> {
        let e = &self.config.eval;
        let spec_text = if e.reference.is_empty() { &self.config.data.spec } else { &e.reference };
        let key = format!("{spec_text} (first {})", e.reference_images);
        let cache = self.run_dir.join(CACHE);
        if let Some(t) = read_cache(&cache, &key, &self.device) {
            return Ok(t);
        }
        let spec: DataSpec = spec_text
            .parse()
            .map_err(|err| candle_core::Error::Msg(format!("eval.reference = {spec_text:?}: {err}")))?;
        let ds =
            load_data(&self.config, &spec).map_err(|err| candle_core::Error::Msg(format!("eval.reference: {err}")))?;
        tracing::info!(reference = %key, images = ds.len().min(e.reference_images), "computing reference features");
        let features = evaluation::dataset_features(&ds, e.reference_images, net, e.batch_size, &mut |_| {})?;
        let meta = HashMap::from([("reference".to_string(), key)]);
        checkpoint::save(&cache, &[("features".to_string(), features.clone())], meta)?;
        Ok(features)
    }
}

fn read_cache(path: &Path, key: &str, device: &Device) -> Option<Tensor> {
    let bytes = std::fs::read(path).ok()?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    if header.metadata().as_ref()?.get("reference")? != key {
        return None;
    }
    candle_core::safetensors::load_buffer(&bytes, device).ok()?.remove("features")
}
