//! Sample quality of a model: FID (and KID) of its samples against a reference, through the FID
//! Inception network of `scalelong-eval`. Used by the trainer (`[eval]`) and `scalelong fid`.

use candle_core::{DType, Device, Result, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scalelong_backbones::Backbone;
use scalelong_data::ImageDataset;
use scalelong_diffusion::{noise, Sampler, Schedule};
use scalelong_eval::{frechet_distance, kid, FidInception, Kid, Stats, SUBSETS, SUBSET_SIZE};

use crate::config::Autocast;
use crate::sampling::{self, Conditioning};

/// What samples are compared with: statistics, and the features themselves where known (KID
/// needs them).
pub struct Reference {
    pub stats: Stats,
    pub features: Option<Tensor>,
}

impl Reference {
    pub fn from_features(features: Tensor) -> Result<Self> {
        Ok(Self { stats: Stats::from_features(&features)?, features: Some(features) })
    }
}

/// FID, and KID (mean and std over subsets) where the reference has features.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub fid: f64,
    pub kid: Option<Kid>,
}

/// FID and KID of `features` against `reference` (KID with torch-fidelity's 100 subsets of 1000).
pub fn quality(features: &Tensor, reference: &Reference) -> Result<Quality> {
    let fid = frechet_distance(&Stats::from_features(features)?, &reference.stats)?;
    let kid = match &reference.features {
        Some(r) => Some(kid(features, r, SUBSETS, SUBSET_SIZE, 0)?),
        None => None,
    };
    Ok(Quality { fid, kid })
}

pub use scalelong_data::to_uint8;

/// Class labels of the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// An unconditional model.
    None,
    /// Image `i` gets class `i % k`.
    Cycle(usize),
    /// Every image gets this class.
    Fixed(u32),
}

/// What to sample: for an evaluation, a training grid or `scalelong sample`.
#[derive(Debug, Clone)]
pub struct SampleSpec {
    pub n: usize,
    pub batch_size: usize,
    pub channels: usize,
    pub size: usize,
    /// Seed of the noise: batch `k` draws from stream `k` of ChaCha8 seeded with it, so a batch is
    /// the same whatever `n` is (and the first images of two specs with the same seed agree).
    pub seed: u64,
    pub labels: Labels,
    /// Classifier-free guidance: (scale, the null label).
    pub guidance: Option<(f64, u32)>,
    /// Clip predicted clean images to [-1, 1] under this schedule (see `Conditioning::clip_x0`).
    pub clip_x0: Option<Schedule>,
    /// Start from this noise, (N, C, H, W) with N = `n`, instead of drawing it.
    pub init_noise: Option<Tensor>,
    /// The network's GEMMs in bf16 (inside `autocast_bf16`) while sampling; what `each` does with
    /// the images (the Inception network) stays outside.
    pub autocast: Autocast,
}

/// Samples `spec.n` images of `model` batch by batch, handing each batch in [-1, 1] and the images
/// done so far to `each`. The training grids, FID and `scalelong sample` sample through here, so a
/// grid is the first images an evaluation with the same seed would score.
pub fn sample_batches(
    model: &Backbone,
    sampler: &dyn Sampler,
    spec: &SampleSpec,
    device: &Device,
    mut each: impl FnMut(Tensor, usize) -> Result<()>,
) -> Result<()> {
    for (k, start) in (0..spec.n).step_by(spec.batch_size.max(1)).enumerate() {
        let len = spec.batch_size.min(spec.n - start);
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        rng.set_stream(k as u64);
        let x = match &spec.init_noise {
            Some(noise) => noise.narrow(0, start, len)?,
            None => noise::randn((len, spec.channels, spec.size, spec.size), DType::F32, device, &mut rng)?,
        };
        let labels = match spec.labels {
            Labels::None => None,
            Labels::Cycle(k) => {
                Some(Tensor::new((start..start + len).map(|i| (i % k.max(1)) as u32).collect::<Vec<_>>(), device)?)
            }
            Labels::Fixed(c) => Some(Tensor::full(c, len, device)?),
        };
        let cond = Conditioning { labels, guidance: spec.guidance, clip_x0: spec.clip_x0.clone() };
        let images = spec.autocast.run(|| sampling::sample(model, sampler, &x, &cond, &mut rng))?;
        each(images, start + len)?;
    }
    Ok(())
}

/// Inception features of `spec.n` samples of `model` (see [`sample_batches`]), quantised and
/// featurised batch by batch (so memory holds one batch of images); `progress` hears the images done.
pub fn sample_features(
    model: &Backbone,
    sampler: &dyn Sampler,
    net: &FidInception,
    spec: SampleSpec,
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Tensor> {
    let mut parts = Vec::new();
    sample_batches(model, sampler, &spec, device, |images, done| {
        parts.push(net.features(&to_uint8(&images)?)?);
        progress(done);
        Ok(())
    })?;
    Tensor::cat(&parts, 0)
}

/// Inception features of the first `limit` images of a dataset, in batches.
pub fn dataset_features(
    ds: &ImageDataset,
    limit: usize,
    net: &FidInception,
    batch_size: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Tensor> {
    let n = ds.len().min(limit);
    let (c, h, w) = ds.image_shape();
    let mut parts = Vec::new();
    for start in (0..n).step_by(batch_size.max(1)) {
        let len = batch_size.min(n - start);
        let pixels: Vec<u8> = (start..start + len).flat_map(|i| ds.image(i).to_vec()).collect();
        parts.push(net.features(&Tensor::from_vec(pixels, (len, c, h, w), &Device::Cpu)?)?);
        progress(start + len);
    }
    Tensor::cat(&parts, 0)
}
