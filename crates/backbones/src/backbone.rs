//! Either backbone behind one type, for code that only runs a model (sampling, diagnostics).

use candle_core::{Result, Tensor};

use crate::{Taps, UNet2D, UViT};

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
