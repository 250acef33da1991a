//! Training diffusion models (U-ViT or the conv UNet) with scaled long skips: AdamW exactly as PyTorch, EMA,
//! warm-up, clipping, accumulation, atomic and exactly resumable checkpoints, JSONL metrics and
//! sample grids. The `scalelong train` command is a thin shell around [`Trainer`].

pub mod checkpoint;
pub mod config;
pub mod diagnostics;
mod error;
pub mod evaluation;
mod init;
pub mod metrics;
pub mod optim;
pub mod run_dir;
pub mod sampling;
pub mod stability;
pub mod study;
pub mod tensorboard;
mod trainer;

pub use config::TrainConfig;
pub use error::ConfigError;
pub use init::SeededVars;
pub use optim::{AdamW, AdamWConfig};
pub use run_dir::Start;
pub use trainer::{Event, FedBatch, RunEnd, StepReport, Trainer};
