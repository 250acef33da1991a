//! Every sampler, driven by the exact noise prediction of Gaussian data N(mu, s^2) (the fixture's
//! analytic model), must return samples whose per-dimension mean and standard deviation are within
//! 5 standard errors of mu and s. Stochastic samplers can only be checked this way; deterministic
//! ones must pass too.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::{parity_dir, Fixture};
use rand::SeedableRng;
use scalelong::diffusion::analytic::GaussianData;
use scalelong::diffusion::samplers::{Ddim, Ddpm, DpmSolverFast, DpmSolverPP2M, EulerMaruyama, EulerOde, Sampler};
use scalelong::diffusion::{noise, DiscreteSchedule, Schedule, VpSde};

const SAMPLES: usize = 4096;

fn check(name: &str, sampler: &dyn Sampler, schedule: Schedule, seed: u64) -> Result<()> {
    let fx = Fixture::read(&parity_dir().join("samplers.safetensors"))?;
    let (mu, s) = (fx.tensor("mu")?.to_dtype(DType::F64)?, fx.tensor("s")?.to_dtype(DType::F64)?);
    let model = GaussianData { mu: mu.clone(), s: s.clone(), schedule };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut shape = vec![SAMPLES];
    shape.extend_from_slice(mu.dims());
    let x_init = noise::randn(shape, DType::F32, &Device::Cpu, &mut rng)?;
    let x = sampler.sample(&model, &x_init, &mut rng)?.to_dtype(DType::F64)?;
    let n = SAMPLES as f64;
    let mean = x.mean(0)?;
    let std = (x.broadcast_sub(&mean)?.sqr()?.sum(0)? / (n - 1.0))?.sqrt()?;
    let flat = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f64>());
    let (mean, std, mu, s) = (flat(&mean)?, flat(&std)?, flat(&mu)?, flat(&s)?);
    let mut worst: f64 = 0.0;
    for d in 0..mu.len() {
        let z_mean = (mean[d] - mu[d]) / (s[d] / n.sqrt());
        let z_std = (std[d] - s[d]) / (s[d] / (2.0 * n).sqrt());
        worst = worst.max(z_mean.abs()).max(z_std.abs());
        assert!(z_mean.abs() < 5.0, "{name}: dim {d}: mean {} vs mu {} ({z_mean:.1} standard errors)", mean[d], mu[d]);
        assert!(z_std.abs() < 5.0, "{name}: dim {d}: std {} vs s {} ({z_std:.1} standard errors)", std[d], s[d]);
    }
    println!("{name}: worst deviation {worst:.2} standard errors over {} dimensions", mu.len());
    Ok(())
}

fn vp() -> Schedule {
    Schedule::Vp(VpSde::LINEAR)
}

fn linear() -> DiscreteSchedule {
    DiscreteSchedule::ddpm_linear()
}

#[test]
fn euler_ode() -> Result<()> {
    check("euler ODE, 1000 steps", &EulerOde::new(VpSde::LINEAR, 1000), vp(), 1)
}

#[test]
fn euler_maruyama() -> Result<()> {
    check("Euler-Maruyama, 1000 steps", &EulerMaruyama::new(VpSde::LINEAR, 1000), vp(), 2)
}

#[test]
fn dpm_solver_fast() -> Result<()> {
    check("DPM-Solver fast, 50 steps", &DpmSolverFast::new(VpSde::LINEAR, 50), vp(), 4)?;
    check("DPM-Solver fast, 100 steps", &DpmSolverFast::new(VpSde::LINEAR, 100), vp(), 3)?;
    check("DPM-Solver fast, cosine, 100 steps", &DpmSolverFast::new(VpSde::COSINE, 100), Schedule::Vp(VpSde::COSINE), 5)
}

#[test]
fn ddim() -> Result<()> {
    let d = Schedule::Discrete(linear());
    check("DDIM eta 0, 500 steps", &Ddim::new(linear(), 500, 0.0), d.clone(), 6)?;
    check("DDIM eta 0.5, 500 steps", &Ddim::new(linear(), 500, 0.5), d.clone(), 7)?;
    check("DDIM eta 1, 500 steps", &Ddim::new(linear(), 500, 1.0), d, 8)
}

#[test]
fn dpm_solver_pp_2m() -> Result<()> {
    check("DPM-Solver++ 2M, 200 steps", &DpmSolverPP2M::new(linear(), 200), Schedule::Discrete(linear()), 9)
}

#[test]
fn ddpm() -> Result<()> {
    check("DDPM, 1000 steps", &Ddpm::new(linear(), 1000), Schedule::Discrete(linear()), 10)?;
    let cosine = DiscreteSchedule::new("squaredcos_cap_v2".parse().map_err(anyhow::Error::msg)?, 1000);
    check("DDPM cosine, 1000 steps", &Ddpm::new(cosine.clone(), 1000), Schedule::Discrete(cosine), 11)
}
