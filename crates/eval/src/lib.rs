//! Sample quality as diffusion papers measure it: pytorch-fid's FID Inception network (pool3
//! features through pytorch-fid's resize and scaling), FID, KID and statistics files that
//! pytorch-fid reads and writes.
//!
//! ```no_run
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{Device, Tensor};
//! use scalelong_eval::{frechet_distance, weights, FidInception, Stats};
//!
//! let net = FidInception::load(&weights::locate(None)?, &Device::Cpu)?;
//! let images = Tensor::zeros((8, 3, 32, 32), candle_core::DType::U8, &Device::Cpu)?;
//! let ours = Stats::from_features(&net.features(&images)?)?;
//! let reference = Stats::read_npz("fid_stats_cifar10_train_pytorch.npz".as_ref())?;
//! println!("FID {}", frechet_distance(&ours, &reference)?);
//! # Ok(()) }
//! ```

mod fid;
pub mod images;
mod inception;
mod kid;
pub mod pipeline;
mod pool;
mod stats;
pub mod weights;

pub use fid::frechet_distance;
pub use inception::FidInception;
pub use kid::{kid, Kid, SUBSETS, SUBSET_SIZE};
pub use stats::Stats;
