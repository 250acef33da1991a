//! scalelong: diffusion training with scaled long skip connections (ScaleLong, NeurIPS 2023), on Candle.
//!
//! This facade re-exports the workspace's crates under one name:
//! - [`lsc_scaling`]: the CS / LS scaling of long skips, independent of any backbone;
//! - [`backbones`]: U-ViT (and later a conv UNet) built from official checkpoints;
//! - [`diffusion`]: noise schedules, objectives and samplers;
//! - [`data`]: datasets and batching.

pub use scalelong_backbones as backbones;
pub use scalelong_data as data;
pub use scalelong_diffusion as diffusion;
pub use scalelong_lsc_scaling as lsc_scaling;
