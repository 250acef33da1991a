//! diffusers' `UNet2DModel` (the DDPM conv UNet), built from its own `config.json` with its own
//! parameter names, with every long skip scaled as ScaleLong proposes.
//!
//! The skip stack is diffusers': the conv_in output, then every ResNet (after its attention, in
//! attention blocks) and every downsample output of the encoder. Skip `i = 1` is the conv_in output
//! (outermost); each decoder ResNet pops the innermost remaining skip, scales it and concatenates
//! it to its input. LS per skip gates channels with `se.{k}`, `k = 0` for the skip merged first.

mod blocks;
mod config;

pub use crate::ops::upsample_nearest2x;
pub use blocks::{Downsample2D, ResnetBlock2D, SpatialAttention, Upsample2D};
pub use config::{UNet2DConfig, DOWN_BLOCKS, UP_BLOCKS};

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, Init, VarBuilder};
use scalelong_lsc_scaling::{Calibration, SkipScaling, DEFAULT_REDUCTION};

use crate::architecture::{numbered_block, Architecture, Network};
use crate::nn::{torch_conv2d as conv2d, torch_linear as linear};
use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::skip::SkipScale;
use crate::taps::Taps;
use crate::timesteps::Timesteps;
use blocks::{group_norm, PAD1};

/// ResNets, their attentions (attention blocks only) and the resampler of one resolution.
#[derive(Debug, Clone)]
struct Stage<R> {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialAttention>,
    resample: Option<R>,
}

#[derive(Debug, Clone)]
enum ClassEmbedding {
    Table(Embedding),
    Timestep(Linear, Linear),
}

#[derive(Debug, Clone)]
pub struct UNet2D {
    config: UNet2DConfig,
    time_embedding: (Linear, Linear),
    class_embedding: Option<ClassEmbedding>,
    conv_in: Conv2d,
    down: Vec<Stage<Downsample2D>>,
    mid: Stage<()>,
    up: Vec<Stage<Upsample2D>>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    /// Indexed by skip `i - 1` (outermost first).
    skip_scales: Vec<SkipScale>,
}

impl UNet2D {
    pub fn new(config: &UNet2DConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let c = config;
        let ch = &c.block_out_channels;
        let (temb, eps, scale_shift) = (c.time_embed_dim(), c.norm_eps, c.resnet_time_scale_shift == "scale_shift");
        let head_dim = |channels: usize| c.attention_head_dim.unwrap_or(channels);
        let resnet =
            |cin, cout, factor, vb| ResnetBlock2D::new(cin, cout, temb, c.groups(cout), eps, scale_shift, factor, vb);
        let attention =
            |channels, groups, factor, vb| SpatialAttention::new(channels, head_dim(channels), groups, eps, factor, vb);
        let tvb = vb.pp("time_embedding");
        let time_embedding = (linear(ch[0], temb, tvb.pp("linear_1"))?, linear(temb, temb, tvb.pp("linear_2"))?);
        let class_embedding = match (c.class_embed_type.as_deref(), c.num_class_embeds) {
            (Some("timestep"), _) => {
                let cvb = vb.pp("class_embedding");
                Some(ClassEmbedding::Timestep(
                    linear(ch[0], temb, cvb.pp("linear_1"))?,
                    linear(temb, temb, cvb.pp("linear_2"))?,
                ))
            }
            (None, Some(n)) => Some(ClassEmbedding::Table(Embedding::new(
                vb.get_with_hints((n, temb), "class_embedding.weight", Init::Randn { mean: 0.0, stdev: 1.0 })?,
                temb,
            ))),
            _ => None,
        };
        let conv_in = conv2d(c.in_channels, ch[0], 3, PAD1, vb.pp("conv_in"))?;
        let mut down = Vec::new();
        let mut cin = ch[0];
        for (k, (&cout, kind)) in ch.iter().zip(&c.down_block_types).enumerate() {
            let bvb = vb.pp(format!("down_blocks.{k}"));
            let mut stage = Stage { resnets: vec![], attentions: vec![], resample: None };
            for j in 0..c.layers_per_block {
                let from = if j == 0 { cin } else { cout };
                stage.resnets.push(resnet(from, cout, 1.0, bvb.pp(format!("resnets.{j}")))?);
                if kind == "AttnDownBlock2D" {
                    stage.attentions.push(attention(cout, c.groups(cout), 1.0, bvb.pp(format!("attentions.{j}")))?);
                }
            }
            if k + 1 < ch.len() {
                stage.resample = Some(Downsample2D::new(cout, c.downsample_padding, bvb.pp("downsamplers.0"))?);
            }
            down.push(stage);
            cin = cout;
        }
        let last = *ch.last().expect("validated non-empty");
        let mvb = vb.pp("mid_block");
        let factor = c.mid_block_scale_factor;
        let attn_groups = c.attn_norm_num_groups.unwrap_or(c.groups(last));
        let mut mid = Stage {
            resnets: vec![resnet(last, last, factor, mvb.pp("resnets.0"))?],
            attentions: vec![],
            resample: None,
        };
        if c.add_attention {
            mid.attentions.push(attention(last, attn_groups, factor, mvb.pp("attentions.0"))?);
        }
        mid.resnets.push(resnet(last, last, factor, mvb.pp("resnets.1"))?);
        let skip_channels = c.skip_channels();
        let mut remaining = skip_channels.clone();
        let mut up = Vec::new();
        let mut prev = last;
        for (k, kind) in c.up_block_types.iter().enumerate() {
            let cout = ch[ch.len() - 1 - k];
            let bvb = vb.pp(format!("up_blocks.{k}"));
            let mut stage = Stage { resnets: vec![], attentions: vec![], resample: None };
            for j in 0..=c.layers_per_block {
                let from = if j == 0 { prev } else { cout };
                let skip = remaining.pop().expect("one skip per decoder ResNet");
                stage.resnets.push(resnet(from + skip, cout, 1.0, bvb.pp(format!("resnets.{j}")))?);
                if kind == "AttnUpBlock2D" {
                    stage.attentions.push(attention(cout, c.groups(cout), 1.0, bvb.pp(format!("attentions.{j}")))?);
                }
            }
            if k + 1 < ch.len() {
                stage.resample = Some(Upsample2D::new(cout, bvb.pp("upsamplers.0"))?);
            }
            up.push(stage);
            prev = cout;
        }
        let n = skip_channels.len();
        let gate = |i: usize, vb| {
            let width = skip_channels[i - 1];
            Calibration::new(width, DEFAULT_REDUCTION.min(width), 1, vb)
        };
        let skip_scales = SkipScale::for_skips(c.scaling, n, &vb, gate)?;
        Ok(Self {
            config: c.clone(),
            time_embedding,
            class_embedding,
            conv_in,
            down,
            mid,
            up,
            conv_norm_out: group_norm(c.groups(ch[0]), ch[0], eps, vb.pp("conv_norm_out"))?,
            conv_out: conv2d(ch[0], c.out_channels, 3, PAD1, vb.pp("conv_out"))?,
            skip_scales,
        })
    }

    /// The dtype of the weights (what inputs are computed in).
    pub fn dtype(&self) -> candle_core::DType {
        self.conv_in.weight().dtype()
    }

    pub fn config(&self) -> &UNet2DConfig {
        &self.config
    }
}

impl Network for UNet2D {
    fn run(&self, x: &Tensor, timesteps: &Tensor, y: Option<&Tensor>, mut taps: Option<&mut Taps>) -> Result<Tensor> {
        let c = &self.config;
        let (b, ch, ..) = x.dims4()?;
        if b == 0 {
            candle_core::bail!("UNet2D input has an empty batch (shape {:?}): nothing to run", x.dims());
        }
        if ch != c.in_channels {
            candle_core::bail!("UNet2D input has shape {:?}, expected (B, {}, H, W)", x.dims(), c.in_channels);
        }
        let dtype = x.dtype();
        let (l1, l2) = &self.time_embedding;
        let t = self.time_proj().forward(&timesteps.broadcast_as(b)?)?.to_dtype(dtype)?;
        let mut emb = l2.forward(&l1.forward(&t)?.silu()?)?;
        match (&self.class_embedding, y) {
            (Some(ClassEmbedding::Table(e)), Some(y)) => emb = (emb + e.forward(y)?)?,
            (Some(ClassEmbedding::Timestep(l1, l2)), Some(y)) => {
                let p = self.time_proj().forward(y)?.to_dtype(dtype)?;
                emb = (emb + l2.forward(&l1.forward(&p)?.silu()?)?)?
            }
            (None, None) => {}
            (Some(_), None) => candle_core::bail!("class-conditional UNet2D called without labels `y`"),
            (None, Some(_)) => candle_core::bail!("unconditional UNet2D called with labels `y`"),
        }
        let x = if c.center_input_sample { ((x * 2.0)? - 1.0)? } else { x.clone() };
        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        for stage in &self.down {
            for (j, r) in stage.resnets.iter().enumerate() {
                h = r.forward(&h, &emb)?;
                if let Some(a) = stage.attentions.get(j) {
                    h = a.forward(&h)?;
                }
                skips.push(h.clone());
            }
            if let Some(d) = &stage.resample {
                h = d.forward(&h)?;
                skips.push(h.clone());
            }
            record(&mut taps, &h);
        }
        if let Some(t) = taps.as_deref_mut() {
            t.skips = skips.clone();
        }
        h = self.mid.resnets[0].forward(&h, &emb)?;
        for (j, r) in self.mid.resnets[1..].iter().enumerate() {
            if let Some(a) = self.mid.attentions.get(j) {
                h = a.forward(&h)?;
            }
            h = r.forward(&h, &emb)?;
        }
        record(&mut taps, &h);
        let mut scaled = Vec::with_capacity(skips.len());
        for stage in &self.up {
            for (j, r) in stage.resnets.iter().enumerate() {
                let i = skips.len();
                let skip =
                    self.skip_scales[i - 1].apply(&skips.pop().expect("one skip per ResNet"), taps.as_deref_mut())?;
                h = r.forward(&Tensor::cat(&[&h, &skip], 1)?, &emb)?;
                scaled.push(skip);
                if let Some(a) = stage.attentions.get(j) {
                    h = a.forward(&h)?;
                }
            }
            if let Some(u) = &stage.resample {
                h = u.forward(&h)?;
            }
            record(&mut taps, &h);
        }
        if let Some(t) = taps {
            scaled.reverse();
            t.scaled_skips = scaled;
            t.gates.reverse(); // recorded innermost first; stored outermost first like the skips
        }
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)
    }
}

impl UNet2D {
    /// diffusers' `time_proj`: its `get_timestep_embedding` with the config's layout.
    fn time_proj(&self) -> Timesteps {
        let c = &self.config;
        Timesteps::new(c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
    }
}

impl UNet2DConfig {
    /// The `arch` key of a `[model]` table.
    pub const ARCH: &'static str = "unet2d";
}

impl Architecture for UNet2DConfig {
    type Model = UNet2D;
    fn arch(&self) -> &'static str {
        Self::ARCH
    }

    fn build(&self, vb: VarBuilder) -> Result<UNet2D> {
        UNet2D::new(self, vb)
    }
    fn validate_for_training(&self) -> Result<()> {
        self.validate()?;
        if self.sample_size.is_none() {
            candle_core::bail!("model.sample_size must be set to train a UNet2D");
        }
        if self.dropout != 0.0 {
            candle_core::bail!(
                "model.dropout = {}: training with dropout is not implemented; expected 0",
                self.dropout
            );
        }
        Ok(())
    }
    fn scaling(&self) -> SkipScaling {
        self.scaling
    }
    fn set_scaling(&mut self, scaling: SkipScaling) {
        self.scaling = scaling;
    }
    fn in_channels(&self) -> usize {
        self.in_channels
    }
    fn image_size(&self) -> Option<usize> {
        self.sample_size
    }
    fn num_classes(&self) -> Option<usize> {
        self.num_class_embeds
    }
    fn num_skips(&self) -> usize {
        UNet2DConfig::num_skips(self)
    }
    fn encoder_blocks(&self) -> usize {
        self.block_out_channels.len()
    }
    fn block_of(&self, param: &str) -> Option<usize> {
        numbered_block(param, self.block_out_channels.len(), "down_blocks", "mid_block", "up_blocks")
    }
    fn merged_by(&self, skip: usize) -> String {
        // Each up block has layers_per_block + 1 ResNets; the first pops the innermost skip.
        let k = UNet2DConfig::num_skips(self) - skip;
        let per = self.layers_per_block + 1;
        format!("up_blocks.{}.resnets.{}", k / per, k % per)
    }
    fn describe(&self) -> String {
        format!(
            "UNet2D {s}x{s}x{}, channels {:?}, {} ResNets per block ({} long skips)",
            self.in_channels,
            self.block_out_channels,
            self.layers_per_block,
            UNet2DConfig::num_skips(self),
            s = self.sample_size.unwrap_or(0)
        )
    }
    fn forward_flops(&self) -> f64 {
        crate::flops::unet(self)
    }
}

fn record(taps: &mut Option<&mut Taps>, h: &Tensor) {
    if let Some(t) = taps.as_deref_mut() {
        t.blocks.push(h.clone());
    }
}

#[cfg(test)]
mod tests;
