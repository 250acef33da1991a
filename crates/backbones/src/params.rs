//! The parameters a model asks for (names and shapes), found without allocating them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// One parameter as the model requests it: its state-dict name and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Shape,
}

/// Answers every request with a zero-stride zero tensor and remembers what was asked.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<ParamSpec>>>);

impl SimpleBackend for Recorder {
    fn get(&self, shape: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut specs = self.0.lock().expect("recorder poisoned");
        if !specs.iter().any(|s| s.name == name) {
            specs.push(ParamSpec { name: name.to_string(), shape: shape.clone() });
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("parameter `{name}` requested without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// The parameters `build` requests, in request order, each name once (shared modules once).
pub fn param_specs<M>(build: impl FnOnce(VarBuilder) -> Result<M>) -> Result<Vec<ParamSpec>> {
    let recorder = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
    build(vb)?;
    let specs = recorder.0.lock().expect("recorder poisoned").clone();
    Ok(specs)
}

/// Total number of scalar parameters.
pub fn count(specs: &[ParamSpec]) -> usize {
    specs.iter().map(|s| s.shape.elem_count()).sum()
}

/// Parameter counts grouped by the first component of the name (`in_blocks`, `pos_embed`, ...),
/// in first-request order.
pub fn count_by_module(specs: &[ParamSpec]) -> Vec<(String, usize)> {
    let mut order: Vec<String> = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for s in specs {
        let top = s.name.split('.').next().unwrap_or(&s.name).to_string();
        if !counts.contains_key(&top) {
            order.push(top.clone());
        }
        *counts.entry(top).or_default() += s.shape.elem_count();
    }
    order
        .into_iter()
        .map(|k| {
            let n = counts[&k];
            (k, n)
        })
        .collect()
}
