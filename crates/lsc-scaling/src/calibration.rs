//! The LS calibration module: a tiny squeeze-and-excitation network that turns a skip into a gate.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

use crate::ScalingError;

/// The official reduction ratio `r` of the LS calibration module.
pub const DEFAULT_REDUCTION: usize = 16;

/// LS gate over one axis of a skip: average the skip over every other non-batch axis, then
/// `Linear(W, W/r) -> ReLU -> Linear(W/r, W) -> Sigmoid`, one gate per element of the gated axis.
///
/// U-ViT gates tokens (axis 1 of `(B, L, D)`); a conv UNet gates channels (axis 1 of `(B, C, H, W)`).
/// Parameters are `layer1.{weight,bias}` and `layer2.{weight,bias}` under the builder's prefix, the
/// official names, initialised as PyTorch's default `Linear` (uniform in ±1/sqrt(fan_in)).
#[derive(Debug, Clone)]
pub struct Calibration {
    layer1: Linear,
    layer2: Linear,
    axis: usize,
}

impl Calibration {
    /// A gate for an axis of size `width` at position `axis` (>= 1; 0 is the batch) with
    /// reduction `reduction`. The hidden width `width / reduction` must be at least 1.
    pub fn new(width: usize, reduction: usize, axis: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = width.checked_div(reduction).unwrap_or(0);
        if hidden == 0 {
            return Err(candle_core::Error::wrap(ScalingError::EmptyCalibration { width, reduction }));
        }
        if axis == 0 {
            return Err(candle_core::Error::wrap(ScalingError::GateAxis { axis, dims: vec![] }));
        }
        Ok(Self {
            layer1: torch_default_linear(width, hidden, vb.pp("layer1"))?,
            layer2: torch_default_linear(hidden, width, vb.pp("layer2"))?,
            axis,
        })
    }

    /// Number of parameters of a calibration module over `width` with `reduction`.
    pub fn num_params(width: usize, reduction: usize) -> usize {
        let hidden = width / reduction.max(1);
        2 * width * hidden + hidden + width
    }

    /// The gate in (0, 1), shaped to broadcast against `skip`: size `W` on the gated axis, 1 on
    /// every other non-batch axis.
    pub fn gate(&self, skip: &Tensor) -> Result<Tensor> {
        let rank = skip.rank();
        if self.axis >= rank {
            return Err(candle_core::Error::wrap(ScalingError::GateAxis {
                axis: self.axis,
                dims: skip.dims().to_vec(),
            }));
        }
        let moved = if self.axis == 1 { skip.clone() } else { skip.transpose(1, self.axis)? };
        let squeezed = if rank > 2 { moved.flatten_from(2)?.mean(2)? } else { moved };
        let hidden = self.layer1.forward(&squeezed)?.relu()?;
        let gate = candle_nn::ops::sigmoid(&self.layer2.forward(&hidden)?)?;
        let mut shape = vec![1; rank];
        shape[0] = skip.dim(0)?;
        shape[self.axis] = skip.dim(self.axis)?;
        gate.reshape(shape)
    }
}

impl Module for Calibration {
    /// The gated skip, `skip * gate(skip)`.
    fn forward(&self, skip: &Tensor) -> Result<Tensor> {
        skip.broadcast_mul(&self.gate(skip)?)
    }
}

fn torch_default_linear(fan_in: usize, fan_out: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let init = Init::Uniform { lo: -bound, up: bound };
    let weight = vb.get_with_hints((fan_out, fan_in), "weight", init)?;
    let bias = vb.get_with_hints(fan_out, "bias", init)?;
    Ok(Linear::new(weight, Some(bias)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// Width 2, reduction 2 (hidden 1), weights set by hand.
    fn hand_weights(dev: &Device) -> Result<VarBuilder<'static>> {
        let ts = [
            ("layer1.weight", Tensor::new(&[[1f32, -1.0]], dev)?),
            ("layer1.bias", Tensor::new(&[0.5f32], dev)?),
            ("layer2.weight", Tensor::new(&[[2f32], [-1.0]], dev)?),
            ("layer2.bias", Tensor::new(&[0f32, 1.0], dev)?),
        ];
        let ts = ts.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Ok(VarBuilder::from_tensors(ts, DType::F32, dev))
    }

    #[test]
    fn gates_tokens_and_channels_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        let cal = Calibration::new(2, 2, 1, hand_weights(&dev)?)?;
        // Tokens: (B=1, L=2, D=2); means over D = [3, 1]; hidden = relu(3 - 1 + 0.5) = 2.5.
        let x = Tensor::new(&[[[2f32, 4.0], [0.0, 2.0]]], &dev)?;
        let g = cal.gate(&x)?;
        assert_eq!(g.dims(), &[1, 2, 1]);
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        let want = [sig(5.0), sig(-1.5)];
        let got = g.flatten_all()?.to_vec1::<f32>()?;
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // Channels: (B=1, C=2, H=1, W=2), same means -> same gates, shaped (1, 2, 1, 1).
        let x4 = x.reshape((1, 2, 1, 2))?;
        assert_eq!(cal.gate(&x4)?.dims(), &[1, 2, 1, 1]);
        let y = cal.forward(&x4)?.flatten_all()?.to_vec1::<f32>()?;
        assert!((y[1] - 4.0 * want[0]).abs() < 1e-5 && (y[3] - 2.0 * want[1]).abs() < 1e-5);
        // Gating the last axis instead: means over L = [1, 3].
        let last = Calibration::new(2, 2, 2, hand_weights(&dev)?)?;
        let g = last.gate(&x)?;
        assert_eq!(g.dims(), &[1, 1, 2]);
        let got = g.flatten_all()?.to_vec1::<f32>()?;
        let want = [sig(0.0), sig(1.0)]; // hidden = relu(1 - 3 + 0.5) = 0
        assert!((got[0] - want[0]).abs() < 1e-6 && (got[1] - want[1]).abs() < 1e-6, "{got:?}");
        Ok(())
    }

    #[test]
    fn official_initialisation_and_sizes() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let _ = Calibration::new(257, DEFAULT_REDUCTION, 1, vb)?;
        let data = vm.data().lock().unwrap();
        let get = |n: &str| -> &Var { &data[n] };
        assert_eq!(get("layer1.weight").dims(), &[16, 257]);
        assert_eq!(get("layer2.weight").dims(), &[257, 16]);
        let b1 = 1.0 / 257f32.sqrt();
        let w1 = get("layer1.weight").flatten_all()?.to_vec1::<f32>()?;
        assert!(w1.iter().all(|v| v.abs() <= b1));
        assert!(w1.iter().any(|v| v.abs() > 0.5 * b1), "not spread over ±1/sqrt(fan_in)");
        let b2 = get("layer2.bias").flatten_all()?.to_vec1::<f32>()?;
        assert!(b2.iter().all(|v| v.abs() <= 0.25) && b2.iter().any(|v| *v != 0.0));
        assert_eq!(Calibration::num_params(257, 16), 8497);
        Ok(())
    }

    #[test]
    fn rejects_empty_hidden_width() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let err = Calibration::new(15, 16, 1, vb.clone()).unwrap_err().to_string();
        assert!(err.contains("hidden width of 0") && err.contains("reduction <= 15"), "{err}");
        assert!(Calibration::new(4, 0, 1, vb.clone()).is_err());
        assert!(Calibration::new(16, 16, 0, vb).is_err());
    }
}
