//! Layers with a correct backward pass and the official initialisations.
//!
//! candle 0.11's fused `softmax_last_dim` and `layer_norm` (and `LayerNorm::forward` on contiguous
//! input) return no gradient; the layers here run on [`crate::ops`], which has one.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::ops::{bias_add, conv2d, group_norm, group_norm_silu, layer_norm, Conv2dParams};

/// timm's `trunc_normal_(std=0.02)` truncates at ±2 (absolute), i.e. 100 standard deviations:
/// a plain normal is the same distribution for every practical purpose.
pub(crate) const TRUNC_NORMAL_002: Init = Init::Randn { mean: 0.0, stdev: 0.02 };

/// `nn.Linear` initialised as the official U-ViT's `_init_weights`: weight trunc-normal(0.02), bias 0.
pub(crate) fn official_linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", TRUNC_NORMAL_002)?;
    let bias = if bias { Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?) } else { None };
    Ok(Linear::new(weight, bias))
}

/// `nn.Linear` over the last axis: one 2-D GEMM whatever the leading axes (candle 0.11's CPU
/// matmul of a transposed batch against a broadcast weight is wrong, candle#3744), and the bias
/// added by [`bias_add`], whose gradient is a fast row sum. The GEMM writes its output without
/// zero-filling it first; inside [`crate::ops::autocast_bf16`] it is [`crate::ops::matmul_bf16`].
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out_dim, in_dim) = self.weight.dims2()?;
        let mut dims = x.dims().to_vec();
        let rows = x.elem_count() / in_dim.max(1);
        let x = x.contiguous()?.reshape((rows, in_dim))?;
        let y = match x.dtype() == DType::F32 && self.weight.dtype() == DType::F32 {
            true => crate::ops::matmul_f32(&x, &self.weight.t()?, crate::ops::autocast_bf16_active())?,
            false => x.matmul(&self.weight.t()?)?,
        };
        let y = match &self.bias {
            Some(b) => bias_add(&y, b)?,
            None => y,
        };
        if let Some(last) = dims.last_mut() {
            *last = out_dim;
        }
        y.reshape(dims)
    }
}

/// Bound of PyTorch's default initialisation (kaiming-uniform with a = sqrt(5)) for a fan-in.
pub(crate) fn torch_default_init(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// `nn.Linear` with PyTorch's default initialisation (and a bias).
pub(crate) fn torch_linear(cin: usize, cout: usize, vb: VarBuilder) -> Result<Linear> {
    let init = torch_default_init(cin);
    Ok(Linear::new(vb.get_with_hints((cout, cin), "weight", init)?, Some(vb.get_with_hints(cout, "bias", init)?)))
}

/// `nn.Conv2d` (k x k, with a bias) with PyTorch's default initialisation.
pub(crate) fn torch_conv2d(cin: usize, cout: usize, k: usize, cfg: Conv2dParams, vb: VarBuilder) -> Result<Conv2d> {
    let init = torch_default_init(cin * k * k);
    let w = vb.get_with_hints((cout, cin, k, k), "weight", init)?;
    let b = vb.get_with_hints(cout, "bias", init)?;
    Ok(Conv2d::new(w, Some(b), cfg))
}

/// LayerNorm over the last axis with affine weight and bias.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub const DEFAULT_EPS: f64 = 1e-5;

    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// GroupNorm over `(B, C, ...)` with per-channel affine weight and bias, as `nn.GroupNorm`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(weight: Tensor, bias: Tensor, groups: usize, eps: f64) -> Result<Self> {
        let channels = weight.elem_count();
        if groups == 0 || !channels.is_multiple_of(groups) || bias.elem_count() != channels {
            candle_core::bail!("GroupNorm: {channels} channels (bias {}) in {groups} groups", bias.elem_count());
        }
        Ok(Self { weight, bias, groups, eps })
    }

    /// `silu(self.forward(x))` as one op.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        group_norm_silu(x, &self.weight, &self.bias, self.groups, self.eps)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        group_norm(x, &self.weight, &self.bias, self.groups, self.eps)
    }
}

/// `nn.Conv2d` (groups 1, dilation 1) with an optional bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    params: Conv2dParams,
}

impl Conv2d {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn new(weight: Tensor, bias: Option<Tensor>, params: Conv2dParams) -> Self {
        Self { weight, bias, params }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d(x, &self.weight, self.bias.as_ref(), self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::softmax_last_dim;
    use candle_core::{DType, Device, Var};

    /// Central finite differences of `sum(f(x) * probe)` against the autograd gradient.
    fn check_grad(f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<()> {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f64, 1.0, (2, 5), &dev)?;
        let probe = Tensor::randn(0f64, 1.0, (2, 5), &dev)?;
        let x = Var::from_tensor(&x0)?;
        let loss = (f(x.as_tensor())? * &probe)?.sum_all()?;
        let grad = loss.backward()?.get(&x).expect("no gradient").to_vec2::<f64>()?;
        let h = 1e-6;
        let base = x0.to_vec2::<f64>()?;
        for i in 0..2 {
            for j in 0..5 {
                let eval = |d: f64| -> Result<f64> {
                    let mut v = base.clone();
                    v[i][j] += d;
                    let xt = Tensor::new(v, &dev)?;
                    (f(&xt)? * &probe)?.sum_all()?.to_scalar::<f64>()
                };
                let fd = (eval(h)? - eval(-h)?) / (2.0 * h);
                assert!((fd - grad[i][j]).abs() < 1e-6, "[{i},{j}] fd {fd} vs autograd {}", grad[i][j]);
            }
        }
        Ok(())
    }

    #[test]
    fn softmax_matches_definition_and_has_gradient() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2.0, 3.0], [1000.0, 1000.0, 1000.0]], &Device::Cpu)?;
        let s = softmax_last_dim(&x)?.to_vec2::<f32>()?;
        let z: f32 = [1f32, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        assert!((s[0][2] - 3f32.exp() / z).abs() < 1e-6);
        assert!((s[1][0] - 1.0 / 3.0).abs() < 1e-6);
        check_grad(softmax_last_dim)
    }

    #[test]
    fn layer_norm_normalises_and_has_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::new(&[1f64, 2.0, 0.5, -1.0, 3.0], &dev)?;
        let b = Tensor::new(&[0.1f64, 0.0, -0.2, 0.3, 0.0], &dev)?;
        let ln = LayerNorm { weight: w, bias: b, eps: 1e-5 };
        check_grad(|x| ln.forward(x))?;
        let plain = LayerNorm::new(5, 1e-5, VarBuilder::zeros(DType::F64, &dev))?;
        let plain = LayerNorm { weight: plain.weight.ones_like()?, ..plain };
        let y = plain.forward(&Tensor::new(&[[1f64, 2.0, 3.0, 4.0, 5.0]], &dev)?)?;
        let y = y.to_vec2::<f64>()?[0].clone();
        let want = 2f64 / (2.0 + 1e-5f64).sqrt();
        assert!((y[4] - want).abs() < 1e-12 && (y[0] + want).abs() < 1e-12, "{y:?}");
        Ok(())
    }

    #[test]
    fn gelu_erf_has_gradient() -> Result<()> {
        check_grad(crate::ops::gelu_erf)
    }
}
