//! Every backbone behind one type: [`ModelConfig`] (the `[model]` table of a training config) and
//! the [`Backbone`] it builds. Both forward to the backbone's [`Architecture`] and [`Network`]
//! impls; adding a backbone adds a variant here and a line in [`each_arch!`].

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use scalelong_lsc_scaling::SkipScaling;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::architecture::{Architecture, Network};
use crate::{Taps, UNet2D, UNet2DConfig, UViT, UViTConfig};

/// Which backbone to build. `arch = "unet2d"` selects diffusers' UNet2DModel (its `config.json`
/// keys); without `arch` it is a U-ViT.
#[allow(clippy::large_enum_variant)] // one per run; boxing would only obscure the match arms
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    UViT(UViTConfig),
    UNet2D(UNet2DConfig),
}

// Built once per run and moved rarely: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Backbone {
    UViT(UViT),
    UNet2D(UNet2D),
}

/// Runs `$body` with `$x` bound to the backbone inside either enum.
macro_rules! each_arch {
    ($value:expr, $x:ident => $body:expr) => {
        match $value {
            Self::UViT($x) => $body,
            Self::UNet2D($x) => $body,
        }
    };
}

impl Network for Backbone {
    fn run(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>, taps: Option<&mut Taps>) -> Result<Tensor> {
        each_arch!(self, m => m.run(x, t, y, taps))
    }
}

impl Backbone {
    pub fn config(&self) -> ModelConfig {
        match self {
            Self::UViT(m) => ModelConfig::UViT(m.config().clone()),
            Self::UNet2D(m) => ModelConfig::UNet2D(m.config().clone()),
        }
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> candle_core::DType {
        each_arch!(self, m => m.dtype())
    }

    pub fn in_channels(&self) -> usize {
        each_arch!(self, m => m.config().in_channels())
    }

    /// The image size the model was built for (`None`: a UNet without `sample_size`).
    pub fn image_size(&self) -> Option<usize> {
        each_arch!(self, m => m.config().image_size())
    }

    /// Number of class labels a class-conditional model takes.
    pub fn num_classes(&self) -> Option<usize> {
        each_arch!(self, m => m.config().num_classes())
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

impl Architecture for ModelConfig {
    type Model = Backbone;
    fn arch(&self) -> &'static str {
        each_arch!(self, c => c.arch())
    }

    fn build(&self, vb: VarBuilder) -> Result<Backbone> {
        each_arch!(self, c => c.build(vb).map(Backbone::from))
    }
    fn validate_for_training(&self) -> Result<()> {
        each_arch!(self, c => c.validate_for_training())
    }
    fn scaling(&self) -> SkipScaling {
        each_arch!(self, c => c.scaling())
    }
    fn set_scaling(&mut self, scaling: SkipScaling) {
        each_arch!(self, c => c.set_scaling(scaling))
    }
    fn in_channels(&self) -> usize {
        each_arch!(self, c => c.in_channels())
    }
    fn image_size(&self) -> Option<usize> {
        each_arch!(self, c => c.image_size())
    }
    fn num_classes(&self) -> Option<usize> {
        each_arch!(self, c => c.num_classes())
    }
    fn num_skips(&self) -> usize {
        each_arch!(self, c => Architecture::num_skips(c))
    }
    fn encoder_blocks(&self) -> usize {
        each_arch!(self, c => c.encoder_blocks())
    }
    fn block_of(&self, param: &str) -> Option<usize> {
        each_arch!(self, c => c.block_of(param))
    }
    fn merged_by(&self, skip: usize) -> String {
        each_arch!(self, c => c.merged_by(skip))
    }
    fn describe(&self) -> String {
        each_arch!(self, c => c.describe())
    }
    fn forward_flops(&self) -> f64 {
        each_arch!(self, c => c.forward_flops())
    }
}

impl ModelConfig {
    /// Square image side to train and sample at; `validate_for_training` makes sure it is set
    /// (0 only for an unvalidated UNet config without `sample_size`).
    pub fn train_size(&self) -> usize {
        self.image_size().unwrap_or(0)
    }
}

impl Serialize for ModelConfig {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Tagged<'a, C> {
            arch: &'static str,
            #[serde(flatten)]
            config: &'a C,
        }
        match self {
            // A U-ViT table has no `arch` key, as configs written before the UNet had none.
            Self::UViT(c) => c.serialize(s),
            Self::UNet2D(c) => Tagged { arch: UNet2DConfig::ARCH, config: c }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let arch = match table.remove("arch") {
            None => UViTConfig::ARCH.to_string(),
            Some(serde_json::Value::String(a)) => a,
            Some(other) => {
                return Err(D::Error::custom(format!("`arch` = {other}: expected one of {}", ARCHS.join(", "))))
            }
        };
        let value = serde_json::Value::Object(table);
        match arch.as_str() {
            UViTConfig::ARCH => serde_json::from_value(value).map(Self::UViT).map_err(D::Error::custom),
            UNet2DConfig::ARCH => serde_json::from_value(value).map(Self::UNet2D).map_err(D::Error::custom),
            other => Err(D::Error::custom(format!("`arch` = {other:?}: expected one of {}", ARCHS.join(", ")))),
        }
    }
}

/// Every `arch` a `[model]` table may name.
pub const ARCHS: [&str; 2] = [UViTConfig::ARCH, UNet2DConfig::ARCH];
