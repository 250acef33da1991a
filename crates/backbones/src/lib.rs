//! Diffusion backbones (U-ViT, diffusers' conv UNet2DModel) whose long skip connections are scaled as ScaleLong proposes.
//!
//! Each backbone is a plain struct built from a `VarBuilder` with the official parameter names and
//! takes its skip scaling from [`scalelong_lsc_scaling::SkipScaling`]. [`checkpoint`] loads official
//! weights (`.safetensors`, `.pth`) with errors that name what does not fit.

mod architecture;
mod backbone;
pub mod checkpoint;
mod flops;
mod nn;
pub mod ops;
pub mod params;
mod skip;
mod taps;
mod timesteps;
pub mod torch_save;
pub mod unet;
pub mod uvit;
pub mod weights;

pub use architecture::{is_gate_param, Architecture, Network, GATE_PREFIX};
pub use backbone::{Backbone, ModelConfig, ARCHS};
pub use scalelong_lsc_scaling::{SkipFactor, SkipScaling};
pub use taps::Taps;
pub use timesteps::Timesteps;
pub use unet::{UNet2D, UNet2DConfig};
pub use uvit::{UViT, UViTConfig};
