//! The pre-LN transformer block of U-ViT, with the optional long-skip merge of the out-blocks.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{official_linear as linear, LayerNorm, Linear};
use crate::ops::attention_packed;

/// Multi-head self-attention: `qkv` split as (3, heads, head_dim), softmax(q k^T / sqrt(d)) v, `proj`.
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    scale: f64,
}

impl Attention {
    pub fn new(dim: usize, num_heads: usize, qkv_bias: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            qkv: linear(dim, 3 * dim, qkv_bias, vb.pp("qkv"))?,
            proj: linear(dim, dim, true, vb.pp("proj"))?,
            num_heads,
            scale: ((dim / num_heads) as f64).powf(-0.5),
        })
    }
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // 'B L (K H D) -> K B H L D': q, k, v side by side, each with its heads side by side.
        self.proj.forward(&attention_packed(&self.qkv.forward(x)?, self.num_heads, self.scale)?)
    }
}

/// `fc1 -> GELU (erf) -> fc2`.
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { fc1: linear(dim, hidden, true, vb.pp("fc1"))?, fc2: linear(hidden, dim, true, vb.pp("fc2"))? })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&crate::ops::gelu_erf(&self.fc1.forward(x)?)?)
    }
}

/// `x + Attn(LN(x))`, then `x + MLP(LN(x))`; an out-block first merges its (already scaled) long
/// skip with `skip_linear([x, skip])`.
#[derive(Debug, Clone)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    skip_linear: Option<Linear>,
}

impl Block {
    pub fn new(
        dim: usize,
        num_heads: usize,
        mlp_ratio: f64,
        qkv_bias: bool,
        skip: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(dim, LayerNorm::DEFAULT_EPS, vb.pp("norm1"))?,
            attn: Attention::new(dim, num_heads, qkv_bias, vb.pp("attn"))?,
            norm2: LayerNorm::new(dim, LayerNorm::DEFAULT_EPS, vb.pp("norm2"))?,
            mlp: Mlp::new(dim, (dim as f64 * mlp_ratio) as usize, vb.pp("mlp"))?,
            skip_linear: if skip { Some(linear(2 * dim, dim, true, vb.pp("skip_linear"))?) } else { None },
        })
    }

    /// Runs the block; `skip` is required by out-blocks and refused by the others.
    pub fn forward(&self, x: &Tensor, skip: Option<&Tensor>) -> Result<Tensor> {
        let x = match (&self.skip_linear, skip) {
            (Some(merge), Some(skip)) => merge.forward(&Tensor::cat(&[x, skip], 2)?)?,
            (None, None) => x.clone(),
            (Some(_), None) => candle_core::bail!("U-ViT out-block called without its long skip"),
            (None, Some(_)) => candle_core::bail!("U-ViT block without skip_linear given a long skip"),
        };
        let x = (&x + self.attn.forward(&self.norm1.forward(&x)?)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }
}
