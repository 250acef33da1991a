//! What the rest of the workspace asks of a backbone: [`Architecture`] for its config (build,
//! parameters, reports, diagnostics), [`Network`] for the built model (forward, with or without
//! taps). A new backbone implements both and gets a variant in [`crate::ModelConfig`].

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use scalelong_lsc_scaling::SkipScaling;

use crate::params::ParamSpec;
use crate::Taps;

/// Prefix of the LS calibration parameters (`se` shared, `se.{k}` per skip, `k = 0` merged first).
pub const GATE_PREFIX: &str = "se";

/// A backbone's config: everything trainers, diagnostics, `info` and benchmarks need.
pub trait Architecture {
    type Model: Network;

    /// The `arch` key of a `[model]` table (`uvit`, `unet2d`).
    fn arch(&self) -> &'static str;

    /// Builds the model; a `VarMap`-backed builder gives the official initialisation.
    fn build(&self, vb: VarBuilder) -> Result<Self::Model>;

    /// Checks the config can be built and trained, naming the key and what it expects.
    fn validate_for_training(&self) -> Result<()>;

    fn scaling(&self) -> SkipScaling;
    fn set_scaling(&mut self, scaling: SkipScaling);
    fn in_channels(&self) -> usize;
    /// Square image side the model is built for (`None`: a UNet without `sample_size`).
    fn image_size(&self) -> Option<usize>;
    /// Number of class labels of a class-conditional model.
    fn num_classes(&self) -> Option<usize>;
    /// Number of long skips.
    fn num_skips(&self) -> usize;
    /// Encoder blocks; as many decoder blocks follow the mid-block.
    fn encoder_blocks(&self) -> usize;
    /// Which block a parameter belongs to, as an index in execution order (encoder blocks,
    /// mid-block, decoder blocks); `None` for embeddings and the output head.
    fn block_of(&self, param: &str) -> Option<usize>;
    /// The module that merges skip `i` (1 = outermost), for reports.
    fn merged_by(&self, skip: usize) -> String;
    /// One line for reports, e.g. `U-ViT 32x32x1, patch 4, width 64, depth 12 (6 long skips), 2 heads`.
    fn describe(&self) -> String;
    /// FLOPs of one forward pass for one image (matmuls and convolutions).
    fn forward_flops(&self) -> f64;

    /// The parameters this config asks for (names and shapes), without allocating them.
    fn param_specs(&self) -> Result<Vec<ParamSpec>> {
        crate::params::param_specs(|vb| self.build(vb))
    }

    /// Loads weights from a `.safetensors` or `.pth` file with the checkpoint's own names;
    /// missing, unexpected or wrongly shaped tensors give one error naming all of them.
    fn load(&self, path: &Path, dtype: DType, device: &Device) -> Result<Self::Model> {
        crate::checkpoint::load_checked(path, &self.param_specs()?, dtype, device, |vb| self.build(vb))
    }

    /// The LS calibration parameter that gates skip `i` (1 = outermost), if the mode learns one.
    fn gate_name(&self, skip: usize) -> Option<String> {
        match self.scaling() {
            SkipScaling::Learned => Some(GATE_PREFIX.to_string()),
            SkipScaling::LearnedPerSkip => Some(format!("{GATE_PREFIX}.{}", self.num_skips() - skip)),
            _ => None,
        }
    }
}

/// Whether a parameter belongs to an LS calibration network (absent from unscaled pretrained weights).
pub fn is_gate_param(name: &str) -> bool {
    name.strip_prefix(GATE_PREFIX).is_some_and(|rest| rest.starts_with('.'))
}

/// Which block a parameter belongs to, for a model whose parameters are named `{encoder}.{k}.*`,
/// `{mid}.*` and `{decoder}.{k}.*` with `n` encoder blocks.
pub(crate) fn numbered_block(name: &str, n: usize, encoder: &str, mid: &str, decoder: &str) -> Option<usize> {
    let numbered =
        |prefix: &str| name.strip_prefix(prefix)?.strip_prefix('.')?.split('.').next()?.parse::<usize>().ok();
    if let Some(k) = numbered(encoder) {
        Some(k)
    } else if name.strip_prefix(mid).is_some_and(|r| r.starts_with('.')) {
        Some(n)
    } else {
        numbered(decoder).map(|k| n + 1 + k)
    }
}

/// A built backbone.
pub trait Network {
    /// The network output for noisy images `x` (B, C, H, W) at the network's time input `t` (B,)
    /// (U-ViT: t * 999 of the continuous VP-SDE; UNet: the discrete step) and, for
    /// class-conditional models, labels `y` (B,); records skips, blocks and gates into `taps`.
    fn run(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>, taps: Option<&mut Taps>) -> Result<Tensor>;

    fn forward(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        self.run(x, t, y, None)
    }

    /// As [`Network::forward`], also recording every skip before and after scaling, every block's
    /// output and the LS gates into `taps`.
    fn forward_with_taps(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>, taps: &mut Taps) -> Result<Tensor> {
        *taps = Taps::default();
        self.run(x, t, y, Some(taps))
    }
}
