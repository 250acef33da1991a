//! Where the FID Inception weights are: `--inception PATH`, or where pytorch-fid keeps them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use scalelong_backbones::{checkpoint, params};

use crate::FidInception;

/// pytorch-fid's file name for the weights (`FID_WEIGHTS_URL`'s basename).
pub const FILE_NAME: &str = "pt_inception-2015-12-05-6726825d.pth";
const URL: &str =
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";

/// Where pytorch-fid's `load_state_dict_from_url` caches the file: `$TORCH_HOME/hub/checkpoints`,
/// else `$XDG_CACHE_HOME/torch/hub/checkpoints`, else `~/.cache/torch/hub/checkpoints`.
pub fn torch_cache_path() -> Option<PathBuf> {
    let torch_home = std::env::var_os("TORCH_HOME").map(PathBuf::from).or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(cache.join("torch"))
    })?;
    Some(torch_home.join("hub").join("checkpoints").join(FILE_NAME))
}

/// The weights file to use: `explicit` if given (it must exist), else pytorch-fid's cache.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            candle_core::bail!(
                "--inception {}: no such file; expected the FID Inception weights ({FILE_NAME})",
                p.display()
            );
        }
        return Ok(p.to_path_buf());
    }
    match torch_cache_path() {
        Some(p) if p.is_file() => Ok(p),
        looked => candle_core::bail!(
            "the FID Inception weights are not where pytorch-fid keeps them ({}); download {URL} there \
             (or run pytorch-fid once), or pass --inception PATH",
            looked.map_or("$TORCH_HOME unset and no $HOME".into(), |p| p.display().to_string())
        ),
    }
}

impl FidInception {
    /// Loads pytorch-fid's weights file (`.pth` or `.safetensors`, its parameter names); missing,
    /// unexpected or wrongly shaped tensors give one error naming all of them.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let mut tensors: HashMap<String, Tensor> = checkpoint::read_tensors(path, device)?;
        // BatchNorm's step counter and a classifier (pytorch-fid's file has none) play no part.
        tensors.retain(|k, _| !k.ends_with("num_batches_tracked") && !k.starts_with("fc."));
        let specs = params::param_specs(Self::new)?;
        checkpoint::check(&path.display().to_string(), &specs, &tensors)?;
        checkpoint::check_finite(&path.display().to_string(), &tensors)?;
        Self::new(VarBuilder::from_tensors(tensors, DType::F32, device))
    }
}
