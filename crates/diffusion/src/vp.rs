//! The continuous-time VP-SDE of the official code (`sde.py`, `dpm_solver_pytorch.py`), t in [0, 1].

use serde::{Deserialize, Serialize};

/// `dx = -beta(t)/2 x dt + sqrt(beta(t)) dw`; `x_t = alpha_t x_0 + sigma_t eps` with
/// `alpha_t = sqrt(alpha_bar(t))`, `sigma_t = sqrt(1 - alpha_bar(t))`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VpSde {
    /// beta(t) = beta_min + t (beta_max - beta_min); the official default is 0.1..20.
    Linear { beta_min: f64, beta_max: f64 },
    /// alpha_bar(t) = cos^2((t + s)/(1 + s) pi/2) / cos^2(s/(1 + s) pi/2) (improved DDPM), s = 0.008.
    Cosine { s: f64 },
}

impl Default for VpSde {
    fn default() -> Self {
        Self::LINEAR
    }
}

impl VpSde {
    /// The official schedule: linear beta from 0.1 to 20.
    pub const LINEAR: Self = Self::Linear { beta_min: 0.1, beta_max: 20.0 };
    pub const COSINE: Self = Self::Cosine { s: 0.008 };

    /// Last time a sampler starts from: 1, or 0.9946 for the cosine schedule whose alpha_bar
    /// vanishes at 1 (as DPM-Solver sets it).
    pub fn t_max(&self) -> f64 {
        match self {
            Self::Linear { .. } => 1.0,
            Self::Cosine { .. } => 0.9946,
        }
    }

    /// beta(t), the squared diffusion coefficient.
    pub fn beta(&self, t: f64) -> f64 {
        match *self {
            Self::Linear { beta_min, beta_max } => beta_min + t * (beta_max - beta_min),
            Self::Cosine { s } => {
                (((t + s) / (1.0 + s)) * std::f64::consts::FRAC_PI_2).tan() / (1.0 + s) * std::f64::consts::PI
            }
        }
    }

    /// log(alpha_t) = log(sqrt(alpha_bar(t))).
    pub fn log_alpha(&self, t: f64) -> f64 {
        match *self {
            Self::Linear { beta_min, beta_max } => -0.25 * t * t * (beta_max - beta_min) - 0.5 * t * beta_min,
            Self::Cosine { s } => cosine_log_cos(t, s) - cosine_log_cos(0.0, s),
        }
    }

    pub fn alpha_bar(&self, t: f64) -> f64 {
        (2.0 * self.log_alpha(t)).exp()
    }

    /// sigma_t = sqrt(1 - alpha_bar(t)).
    pub fn sigma(&self, t: f64) -> f64 {
        (-(2.0 * self.log_alpha(t)).exp_m1()).sqrt()
    }

    /// Half log-SNR, lambda_t = log(alpha_t) - log(sigma_t).
    pub fn lambda(&self, t: f64) -> f64 {
        let la = self.log_alpha(t);
        la - 0.5 * (-(2.0 * la).exp_m1()).ln()
    }

    /// The t whose half log-SNR is `lambda`.
    pub fn inverse_lambda(&self, lambda: f64) -> f64 {
        let log_one_plus = log_add_exp(-2.0 * lambda, 0.0); // log(1 + e^(-2 lambda)) = -2 log(alpha)
        match *self {
            Self::Linear { beta_min, beta_max } => {
                let tmp = 2.0 * (beta_max - beta_min) * log_one_plus;
                let delta = beta_min * beta_min + tmp;
                tmp / (delta.sqrt() + beta_min) / (beta_max - beta_min)
            }
            Self::Cosine { s } => {
                let log_alpha = -0.5 * log_one_plus;
                (log_alpha + cosine_log_cos(0.0, s)).exp().acos() * 2.0 * (1.0 + s) / std::f64::consts::PI - s
            }
        }
    }

    /// The network's time input for time t: `t * 999`, as the official models were trained.
    pub fn model_input(t: f64) -> f64 {
        t * 999.0
    }

    /// Inverse of [`VpSde::model_input`].
    pub fn time_from_model_input(t_input: f64) -> f64 {
        t_input / 999.0
    }
}

fn cosine_log_cos(t: f64, s: f64) -> f64 {
    ((t + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2).cos().ln()
}

fn log_add_exp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    m + (-(a - b).abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_hold() {
        for sde in [VpSde::LINEAR, VpSde::COSINE] {
            let mut prev = f64::INFINITY;
            for k in 0..=100 {
                let t = 1e-4 + (sde.t_max() - 1e-4) * k as f64 / 100.0;
                let (ab, sigma) = (sde.alpha_bar(t), sde.sigma(t));
                assert!(ab < prev && ab > 0.0 && ab <= 1.0, "{sde:?}: alpha_bar not decreasing at {t}");
                prev = ab;
                assert!((sigma * sigma + ab - 1.0).abs() < 1e-12, "{sde:?}: sigma^2 + alpha_bar != 1 at {t}");
                let back = sde.inverse_lambda(sde.lambda(t));
                assert!((back - t).abs() < 1e-9, "{sde:?}: inverse_lambda(lambda({t})) = {back}");
                let snr = sde.lambda(t);
                assert!((snr - 0.5 * (ab / (1.0 - ab)).ln()).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn linear_matches_the_closed_form_and_its_beta() {
        let sde = VpSde::LINEAR;
        for t in [0.0, 0.3, 1.0] {
            assert!((sde.alpha_bar(t) - (-(0.1 * t + 9.95 * t * t)).exp()).abs() < 1e-15);
        }
        // d/dt log alpha_bar = -beta(t), for both schedules.
        for sde in [VpSde::LINEAR, VpSde::COSINE] {
            for t in [0.1, 0.5, 0.9] {
                let h = 1e-6;
                let d = (sde.alpha_bar(t + h).ln() - sde.alpha_bar(t - h).ln()) / (2.0 * h);
                assert!((d + sde.beta(t)).abs() < 1e-5 * sde.beta(t), "{sde:?} at {t}: {d} vs {}", -sde.beta(t));
            }
        }
        assert_eq!(VpSde::model_input(0.5), 499.5);
    }
}
