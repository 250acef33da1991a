//! Discrete DDPM schedules as diffusers names them (`linear`, `scaled_linear`, `squaredcos_cap_v2`).

use crate::UnknownName;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How the betas of a discrete schedule are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BetaSchedule {
    /// betas evenly spaced from `start` to `end` (DDPM: 1e-4 to 0.02).
    Linear { start: f64, end: f64 },
    /// sqrt(betas) evenly spaced (Stable Diffusion: 0.00085 to 0.012).
    ScaledLinear { start: f64, end: f64 },
    /// Improved DDPM's cosine alpha_bar, betas capped at 0.999.
    SquaredcosCapV2,
}

impl BetaSchedule {
    /// A schedule by diffusers' name (`beta_schedule`) with its `beta_start` and `beta_end`
    /// (which `squaredcos_cap_v2` ignores).
    pub fn named(name: &str, start: f64, end: f64) -> Result<Self, UnknownName> {
        match name {
            "linear" => Ok(Self::Linear { start, end }),
            "scaled_linear" => Ok(Self::ScaledLinear { start, end }),
            "squaredcos_cap_v2" => Ok(Self::SquaredcosCapV2),
            _ => Err(UnknownName {
                kind: "beta schedule",
                name: name.to_string(),
                expected: "linear, scaled_linear or squaredcos_cap_v2".to_string(),
            }),
        }
    }
}

impl FromStr for BetaSchedule {
    type Err = UnknownName;
    /// diffusers' names with its default endpoints: `linear`, `scaled_linear`, `squaredcos_cap_v2`.
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        let (start, end) = if s == "scaled_linear" { (0.00085, 0.012) } else { (1e-4, 0.02) };
        Self::named(s, start, end)
    }
}

/// A discrete schedule of `len()` steps: `x_n = sqrt(alpha_bar_n) x_0 + sqrt(1 - alpha_bar_n) eps`.
/// The network's time input is the integer step `n`.
///
/// Values are those diffusers computes, to the bit: betas in float32 (`torch.linspace` in float32,
/// or float64 cosine betas rounded to float32), `alphas = 1 - betas` in float32, and their
/// cumulative product accumulated in float64 and stored in float32 (as `torch.cumprod` on CPU).
#[derive(Debug, Clone, PartialEq)]
pub struct DiscreteSchedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
}

impl DiscreteSchedule {
    pub const DEFAULT_STEPS: usize = 1000;

    pub fn new(kind: BetaSchedule, num_train_timesteps: usize) -> Self {
        let n = num_train_timesteps;
        let betas: Vec<f32> = match kind {
            BetaSchedule::Linear { start, end } => torch_linspace_f32(start as f32, end as f32, n),
            BetaSchedule::ScaledLinear { start, end } => {
                torch_linspace_f32(start.sqrt() as f32, end.sqrt() as f32, n).into_iter().map(|b| b * b).collect()
            }
            BetaSchedule::SquaredcosCapV2 => {
                let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..n)
                    .map(|i| {
                        (1.0 - alpha_bar((i + 1) as f64 / n as f64) / alpha_bar(i as f64 / n as f64)).min(0.999) as f32
                    })
                    .collect()
            }
        };
        let alphas_cumprod = betas
            .iter()
            .scan(1.0f64, |acc, &b| {
                *acc *= (1.0f32 - b) as f64;
                Some(*acc as f32 as f64)
            })
            .collect();
        Self { betas: betas.into_iter().map(f64::from).collect(), alphas_cumprod }
    }

    /// The DDPM schedule: linear betas 1e-4..0.02 over 1000 steps.
    pub fn ddpm_linear() -> Self {
        Self::new(BetaSchedule::Linear { start: 1e-4, end: 0.02 }, Self::DEFAULT_STEPS)
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// alpha_bar at step `n` (panics past the end, like indexing).
    pub fn alpha_bar(&self, n: usize) -> f64 {
        self.alphas_cumprod[n]
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` on CPU, to the bit: a fused multiply-add from
/// `start` for the first half, from `end` for the second.
pub(crate) fn torch_linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n < 2 {
        return vec![start; n];
    }
    let step = (end - start) / (n - 1) as f32;
    (0..n)
        .map(|i| if i < n / 2 { step.mul_add(i as f32, start) } else { (-step).mul_add((n - 1 - i) as f32, end) })
        .collect()
}

/// `numpy.linspace` in f64: `start + i * step`, the last point exactly `end`.
pub(crate) fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f64;
            (0..n).map(|i| if i == n - 1 { end } else { start + i as f64 * step }).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_decrease_and_stay_in_range() {
        for name in ["linear", "scaled_linear", "squaredcos_cap_v2"] {
            let s = DiscreteSchedule::new(name.parse().unwrap(), 1000);
            assert_eq!(s.len(), 1000);
            assert!(s.alphas_cumprod().windows(2).all(|w| w[1] <= w[0] && w[1] > 0.0), "{name}");
            assert!(s.alpha_bar(999) < 0.01 && s.alpha_bar(0) > 0.99, "{name}");
            assert!(s.betas().iter().all(|&b| b > 0.0 && b <= 0.999f32 as f64), "{name}");
        }
        let lin = DiscreteSchedule::ddpm_linear();
        assert_eq!((lin.betas()[0], lin.betas()[999]), (1e-4f32 as f64, 0.02f32 as f64));
        let a1 = ((1.0 - 1e-4f32) as f64 * (1.0 - lin.betas()[1] as f32) as f64) as f32 as f64;
        assert_eq!(lin.alpha_bar(1), a1);
        assert!("cosine".parse::<BetaSchedule>().unwrap_err().to_string().contains("squaredcos_cap_v2"));
    }
}
