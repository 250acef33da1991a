//! DPM-Solver "fast" (Lu et al. 2022), as the official `dpm_solver_pytorch.py` with
//! `fast_version=True`: K = steps/3 + 1 steps uniform in half log-SNR, orders 3 then 2 or 1 so
//! that exactly `steps` network evaluations are made. Times and coefficients are computed in the
//! official float32 arithmetic by default ([`TimeArithmetic`]).

use candle_core::{Result, Tensor};
use num_traits::Float;
use rand::RngCore;

use super::{axpby, predict, Sampler};
use crate::vp_arith::{with_marginals, Marginals, TimeArithmetic};
use crate::{NoisePredictor, VpSde};

#[derive(Debug, Clone, PartialEq)]
pub struct DpmSolverFast {
    pub sde: VpSde,
    /// Network evaluations.
    pub steps: usize,
    /// End time (official: 1e-4).
    pub eps: f64,
    pub arithmetic: TimeArithmetic,
}

impl DpmSolverFast {
    pub fn new(sde: VpSde, steps: usize) -> Self {
        Self { sde, steps, eps: 1e-4, arithmetic: TimeArithmetic::Official }
    }

    pub fn with_arithmetic(self, arithmetic: TimeArithmetic) -> Self {
        Self { arithmetic, ..self }
    }

    /// The order of each step and the K + 1 times, from T down to eps.
    pub fn plan(&self) -> (Vec<usize>, Vec<f64>) {
        let k = self.steps / 3 + 1;
        let orders = match self.steps % 3 {
            0 => [vec![3; k.saturating_sub(2)], vec![2, 1]].concat(),
            1 => [vec![3; k - 1], vec![1]].concat(),
            _ => [vec![3; k - 1], vec![2]].concat(),
        };
        let times = with_marginals!(self.arithmetic, self.sde, |m| {
            let (l_t, l_0) = (m.lambda(m.c(self.sde.t_max())), m.lambda(m.c(self.eps)));
            m.linspace(l_t, l_0, k + 1).into_iter().map(|l| m.f64(m.inverse_lambda(l))).collect()
        });
        (orders, times)
    }
}

/// One step of order 1, 2 or 3 from s to t, every scalar in the arithmetic of `m`.
fn step<M: Marginals>(m: &M, model: &dyn NoisePredictor, x: &Tensor, s: M::F, t: M::F, order: usize) -> Result<Tensor> {
    let eps_at = |x: &Tensor, time: M::F| predict(model, x, VpSde::model_input(time.into()));
    // exp(log_alpha_u - log_alpha_s) x - sigma_u expm1(r h) eps_s: the first-order move from s to u.
    let first = |eps_s: &Tensor, u: M::F, rh: M::F| {
        axpby((m.log_alpha(u) - m.log_alpha(s)).exp().into(), x, -(m.sigma(u) * rh.exp_m1()).into(), eps_s)
    };
    let (lambda_s, lambda_t) = (m.lambda(s), m.lambda(t));
    let h = lambda_t - lambda_s;
    let eps_s = eps_at(x, s)?;
    let x_t1 = first(&eps_s, t, h)?;
    let sigma_phi1 = m.sigma(t) * h.exp_m1();
    match order {
        1 => Ok(x_t1),
        2 => {
            let r1 = m.c(0.5);
            let s1 = m.inverse_lambda(lambda_s + r1 * h);
            let eps_s1 = eps_at(&first(&eps_s, s1, r1 * h)?, s1)?;
            // (0.5 / r1) sigma_t phi_1 (eps_s1 - eps_s), and 0.5 / r1 = 1.
            x_t1 - ((eps_s1 - &eps_s)? * sigma_phi1.into())?
        }
        3 => {
            let (r1, r2) = (m.c(1.0 / 3.0), m.c(2.0 / 3.0));
            let (s1, s2) = (m.inverse_lambda(lambda_s + r1 * h), m.inverse_lambda(lambda_s + r2 * h));
            let eps_s1 = eps_at(&first(&eps_s, s1, r1 * h)?, s1)?;
            let phi_22 = (r2 * h).exp_m1() / (r2 * h) - m.c(1.0);
            let x_s2 =
                (first(&eps_s, s2, r2 * h)? - ((&eps_s1 - &eps_s)? * (m.c(2.0) * (m.sigma(s2) * phi_22)).into())?)?;
            let eps_s2 = eps_at(&x_s2, s2)?;
            let phi_2 = h.exp_m1() / h - m.c(1.0);
            x_t1 - ((eps_s2 - &eps_s)? * (m.c(1.5) * (m.sigma(t) * phi_2)).into())?
        }
        _ => candle_core::bail!("DPM-Solver order must be 1, 2 or 3, got {order}"),
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
        with_marginals!(self.arithmetic, self.sde, |m| {
            for (i, &order) in orders.iter().enumerate() {
                x = step(&m, model, &x, m.c(times[i]), m.c(times[i + 1]), order)?;
            }
        });
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
        for arithmetic in [TimeArithmetic::Official, TimeArithmetic::Exact] {
            for steps in 1..60 {
                let s = DpmSolverFast::new(VpSde::LINEAR, steps).with_arithmetic(arithmetic);
                let (orders, times) = s.plan();
                assert_eq!(orders.iter().sum::<usize>(), steps, "steps {steps}: {orders:?}");
                assert_eq!(times.len(), orders.len() + 1);
                assert!((times[0] - 1.0).abs() < 1e-6 && (times[times.len() - 1] - 1e-4).abs() < 5e-7);
            }
        }
        assert_eq!(DpmSolverFast::new(VpSde::LINEAR, 10).plan().0, [3, 3, 3, 1]);
        assert_eq!(DpmSolverFast::new(VpSde::LINEAR, 50).plan().0.last(), Some(&2));
        // The official float32 grid ends at 9.974e-5, not at eps (the cancellation in lambda).
        let official = DpmSolverFast::new(VpSde::LINEAR, 10).plan().1;
        let exact = DpmSolverFast::new(VpSde::LINEAR, 10).with_arithmetic(TimeArithmetic::Exact).plan().1;
        assert!((official[4] - 9.974e-5).abs() < 5e-9 && (exact[4] - 1e-4).abs() < 1e-15, "{official:?} {exact:?}");
    }
}
