//! The arithmetic a VP sampler computes its times and step coefficients in.
//!
//! The official samplers (`dpm_solver_pytorch.py`, `sde.py`) hold times in float32 tensors
//! whatever the dtype of x: `torch.tensor(T)`, `torch.linspace`, `inverse_lambda` and every step
//! coefficient are float32. Near t = 1e-4, `1 - exp(2 log_alpha)` cancels in float32, so the
//! official DPM-Solver grid differs from the exact one by a relative 1e-4 to 5e-4 (10 steps:
//! `[1, 0.680117, 0.194040, 0.0106810, 9.974e-5]` against `[1, 0.680164, 0.194147, 0.0106948,
//! 1e-4]`), which a trained network turns into visible differences in its samples.
//! [`TimeArithmetic::Official`] repeats the official float32 operations one by one (same formulas,
//! same order, constants rounded to float32 as torch does with Python scalars);
//! [`TimeArithmetic::Exact`] uses float64 and cancellation-free formulas.

use num_traits::Float;

use crate::VpSde;

/// Which arithmetic a VP sampler (DPM-Solver, Euler) uses for its times and coefficients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeArithmetic {
    /// float32, operation by operation as the official code: samples match the official sampler's.
    #[default]
    Official,
    /// float64 with cancellation-free formulas: the grid the algorithm describes.
    Exact,
}

/// The VP marginals in one float type. Samplers are written once over this trait.
pub(crate) trait Marginals {
    type F: Float + Into<f64>;
    /// A Python float constant as the arithmetic sees it (torch rounds it to float32).
    fn c(&self, v: f64) -> Self::F {
        <Self::F as num_traits::NumCast>::from(v).expect("finite constant")
    }
    /// A value of this arithmetic as f64 (exact).
    fn f64(&self, v: Self::F) -> f64 {
        v.into()
    }
    fn log_alpha(&self, t: Self::F) -> Self::F;
    fn sigma(&self, t: Self::F) -> Self::F;
    fn lambda(&self, t: Self::F) -> Self::F;
    fn inverse_lambda(&self, lambda: Self::F) -> Self::F;
    /// `n` points from `a` to `b` as the official code lays them out.
    fn linspace(&self, a: Self::F, b: Self::F, n: usize) -> Vec<Self::F>;
    /// beta(t), and the squared diffusion g(t)^2 as `sde.py` forms it (`diffusion ** 2`).
    fn beta_g2(&self, t: Self::F) -> (Self::F, Self::F);
    /// `1 / sqrt(1 - alpha_bar(t))`, the score's scale as `sde.py` computes it.
    fn inv_sigma_sde(&self, t: Self::F) -> Self::F;
}

pub(crate) struct Exact(pub VpSde);

impl Marginals for Exact {
    type F = f64;
    fn log_alpha(&self, t: f64) -> f64 {
        self.0.log_alpha(t)
    }
    fn sigma(&self, t: f64) -> f64 {
        self.0.sigma(t)
    }
    fn lambda(&self, t: f64) -> f64 {
        self.0.lambda(t)
    }
    fn inverse_lambda(&self, lambda: f64) -> f64 {
        self.0.inverse_lambda(lambda)
    }
    fn linspace(&self, a: f64, b: f64, n: usize) -> Vec<f64> {
        crate::discrete::linspace(a, b, n)
    }
    fn beta_g2(&self, t: f64) -> (f64, f64) {
        (self.0.beta(t), self.0.beta(t))
    }
    fn inv_sigma_sde(&self, t: f64) -> f64 {
        1.0 / self.0.sigma(t)
    }
}

/// float32 as the official `NoiseScheduleVP` (DPM-Solver) and `VPSDE` / `VPSDECosine` (Euler).
pub(crate) struct Official(pub VpSde);

/// The cosine schedule's angle `(t + s) / (1 + s) * pi / 2`, in float32 as the official code.
fn angle(t: f32, s: f64) -> f32 {
    (t + s as f32) / (1.0 + s) as f32 * std::f64::consts::PI as f32 / 2.0
}

/// `cosine_log_alpha_0 = log(cos(s / (1 + s) * pi / 2))`, a Python float (float64).
fn cosine_log_alpha_0(s: f64) -> f64 {
    (s / (1.0 + s) * std::f64::consts::FRAC_PI_2).cos().ln()
}

impl Marginals for Official {
    type F = f32;
    fn log_alpha(&self, t: f32) -> f32 {
        match self.0 {
            // -0.25 * t ** 2 * (beta_1 - beta_0) - 0.5 * t * beta_0
            VpSde::Linear { beta_min, beta_max } => {
                t * t * -0.25 * (beta_max - beta_min) as f32 - t * 0.5 * beta_min as f32
            }
            VpSde::Cosine { s } => angle(t, s).cos().ln() - cosine_log_alpha_0(s) as f32,
        }
    }
    fn sigma(&self, t: f32) -> f32 {
        (1.0 - (2.0 * self.log_alpha(t)).exp()).sqrt()
    }
    fn lambda(&self, t: f32) -> f32 {
        let lmc = self.log_alpha(t);
        lmc - 0.5 * (1.0 - (2.0 * lmc).exp()).ln()
    }
    fn inverse_lambda(&self, lambda: f32) -> f32 {
        let log_add = {
            // torch.logaddexp(-2 lambda, 0): max + log1p(exp(-|a - b|))
            let a = -2.0 * lambda;
            a.max(0.0) + (-a.abs()).exp().ln_1p()
        };
        match self.0 {
            VpSde::Linear { beta_min, beta_max } => {
                let tmp = (2.0 * (beta_max - beta_min)) as f32 * log_add;
                let delta = (beta_min * beta_min) as f32 + tmp;
                tmp / (delta.sqrt() + beta_min as f32) / (beta_max - beta_min) as f32
            }
            VpSde::Cosine { s } => {
                let log_alpha = -0.5 * log_add;
                (log_alpha + cosine_log_alpha_0(s) as f32).exp().acos() * 2.0 * (1.0 + s) as f32
                    / std::f64::consts::PI as f32
                    - s as f32
            }
        }
    }
    fn linspace(&self, a: f32, b: f32, n: usize) -> Vec<f32> {
        crate::discrete::torch_linspace_f32(a, b, n)
    }
    fn beta_g2(&self, t: f32) -> (f32, f32) {
        let beta = match self.0 {
            // beta_0 + t * (beta_1 - beta_0)
            VpSde::Linear { beta_min, beta_max } => beta_min as f32 + t * (beta_max - beta_min) as f32,
            // tan((t + s) / (1 + s) * pi / 2) / (1 + s) * pi
            VpSde::Cosine { s } => angle(t, s).tan() / (1.0 + s) as f32 * std::f64::consts::PI as f32,
        };
        let g = beta.sqrt();
        (beta, g * g)
    }
    fn inv_sigma_sde(&self, t: f32) -> f32 {
        let cum_beta = match self.0 {
            // 1 - exp(-(beta_0 * (t - 0) + (beta_1 - beta_0) * (t ** 2 - 0 ** 2) * 0.5))
            VpSde::Linear { beta_min, beta_max } => {
                1.0 - (-(beta_min as f32 * t + (beta_max - beta_min) as f32 * (t * t) * 0.5)).exp()
            }
            // 1 - F(t) / F0, F(t) = cos((t + s) / (1 + s) * pi / 2) ** 2
            VpSde::Cosine { s } => {
                let f0 = (s / (1.0 + s) * std::f64::consts::PI / 2.0).cos().powi(2);
                let c = angle(t, s).cos();
                1.0 - c * c / f0 as f32
            }
        };
        1.0 / cum_beta.sqrt()
    }
}

/// Runs `body` with the marginals of `arithmetic` (the samplers' one entry point).
macro_rules! with_marginals {
    ($arith:expr, $sde:expr, |$m:ident| $body:expr) => {
        match $arith {
            $crate::vp_arith::TimeArithmetic::Official => {
                let $m = $crate::vp_arith::Official($sde);
                $body
            }
            $crate::vp_arith::TimeArithmetic::Exact => {
                let $m = $crate::vp_arith::Exact($sde);
                $body
            }
        }
    };
}
pub(crate) use with_marginals;

#[cfg(test)]
mod tests {
    use super::*;

    /// The official 10-step DPM-Solver grid, as the issue that found it printed it (6 digits), and
    /// the exact one; the float32 arithmetic gives the first, the float64 one the second.
    #[test]
    fn official_grid_is_the_float32_one() {
        let grid = |m: &dyn Fn(f64) -> f64, lt: f64, l0: f64| -> Vec<f64> {
            crate::discrete::linspace(lt, l0, 5).into_iter().map(m).collect()
        };
        let o = Official(VpSde::LINEAR);
        let (lt, l0) = (o.lambda(1.0), o.lambda(1e-4));
        let official: Vec<f64> = o.linspace(lt, l0, 5).into_iter().map(|l| o.inverse_lambda(l) as f64).collect();
        let e = Exact(VpSde::LINEAR);
        let exact = grid(&|l| e.inverse_lambda(l), e.lambda(1.0), e.lambda(1e-4));
        let want_official = [1.0, 0.680117, 0.194040, 0.0106810, 9.974e-5];
        let want_exact = [1.0, 0.680164, 0.194147, 0.0106948, 1e-4];
        // Half a unit in the last printed digit: six significant digits, four for 9.974e-5.
        let tol = [5e-6, 5e-6, 5e-6, 5e-6, 5e-5];
        for i in 0..5 {
            assert!((official[i] / want_official[i] - 1.0).abs() < tol[i], "official {official:?}");
            assert!((exact[i] / want_exact[i] - 1.0).abs() < tol[i], "exact {exact:?}");
        }
    }

    #[test]
    fn both_arithmetics_agree_away_from_the_cancellation() {
        for sde in [VpSde::LINEAR, VpSde::COSINE] {
            let (o, e) = (Official(sde), Exact(sde));
            for t in [0.05f32, 0.3, 0.7, 0.99] {
                let tt = t as f64;
                assert!((o.lambda(t) as f64 - e.lambda(tt)).abs() < 1e-5, "{sde:?} lambda({t})");
                assert!((o.sigma(t) as f64 - e.sigma(tt)).abs() < 1e-6);
                assert!((o.inverse_lambda(o.lambda(t)) as f64 - tt).abs() < 1e-5 * tt.max(0.1));
                let (b, g2) = o.beta_g2(t);
                assert!((b as f64 - sde.beta(tt)).abs() < 1e-5 * sde.beta(tt) && (g2 - b).abs() < 1e-5 * b);
                assert!((o.inv_sigma_sde(t) as f64 * e.sigma(tt) - 1.0).abs() < 1e-5);
            }
        }
    }
}
