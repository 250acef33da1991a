//! The layers of diffusers' `UNet2DModel`, with diffusers' parameter names: `ResnetBlock2D`, the
//! spatial self-attention (`Attention` with a group norm and a residual), `Downsample2D`,
//! `Upsample2D`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::nn::{torch_conv2d as conv2d, torch_linear as linear, Conv2d, GroupNorm, Linear};
use crate::ops::{attention, silu, upsample_nearest2x, Conv2dParams};

/// `nn.GroupNorm` with PyTorch's initialisation (weight 1, bias 0).
pub(crate) fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    let w = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
    let b = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
    GroupNorm::new(w, b, groups, eps)
}

/// `t / factor`, skipped for diffusers' default factor 1.
fn rescale(t: Tensor, factor: f64) -> Result<Tensor> {
    if factor == 1.0 {
        Ok(t)
    } else {
        t / factor
    }
}

pub(crate) const PAD1: Conv2dParams = Conv2dParams { padding: 1, stride: 1 };

#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    scale_shift: bool,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cin: usize,
        cout: usize,
        temb: usize,
        groups: usize,
        eps: f64,
        scale_shift: bool,
        output_scale_factor: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, cin, eps, vb.pp("norm1"))?,
            conv1: conv2d(cin, cout, 3, PAD1, vb.pp("conv1"))?,
            time_emb_proj: linear(temb, if scale_shift { 2 * cout } else { cout }, vb.pp("time_emb_proj"))?,
            norm2: group_norm(groups, cout, eps, vb.pp("norm2"))?,
            conv2: conv2d(cout, cout, 3, PAD1, vb.pp("conv2"))?,
            conv_shortcut: match cin != cout {
                true => Some(conv2d(cin, cout, 1, Conv2dParams { padding: 0, stride: 1 }, vb.pp("conv_shortcut"))?),
                false => None,
            },
            scale_shift,
            output_scale_factor,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let t = self.time_emb_proj.forward(&silu(temb)?)?.unsqueeze(2)?.unsqueeze(3)?;
        let h = match self.scale_shift {
            false => self.norm2.forward_silu(&h.broadcast_add(&t)?)?,
            true => {
                let c = t.dim(1)? / 2;
                let (scale, shift) = (t.narrow(1, 0, c)?, t.narrow(1, c, c)?);
                silu(&self.norm2.forward(&h)?.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?)?
            }
        };
        let h = self.conv2.forward(&h)?;
        let x = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        rescale((x + h)?, self.output_scale_factor)
    }
}

/// Self-attention over the pixels of a feature map: group norm, q/k/v, `to_out.0`, residual.
#[derive(Debug, Clone)]
pub struct SpatialAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    rescale_output_factor: f64,
}

impl SpatialAttention {
    pub fn new(
        channels: usize,
        head_dim: usize,
        groups: usize,
        eps: f64,
        rescale: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            group_norm: group_norm(groups, channels, eps, vb.pp("group_norm"))?,
            to_q: linear(channels, channels, vb.pp("to_q"))?,
            to_k: linear(channels, channels, vb.pp("to_k"))?,
            to_v: linear(channels, channels, vb.pp("to_v"))?,
            to_out: linear(channels, channels, vb.pp("to_out.0"))?,
            heads: channels / head_dim,
            rescale_output_factor: rescale,
        })
    }
}

impl Module for SpatialAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (heads, d) = (self.heads, c / self.heads);
        // Contiguous: candle 0.11's CPU matmul of a transposed batch against a broadcast weight
        // (what `Linear` does on 3-D input) silently returns wrong values (candle#3744, #3758).
        let tokens = self.group_norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let (q, k, v) = (self.to_q.forward(&tokens)?, self.to_k.forward(&tokens)?, self.to_v.forward(&tokens)?);
        let out = attention(&q, &k, &v, heads, 1.0 / (d as f64).sqrt())?;
        let out = self.to_out.forward(&out)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        rescale((out + x)?, self.rescale_output_factor)
    }
}

/// `Downsample2D(use_conv=True)`: a stride-2 3x3 conv; padding 0 means diffusers' asymmetric
/// (0, 1, 0, 1) zero pad first.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    pad_right_bottom: bool,
}

impl Downsample2D {
    pub fn new(channels: usize, padding: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dParams { padding, stride: 2 };
        Ok(Self { conv: conv2d(channels, channels, 3, cfg, vb.pp("conv"))?, pad_right_bottom: padding == 0 })
    }
}

impl Module for Downsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.pad_right_bottom {
            true => self.conv.forward(&x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?),
            false => self.conv.forward(x),
        }
    }
}

/// `Upsample2D(use_conv=True)`: nearest x2, then a 3x3 conv.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { conv: conv2d(channels, channels, 3, PAD1, vb.pp("conv"))? })
    }
}

impl Module for Upsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&upsample_nearest2x(x)?)
    }
}
