//! Parameter creation from a seed: each parameter gets its own random stream keyed by its name, so
//! the same config and seed give the same initial weights on every machine, whatever the order in
//! which the model asks for them (candle's own CPU generator cannot be seeded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{init::FanInOut, Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// A `VarBuilder` backend creating seeded `Var`s; `vars()` hands them out afterwards.
#[derive(Clone)]
pub struct SeededVars {
    seed: u64,
    vars: Arc<Mutex<HashMap<String, Var>>>,
}

impl SeededVars {
    pub fn new(seed: u64) -> Self {
        Self { seed, vars: Arc::default() }
    }

    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, device.clone())
    }

    /// The parameters created so far, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v: Vec<_> = self.vars.lock().expect("poisoned").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn values(&self, name: &str, shape: &Shape, init: Init) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(fnv1a(name));
        let n = shape.elem_count();
        let fan_in = || shape.dims().iter().skip(1).product::<usize>().max(1) as f64;
        match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { mean, stdev } => {
                let d = Normal::new(mean, stdev).expect("finite normal");
                (0..n).map(|_| d.sample(&mut rng) as f32).collect()
            }
            Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
            Init::Kaiming { fan, .. } => {
                // Only the fan matters for the bound here: PyTorch's kaiming-uniform(a = sqrt(5)).
                let f = match fan {
                    FanInOut::FanIn => fan_in(),
                    FanInOut::FanOut => shape.dims().first().copied().unwrap_or(1) as f64,
                };
                let b = 1.0 / f.sqrt();
                (0..n).map(|_| rng.random_range(-b..b) as f32).collect()
            }
        }
    }
}

impl SimpleBackend for SeededVars {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut vars = self.vars.lock().expect("poisoned");
        if let Some(v) = vars.get(name) {
            return Ok(v.as_tensor().clone());
        }
        let values = Tensor::from_vec(self.values(name, &shape, init), shape, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&values)?;
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("parameter `{name}` requested without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars.lock().expect("poisoned").contains_key(name)
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
