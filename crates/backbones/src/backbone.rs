//! Either backbone behind one type, for code that only runs a model (sampling, diagnostics).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use scalelong_lsc_scaling::SkipScaling;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::params::ParamSpec;
use crate::{Taps, UNet2D, UNet2DConfig, UViT, UViTConfig};

// Built once per run and moved rarely: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Backbone {
    UViT(UViT),
    UNet2D(UNet2D),
}

impl Backbone {
    /// The network output for noisy images `x` at the network's time input `t` (U-ViT: t * 999 of
    /// the continuous VP-SDE; UNet: the discrete step) and, if class-conditional, labels `y`.
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Self::UViT(m) => m.forward(x, t, y),
            Self::UNet2D(m) => m.forward(x, t, y),
        }
    }

    pub fn forward_with_taps(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>, taps: &mut Taps) -> Result<Tensor> {
        match self {
            Self::UViT(m) => m.forward_with_taps(x, t, y, taps),
            Self::UNet2D(m) => m.forward_with_taps(x, t, y, taps),
        }
    }

    pub fn in_channels(&self) -> usize {
        match self {
            Self::UViT(m) => m.config().in_chans,
            Self::UNet2D(m) => m.config().in_channels,
        }
    }

    /// The image size the model was built for (`None`: a UNet without `sample_size`).
    pub fn image_size(&self) -> Option<usize> {
        match self {
            Self::UViT(m) => Some(m.config().img_size),
            Self::UNet2D(m) => m.config().sample_size,
        }
    }

    /// Number of class labels a class-conditional model takes.
    pub fn num_classes(&self) -> Option<usize> {
        match self {
            Self::UViT(m) => m.config().num_classes,
            Self::UNet2D(m) => m.config().num_class_embeds,
        }
    }
}

impl From<UViT> for Backbone {
    fn from(m: UViT) -> Self {
        Self::UViT(m)
    }
}

impl From<UNet2D> for Backbone {
    fn from(m: UNet2D) -> Self {
        Self::UNet2D(m)
    }
}

/// Which backbone to build: the `[model]` table of a training config. `arch = "unet2d"` selects
/// diffusers' UNet2DModel (its `config.json` keys); without `arch` it is a U-ViT.
#[allow(clippy::large_enum_variant)] // one per run; boxing would only obscure the match arms
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    UViT(UViTConfig),
    UNet2D(UNet2DConfig),
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::UViT(c) => c.validate(),
            Self::UNet2D(c) => {
                c.validate().map_err(candle_core::Error::Msg)?;
                if c.sample_size.is_none() {
                    candle_core::bail!("model.sample_size must be set to train a UNet2D");
                }
                if c.dropout != 0.0 {
                    candle_core::bail!(
                        "model.dropout = {}: training with dropout is not implemented; expected 0",
                        c.dropout
                    );
                }
                Ok(())
            }
        }
    }

    pub fn scaling(&self) -> SkipScaling {
        match self {
            Self::UViT(c) => c.scaling,
            Self::UNet2D(c) => c.scaling,
        }
    }

    pub fn set_scaling(&mut self, scaling: SkipScaling) {
        match self {
            Self::UViT(c) => c.scaling = scaling,
            Self::UNet2D(c) => c.scaling = scaling,
        }
    }

    pub fn in_channels(&self) -> usize {
        match self {
            Self::UViT(c) => c.in_chans,
            Self::UNet2D(c) => c.in_channels,
        }
    }

    /// Square image side (a UNet's `sample_size`; validated to be set for training).
    pub fn image_size(&self) -> usize {
        match self {
            Self::UViT(c) => c.img_size,
            Self::UNet2D(c) => c.sample_size.unwrap_or(0),
        }
    }

    pub fn num_classes(&self) -> Option<usize> {
        match self {
            Self::UViT(c) => c.num_classes,
            Self::UNet2D(c) => c.num_class_embeds,
        }
    }

    /// Encoder blocks (U-ViT in-blocks, UNet down blocks); as many decoder blocks follow the mid-block.
    pub fn encoder_blocks(&self) -> usize {
        match self {
            Self::UViT(c) => c.num_skips(),
            Self::UNet2D(c) => c.block_out_channels.len(),
        }
    }

    pub fn build(&self, vb: VarBuilder) -> Result<Backbone> {
        Ok(match self {
            Self::UViT(c) => UViT::new(c, vb)?.into(),
            Self::UNet2D(c) => UNet2D::new(c, vb)?.into(),
        })
    }

    pub fn param_specs(&self) -> Result<Vec<ParamSpec>> {
        match self {
            Self::UViT(c) => UViT::param_specs(c),
            Self::UNet2D(c) => UNet2D::param_specs(c),
        }
    }

    /// One line for reports, e.g. `U-ViT 32x32x1, patch 4, width 64, depth 12 (6 long skips), 2 heads`.
    pub fn describe(&self) -> String {
        match self {
            Self::UViT(c) => format!(
                "U-ViT {s}x{s}x{}, patch {}, width {}, depth {} ({} long skips), {} heads",
                c.in_chans,
                c.patch_size,
                c.embed_dim,
                c.depth,
                c.num_skips(),
                c.num_heads,
                s = c.img_size
            ),
            Self::UNet2D(c) => format!(
                "UNet2D {s}x{s}x{}, channels {:?}, {} ResNets per block ({} long skips)",
                c.in_channels,
                c.block_out_channels,
                c.layers_per_block,
                c.num_skips(),
                s = c.sample_size.unwrap_or(0)
            ),
        }
    }

    /// `uvit` or `unet2d`.
    pub fn arch(&self) -> &'static str {
        match self {
            Self::UViT(_) => "uvit",
            Self::UNet2D(_) => "unet2d",
        }
    }
}

impl Serialize for ModelConfig {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Tagged<'a> {
            arch: &'static str,
            #[serde(flatten)]
            config: &'a UNet2DConfig,
        }
        match self {
            Self::UViT(c) => c.serialize(s),
            Self::UNet2D(c) => Tagged { arch: "unet2d", config: c }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let arch = match table.remove("arch") {
            None => "uvit".to_string(),
            Some(serde_json::Value::String(a)) => a,
            Some(other) => return Err(D::Error::custom(format!("`arch` = {other}: expected \"uvit\" or \"unet2d\""))),
        };
        let value = serde_json::Value::Object(table);
        match arch.as_str() {
            "uvit" => serde_json::from_value(value).map(Self::UViT).map_err(D::Error::custom),
            "unet2d" => serde_json::from_value(value).map(Self::UNet2D).map_err(D::Error::custom),
            other => Err(D::Error::custom(format!("`arch` = {other:?}: expected \"uvit\" or \"unet2d\""))),
        }
    }
}
