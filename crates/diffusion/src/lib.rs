//! Noise schedules, training objectives and samplers: everything between a noise-prediction network
//! and an image, independent of the backbone.
//!
//! - Schedules: the continuous [`VpSde`] of the official code (linear beta 0.1..20, cosine) and
//!   diffusers' [`DiscreteSchedule`]s. A network's time input is part of the contract: `t * 999`
//!   for the continuous VP-SDE, the integer step for discrete schedules.
//! - [`TrainingObjective`]: t ~ U(0, 1) (or a uniform step), x_t, and the eps / x0 / v target, with
//!   the official loss; [`objective::convert`] between parametrisations; [`drop_labels`] for
//!   classifier-free guidance training.
//! - [`samplers`]: Euler ODE and Euler-Maruyama (official), DPM-Solver fast (official),
//!   DDIM, DPM-Solver++ 2M and DDPM (diffusers), behind one [`Sampler`] trait.
//!
//! Plugging in a model and sampling:
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use rand::SeedableRng;
//! use scalelong_diffusion::samplers::{DpmSolverFast, Sampler};
//! use scalelong_diffusion::{noise, VpSde};
//!
//! # fn main() -> candle_core::Result<()> {
//! // Any closure `(x_t, t_input) -> eps` is a model; here, one that predicts zero noise.
//! let model = |x: &Tensor, _t: &Tensor| x.zeros_like();
//! let mut rng = rand::rngs::StdRng::seed_from_u64(1234);
//! let x_t = noise::randn((4, 3, 32, 32), DType::F32, &Device::Cpu, &mut rng)?;
//! let sampler = DpmSolverFast::new(VpSde::LINEAR, 50);
//! let images = sampler.sample(&model, &x_t, &mut rng)?;
//! assert_eq!(images.dims(), &[4, 3, 32, 32]);
//! # Ok(()) }
//! ```
//!
//! For a class-conditional network, [`Guided`] applies classifier-free guidance.

pub mod analytic;
pub mod discrete;
mod error;
mod model;
pub mod noise;
pub mod objective;
pub mod samplers;
mod schedule;
mod scheduler_config;
mod vp;
mod vp_arith;

pub use discrete::{BetaSchedule, DiscreteSchedule};
pub use error::UnknownName;
pub use model::{ClipX0, Guided, NoisePredictor};
pub use objective::{drop_labels, NoisedBatch, Prediction, TrainingObjective};
pub use samplers::{Sampler, SamplerKind};
pub use schedule::Schedule;
pub use scheduler_config::SchedulerConfig;
pub use vp::VpSde;
pub use vp_arith::TimeArithmetic;
