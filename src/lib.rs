//! scalelong: diffusion training with scaled long skip connections (ScaleLong, NeurIPS 2023), on Candle.
//!
//! This facade re-exports the workspace's crates under one name:
//! - [`lsc_scaling`]: the CS / LS scaling of long skips, independent of any backbone;
//! - [`backbones`]: U-ViT and diffusers' conv UNet2DModel, built from official checkpoints;
//! - [`diffusion`]: noise schedules, objectives and samplers;
//! - [`data`]: datasets and batching;
//! - [`eval`]: sample quality (pytorch-fid's Inception network, FID, KID);
//! - [`train`]: the training loop, checkpoints and sampling helpers.
//!
//! Loading an official U-ViT checkpoint with CS scaling and predicting noise:
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use scalelong::backbones::{Architecture, Network, UViTConfig};
//!
//! # fn main() -> anyhow::Result<()> {
//! let cfg = UViTConfig::preset("cifar10-uvit-s2")?.with_scaling("cs:0.5".parse()?);
//! let model = cfg.load("nnet_ema.pth".as_ref(), DType::F32, &Device::Cpu)?;
//! let x_t = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &Device::Cpu)?;
//! let t = Tensor::new(&[0.5f32; 4], &Device::Cpu)?;
//! let eps = model.forward(&x_t, &(t * 999.0)?, None)?;
//! # Ok(()) }
//! ```

pub use scalelong_backbones as backbones;
pub use scalelong_data as data;
pub use scalelong_diffusion as diffusion;
pub use scalelong_eval as eval;
pub use scalelong_lsc_scaling as lsc_scaling;
pub use scalelong_train as train;
