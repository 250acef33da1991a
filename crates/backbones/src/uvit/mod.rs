//! U-ViT (Bao et al., "All are Worth Words"), as the official `libs/uvit.py` of ScaleLong builds it,
//! with the long skips scaled by a [`SkipScaling`].
//!
//! Tokens are `[class?, time, patches]` plus a learned position embedding; `depth / 2` in-blocks each
//! hand a long skip to the out-block that mirrors it, which merges `skip_linear([x, scaled skip])`.
//! Parameter names are the official state-dict keys, so official checkpoints load as they are.

mod block;
mod config;

pub use block::{Attention, Block, Mlp};
pub use config::{UViTConfig, PRESETS};

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, Init, VarBuilder};
use scalelong_lsc_scaling::{Calibration, SkipScaling};

use crate::skip::SkipScale;

use crate::architecture::{numbered_block, Architecture, Network};
use crate::nn::{official_linear as linear, torch_conv2d, torch_default_init, LayerNorm, Linear, TRUNC_NORMAL_002};
use crate::taps::Taps;
use crate::timesteps::Timesteps;

#[derive(Debug, Clone)]
pub struct UViT {
    config: UViTConfig,
    patch_proj_weight: Tensor,
    patch_proj_bias: Tensor,
    time_embed: Option<(Linear, Linear)>,
    label_emb: Option<Embedding>,
    pos_embed: Tensor,
    in_blocks: Vec<Block>,
    mid_block: Block,
    out_blocks: Vec<Block>,
    /// One per out-block, in decoder order (innermost skip first).
    skip_scales: Vec<SkipScale>,
    norm: LayerNorm,
    decoder_pred: Linear,
    final_layer: crate::nn::Conv2d,
}

impl UViT {
    /// Builds the model; with a `VarMap`-backed builder the parameters get the official initialisation.
    pub fn new(config: &UViTConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let c = config;
        let (d, p, ch) = (c.embed_dim, c.patch_size, c.in_chans);
        let block = |vb: VarBuilder, skip| Block::new(d, c.num_heads, c.mlp_ratio, c.qkv_bias, skip, vb);
        // Parameters are requested in forward order, so listings follow the data flow.
        let patch_init = torch_default_init(ch * p * p);
        let pvb = vb.pp("patch_embed.proj");
        let patch_proj_weight = pvb.get_with_hints((d, ch, p, p), "weight", patch_init)?;
        let patch_proj_bias = pvb.get_with_hints(d, "bias", patch_init)?;
        let time_embed = match c.mlp_time_embed {
            true => {
                Some((linear(d, 4 * d, true, vb.pp("time_embed.0"))?, linear(4 * d, d, true, vb.pp("time_embed.2"))?))
            }
            false => None,
        };
        let label_emb = match c.num_classes {
            Some(n) => Some(Embedding::new(
                vb.get_with_hints((n, d), "label_emb.weight", Init::Randn { mean: 0.0, stdev: 1.0 })?,
                d,
            )),
            None => None,
        };
        let pos_embed = vb.get_with_hints((1, c.num_tokens(), d), "pos_embed", TRUNC_NORMAL_002)?;
        let n = c.num_skips();
        let in_blocks = (0..n).map(|k| block(vb.pp(format!("in_blocks.{k}")), false)).collect::<Result<_>>()?;
        let mid_block = block(vb.pp("mid_block"), false)?;
        let out_blocks = (0..n).map(|k| block(vb.pp(format!("out_blocks.{k}")), true)).collect::<Result<_>>()?;
        let gate = |_, vb| Calibration::new(c.num_tokens(), c.ls_reduction, 1, vb);
        let mut skip_scales = SkipScale::for_skips(c.scaling, n, &vb, gate)?;
        skip_scales.reverse(); // out-blocks run innermost skip first
        let norm = LayerNorm::new(d, LayerNorm::DEFAULT_EPS, vb.pp("norm"))?;
        let decoder_pred = linear(d, p * p * ch, true, vb.pp("decoder_pred"))?;
        let final_layer =
            torch_conv2d(ch, ch, 3, crate::ops::Conv2dParams { padding: 1, stride: 1 }, vb.pp("final_layer"))?;
        Ok(Self {
            config: c.clone(),
            patch_proj_weight,
            patch_proj_bias,
            time_embed,
            label_emb,
            pos_embed,
            in_blocks,
            mid_block,
            out_blocks,
            skip_scales,
            norm,
            decoder_pred,
            final_layer,
        })
    }

    /// The dtype of the weights (what inputs are computed in).
    pub fn dtype(&self) -> candle_core::DType {
        self.patch_proj_weight.dtype()
    }

    pub fn config(&self) -> &UViTConfig {
        &self.config
    }
}

impl Network for UViT {
    fn run(&self, x: &Tensor, timesteps: &Tensor, y: Option<&Tensor>, mut taps: Option<&mut Taps>) -> Result<Tensor> {
        let c = &self.config;
        let (b, ch, h, w) = x.dims4()?;
        if b == 0 {
            candle_core::bail!("U-ViT input has an empty batch (shape {:?}): nothing to run", x.dims());
        }
        if (ch, h, w) != (c.in_chans, c.img_size, c.img_size) {
            candle_core::bail!(
                "U-ViT input has shape {:?}, expected (B, {}, {}, {})",
                x.dims(),
                c.in_chans,
                c.img_size,
                c.img_size
            );
        }
        let mut tokens = vec![self.patch_embed(x)?];
        let mut time = Timesteps::new(c.embed_dim, true, 0.0).forward(timesteps)?.to_dtype(x.dtype())?;
        if let Some((l1, l2)) = &self.time_embed {
            time = l2.forward(&l1.forward(&time)?.silu()?)?;
        }
        tokens.insert(0, time.unsqueeze(1)?);
        match (&self.label_emb, y) {
            (Some(emb), Some(y)) => tokens.insert(0, emb.forward(y)?.unsqueeze(1)?),
            (None, None) => {}
            (Some(_), None) => candle_core::bail!("class-conditional U-ViT called without labels `y`"),
            (None, Some(_)) => candle_core::bail!("unconditional U-ViT called with labels `y`"),
        }
        let mut x = Tensor::cat(&tokens, 1)?.broadcast_add(&self.pos_embed)?;
        let mut skips = Vec::with_capacity(self.in_blocks.len());
        for blk in &self.in_blocks {
            x = blk.forward(&x, None)?;
            skips.push(x.clone());
        }
        x = self.mid_block.forward(&x, None)?;
        if let Some(t) = taps.as_deref_mut() {
            t.blocks.extend(skips.iter().cloned());
            t.blocks.push(x.clone());
            t.skips = skips.clone();
        }
        for (blk, scale) in self.out_blocks.iter().zip(&self.skip_scales) {
            let skip = skips.pop().expect("one skip per out-block");
            let scaled = scale.apply(&skip, taps.as_deref_mut())?;
            x = blk.forward(&x, Some(&scaled))?;
            if let Some(t) = taps.as_deref_mut() {
                t.scaled_skips.insert(0, scaled);
                t.blocks.push(x.clone());
            }
        }
        if let Some(t) = taps {
            t.gates.reverse(); // recorded innermost first; stored outermost first like the skips
        }
        let x = self.decoder_pred.forward(&self.norm.forward(&x)?)?;
        let x = x.narrow(1, self.config.extras(), c.num_patches())?;
        self.final_layer.forward(&self.unpatchify(&x, b)?)
    }
}

impl UViT {
    /// `Conv2d(kernel = stride = patch)` as patchify + a Linear layer: the same sum, in one GEMM
    /// (bf16 under autocast, as PyTorch's autocast convolution), its weight gradient summed by the
    /// GEMM itself (a batched matmul's had been reduced over the batch afterwards).
    fn patch_embed(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, ch, p) = (x.dim(0)?, c.in_chans, c.patch_size);
        let g = c.img_size / p;
        let patches = x.reshape((b, ch, g, p, g, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b, g * g, ch * p * p))?;
        let w = self.patch_proj_weight.reshape((c.embed_dim, ch * p * p))?;
        Linear::new(w, Some(self.patch_proj_bias.clone())).forward(&patches)
    }

    /// 'B (h w) (p1 p2 C) -> B C (h p1) (w p2)'.
    fn unpatchify(&self, x: &Tensor, b: usize) -> Result<Tensor> {
        let c = &self.config;
        let (p, ch) = (c.patch_size, c.in_chans);
        let g = c.img_size / p;
        x.reshape((b, g, g, p, p, ch))?.permute((0, 5, 1, 3, 2, 4))?.reshape((b, ch, c.img_size, c.img_size))
    }
}

impl UViTConfig {
    /// The `arch` key of a `[model]` table.
    pub const ARCH: &'static str = "uvit";
}

impl Architecture for UViTConfig {
    type Model = UViT;
    fn arch(&self) -> &'static str {
        Self::ARCH
    }

    fn build(&self, vb: VarBuilder) -> Result<UViT> {
        UViT::new(self, vb)
    }
    fn validate_for_training(&self) -> Result<()> {
        self.validate()
    }
    fn scaling(&self) -> SkipScaling {
        self.scaling
    }
    fn set_scaling(&mut self, scaling: SkipScaling) {
        self.scaling = scaling;
    }
    fn in_channels(&self) -> usize {
        self.in_chans
    }
    fn image_size(&self) -> Option<usize> {
        Some(self.img_size)
    }
    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }
    fn num_skips(&self) -> usize {
        UViTConfig::num_skips(self)
    }
    fn encoder_blocks(&self) -> usize {
        UViTConfig::num_skips(self)
    }
    fn block_of(&self, param: &str) -> Option<usize> {
        numbered_block(param, UViTConfig::num_skips(self), "in_blocks", "mid_block", "out_blocks")
    }
    fn merged_by(&self, skip: usize) -> String {
        // Out-blocks merge the innermost skip first.
        format!("out_blocks.{}", UViTConfig::num_skips(self) - skip)
    }
    fn describe(&self) -> String {
        format!(
            "U-ViT {s}x{s}x{}, patch {}, width {}, depth {} ({} long skips), {} heads",
            self.in_chans,
            self.patch_size,
            self.embed_dim,
            self.depth,
            UViTConfig::num_skips(self),
            self.num_heads,
            s = self.img_size
        )
    }
    fn forward_flops(&self) -> f64 {
        crate::flops::uvit(self)
    }
}

#[cfg(test)]
mod tests;
