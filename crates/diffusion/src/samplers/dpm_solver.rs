//! DPM-Solver "fast" (Lu et al. 2022), as the official `dpm_solver_pytorch.py` with
//! `fast_version=True`: K = steps/3 + 1 steps uniform in half log-SNR, orders 3 then 2 or 1 so
//! that exactly `steps` network evaluations are made.

use candle_core::{Result, Tensor};
use rand::RngCore;

use super::{axpby, predict, Sampler};
use crate::discrete::linspace;
use crate::{NoisePredictor, VpSde};

#[derive(Debug, Clone, PartialEq)]
pub struct DpmSolverFast {
    pub sde: VpSde,
    /// Network evaluations.
    pub steps: usize,
    /// End time (official: 1e-4).
    pub eps: f64,
}

impl DpmSolverFast {
    pub fn new(sde: VpSde, steps: usize) -> Self {
        Self { sde, steps, eps: 1e-4 }
    }

    /// The order of each step and the K + 1 times, from T down to eps.
    pub fn plan(&self) -> (Vec<usize>, Vec<f64>) {
        let k = self.steps / 3 + 1;
        let orders = match self.steps % 3 {
            0 => [vec![3; k.saturating_sub(2)], vec![2, 1]].concat(),
            1 => [vec![3; k - 1], vec![1]].concat(),
            _ => [vec![3; k - 1], vec![2]].concat(),
        };
        let (l_t, l_0) = (self.sde.lambda(self.sde.t_max()), self.sde.lambda(self.eps));
        let times = linspace(l_t, l_0, k + 1).into_iter().map(|l| self.sde.inverse_lambda(l)).collect();
        (orders, times)
    }

    /// `exp(log_alpha_u - log_alpha_s) x - sigma_u expm1(r h) eps_s`: the first-order move from s to u.
    fn first(&self, x: &Tensor, eps_s: &Tensor, s: f64, u: f64) -> Result<Tensor> {
        let sde = &self.sde;
        let h = sde.lambda(u) - sde.lambda(s);
        axpby((sde.log_alpha(u) - sde.log_alpha(s)).exp(), x, -sde.sigma(u) * h.exp_m1(), eps_s)
    }

    fn step(&self, model: &dyn NoisePredictor, x: &Tensor, s: f64, t: f64, order: usize) -> Result<Tensor> {
        let sde = &self.sde;
        let eps_at = |x: &Tensor, time: f64| predict(model, x, VpSde::model_input(time));
        let (lambda_s, h) = (sde.lambda(s), sde.lambda(t) - sde.lambda(s));
        let eps_s = eps_at(x, s)?;
        let x_t1 = self.first(x, &eps_s, s, t)?;
        let sigma_phi1 = sde.sigma(t) * h.exp_m1();
        match order {
            1 => Ok(x_t1),
            2 => {
                let r1 = 0.5;
                let s1 = sde.inverse_lambda(lambda_s + r1 * h);
                let eps_s1 = eps_at(&self.first(x, &eps_s, s, s1)?, s1)?;
                x_t1 - ((eps_s1 - &eps_s)? * (0.5 / r1 * sigma_phi1))?
            }
            3 => {
                let (r1, r2) = (1.0 / 3.0, 2.0 / 3.0);
                let (s1, s2) = (sde.inverse_lambda(lambda_s + r1 * h), sde.inverse_lambda(lambda_s + r2 * h));
                let eps_s1 = eps_at(&self.first(x, &eps_s, s, s1)?, s1)?;
                let phi_22 = (r2 * h).exp_m1() / (r2 * h) - 1.0;
                let x_s2 =
                    (self.first(x, &eps_s, s, s2)? - ((&eps_s1 - &eps_s)? * (r2 / r1 * sde.sigma(s2) * phi_22))?)?;
                let eps_s2 = eps_at(&x_s2, s2)?;
                let phi_2 = h.exp_m1() / h - 1.0;
                x_t1 - ((eps_s2 - &eps_s)? * (sde.sigma(t) * phi_2 / r2))?
            }
            _ => candle_core::bail!("DPM-Solver order must be 1, 2 or 3, got {order}"),
        }
    }
}

impl Sampler for DpmSolverFast {
    fn sample(&self, model: &dyn NoisePredictor, x_init: &Tensor, _rng: &mut dyn RngCore) -> Result<Tensor> {
        if self.steps == 0 || !(self.eps > 0.0 && self.eps < self.sde.t_max()) {
            candle_core::bail!(
                "DPM-Solver needs steps >= 1 and 0 < eps < {}, got steps {}, eps {}",
                self.sde.t_max(),
                self.steps,
                self.eps
            );
        }
        let (orders, times) = self.plan();
        let mut x = x_init.clone();
        for (i, &order) in orders.iter().enumerate() {
            x = self.step(model, &x, times[i], times[i + 1], order)?;
        }
        Ok(x)
    }

    fn model_evaluations(&self) -> usize {
        self.plan().0.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_spends_exactly_the_steps() {
        for steps in 1..60 {
            let s = DpmSolverFast::new(VpSde::LINEAR, steps);
            let (orders, times) = s.plan();
            assert_eq!(orders.iter().sum::<usize>(), steps, "steps {steps}: {orders:?}");
            assert_eq!(times.len(), orders.len() + 1);
            assert!((times[0] - 1.0).abs() < 1e-9 && (times[times.len() - 1] - 1e-4).abs() < 1e-12);
        }
        assert_eq!(DpmSolverFast::new(VpSde::LINEAR, 10).plan().0, [3, 3, 3, 1]);
        assert_eq!(DpmSolverFast::new(VpSde::LINEAR, 50).plan().0.last(), Some(&2));
    }
}
