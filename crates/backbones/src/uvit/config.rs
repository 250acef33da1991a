//! U-ViT hyper-parameters, the official presets, and the official constructor arguments.

use candle_core::Result;
use scalelong_lsc_scaling::{SkipScaling, DEFAULT_REDUCTION};
use serde::{Deserialize, Serialize};

/// Everything that fixes a U-ViT's architecture. Unknown keys in a config file are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UViTConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    /// Transformer blocks besides the mid-block: `depth / 2` in-blocks and as many out-blocks.
    pub depth: usize,
    pub num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default)]
    pub qkv_bias: bool,
    /// Linear-SiLU-Linear on the time token (off in every official config).
    #[serde(default)]
    pub mlp_time_embed: bool,
    /// Class-conditional with this many classes (adds a class token).
    #[serde(default)]
    pub num_classes: Option<usize>,
    #[serde(default)]
    pub scaling: SkipScaling,
    /// Reduction `r` of the LS calibration modules.
    #[serde(default = "default_reduction")]
    pub ls_reduction: usize,
}

fn default_mlp_ratio() -> f64 {
    4.0
}

fn default_reduction() -> usize {
    DEFAULT_REDUCTION
}

/// The official configs of the paper, by name.
pub const PRESETS: &[&str] = &["cifar10-uvit-s2", "celeba64-uvit-s4", "imagenet64-uvit-m4", "imagenet64-uvit-l4"];

impl UViTConfig {
    fn base(img_size: usize, patch_size: usize, embed_dim: usize, depth: usize, num_heads: usize) -> Self {
        Self {
            img_size,
            patch_size,
            in_chans: 3,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            qkv_bias: false,
            mlp_time_embed: false,
            num_classes: None,
            scaling: SkipScaling::None,
            ls_reduction: DEFAULT_REDUCTION,
        }
    }

    /// An official config by name (see [`PRESETS`]), with no skip scaling.
    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name {
            "cifar10-uvit-s2" => Self::base(32, 2, 512, 12, 8),
            "celeba64-uvit-s4" => Self::base(64, 4, 512, 12, 8),
            "imagenet64-uvit-m4" => Self { num_classes: Some(1000), ..Self::base(64, 4, 768, 16, 12) },
            "imagenet64-uvit-l4" => Self { num_classes: Some(1000), ..Self::base(64, 4, 1024, 20, 16) },
            _ => candle_core::bail!("unknown U-ViT preset `{name}`: expected one of {}", PRESETS.join(", ")),
        })
    }

    /// The same config with another skip scaling.
    pub fn with_scaling(self, scaling: SkipScaling) -> Self {
        Self { scaling, ..self }
    }

    pub fn num_patches(&self) -> usize {
        (self.img_size / self.patch_size).pow(2)
    }

    /// Tokens before the patches: the time token, and the class token if class-conditional.
    pub fn extras(&self) -> usize {
        if self.num_classes.is_some() {
            2
        } else {
            1
        }
    }

    pub fn num_tokens(&self) -> usize {
        self.extras() + self.num_patches()
    }

    pub fn num_skips(&self) -> usize {
        self.depth / 2
    }

    /// Checks that the numbers fit together, naming the field and the expected value.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        let positive = [
            ("img_size", c.img_size),
            ("patch_size", c.patch_size),
            ("in_chans", c.in_chans),
            ("embed_dim", c.embed_dim),
            ("num_heads", c.num_heads),
        ];
        for (field, v) in positive {
            if v == 0 {
                candle_core::bail!("U-ViT config: `{field}` is 0, expected a positive integer");
            }
        }
        if !c.img_size.is_multiple_of(c.patch_size) {
            candle_core::bail!(
                "U-ViT config: `img_size` = {} is not a multiple of `patch_size` = {}",
                c.img_size,
                c.patch_size
            );
        }
        if !c.embed_dim.is_multiple_of(c.num_heads) {
            candle_core::bail!(
                "U-ViT config: `embed_dim` = {} is not a multiple of `num_heads` = {}",
                c.embed_dim,
                c.num_heads
            );
        }
        if c.depth < 2 {
            candle_core::bail!("U-ViT config: `depth` = {} leaves no long skip, expected at least 2", c.depth);
        }
        if !(c.mlp_ratio.is_finite() && c.mlp_ratio * c.embed_dim as f64 >= 1.0) {
            candle_core::bail!(
                "U-ViT config: `mlp_ratio` = {} gives no MLP width, expected a positive number",
                c.mlp_ratio
            );
        }
        if c.num_classes == Some(0) {
            candle_core::bail!(
                "U-ViT config: `num_classes` = 0, expected a positive count or no value (unconditional)"
            );
        }
        c.scaling.validate().map_err(candle_core::Error::wrap)?;
        if c.scaling.is_learned() && (c.ls_reduction == 0 || c.num_tokens() / c.ls_reduction == 0) {
            candle_core::bail!(
                "U-ViT config: LS over {} tokens with `ls_reduction` = {} leaves a hidden width of 0, expected `ls_reduction` in 1..={}",
                c.num_tokens(),
                c.ls_reduction,
                c.num_tokens()
            );
        }
        Ok(())
    }

    /// Reads the official `UViT(...)` constructor arguments as JSON (the parity fixtures' `config`
    /// metadata): `scalelong` 0..4 and `kappa` select the scaling. Unknown keys are an error.
    pub fn from_official_json(json: &str) -> Result<Self> {
        let a: OfficialArgs =
            serde_json::from_str(json).map_err(|e| candle_core::Error::Msg(format!("official U-ViT config: {e}")))?;
        if !a.conv || !a.skip {
            candle_core::bail!("official U-ViT config: only `conv` = true and `skip` = true are supported");
        }
        if a.qk_scale.is_some() {
            candle_core::bail!("official U-ViT config: `qk_scale` must be null (the default 1/sqrt(head_dim))");
        }
        let scaling = match a.scalelong {
            0 => SkipScaling::None,
            1 => SkipScaling::InvSqrt2,
            2 => SkipScaling::Constant { kappa: a.kappa },
            3 => SkipScaling::Learned,
            4 => SkipScaling::LearnedPerSkip,
            n => candle_core::bail!("official U-ViT config: `scalelong` = {n}, expected 0 to 4"),
        };
        if let Some(named) = &a.scaling {
            let named: SkipScaling = named.parse().map_err(candle_core::Error::wrap)?;
            if named.official_flag() != scaling.official_flag() {
                candle_core::bail!(
                    "official U-ViT config: `scaling` = {named} contradicts `scalelong` = {}",
                    a.scalelong
                );
            }
        }
        let cfg = Self {
            img_size: a.img_size,
            patch_size: a.patch_size,
            in_chans: a.in_chans,
            embed_dim: a.embed_dim,
            depth: a.depth,
            num_heads: a.num_heads,
            mlp_ratio: a.mlp_ratio,
            qkv_bias: a.qkv_bias,
            mlp_time_embed: a.mlp_time_embed,
            num_classes: usize::try_from(a.num_classes).ok().filter(|&n| n > 0),
            scaling,
            ls_reduction: DEFAULT_REDUCTION,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The official `UViT(...)` constructor arguments of this model, as JSON (what
    /// [`UViTConfig::from_official_json`] reads). The official LS modules have a fixed reduction,
    /// so another `ls_reduction` is an error.
    pub fn to_official_json(&self) -> Result<String> {
        if self.scaling.is_learned() && self.ls_reduction != DEFAULT_REDUCTION {
            candle_core::bail!(
                "`ls_reduction` = {}: the official code's LS modules have reduction {DEFAULT_REDUCTION}",
                self.ls_reduction
            );
        }
        let kappa = match self.scaling {
            SkipScaling::Constant { kappa } => kappa,
            _ => SkipScaling::DEFAULT_KAPPA,
        };
        let v = serde_json::json!({
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "qk_scale": null,
            "mlp_time_embed": self.mlp_time_embed,
            "num_classes": self.num_classes.map_or(-1, |n| n as i64),
            "conv": true,
            "skip": true,
            "scalelong": self.scaling.official_flag(),
            "kappa": kappa,
        });
        Ok(serde_json::to_string_pretty(&v).expect("a JSON value serialises"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfficialArgs {
    img_size: usize,
    patch_size: usize,
    in_chans: usize,
    embed_dim: usize,
    depth: usize,
    num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    mlp_ratio: f64,
    #[serde(default)]
    qkv_bias: bool,
    #[serde(default)]
    qk_scale: Option<f64>,
    #[serde(default)]
    mlp_time_embed: bool,
    #[serde(default = "minus_one")]
    num_classes: i64,
    #[serde(default)]
    #[serde(rename = "use_checkpoint")]
    _use_checkpoint: bool,
    #[serde(default = "yes")]
    conv: bool,
    #[serde(default = "yes")]
    skip: bool,
    #[serde(default)]
    scalelong: u8,
    #[serde(default = "half")]
    kappa: f64,
    /// Our name of the mode, written beside `scalelong` by the fixture generator.
    #[serde(default)]
    scaling: Option<String>,
}

fn minus_one() -> i64 {
    -1
}
fn yes() -> bool {
    true
}
fn half() -> f64 {
    SkipScaling::DEFAULT_KAPPA
}

#[cfg(test)]
mod official_json_tests {
    use super::*;

    #[test]
    fn official_arguments_round_trip() {
        for scaling in ["none", "inv-sqrt2", "cs:0.7", "ls", "ls-per-skip"] {
            let cfg = UViTConfig { num_classes: Some(10), ..UViTConfig::preset("cifar10-uvit-s2").unwrap() }
                .with_scaling(scaling.parse().unwrap());
            let json = cfg.to_official_json().unwrap();
            assert_eq!(UViTConfig::from_official_json(&json).unwrap(), cfg, "{json}");
        }
        let odd = UViTConfig { ls_reduction: 4, ..UViTConfig::preset("cifar10-uvit-s2").unwrap() }
            .with_scaling(SkipScaling::Learned);
        assert!(odd.to_official_json().unwrap_err().to_string().contains("ls_reduction"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_json_maps_every_mode() -> Result<()> {
        let base = r#""img_size": 8, "patch_size": 2, "in_chans": 3, "embed_dim": 32, "depth": 6, "num_heads": 4, "mlp_ratio": 4.0, "qkv_bias": false, "mlp_time_embed": false"#;
        let cs = UViTConfig::from_official_json(&format!(
            r#"{{{base}, "num_classes": -1, "scalelong": 2, "kappa": 0.7, "scaling": "cs"}}"#
        ))?;
        assert_eq!(cs.scaling, SkipScaling::Constant { kappa: 0.7 });
        assert_eq!((cs.num_classes, cs.num_tokens(), cs.num_skips()), (None, 17, 3));
        let ls = UViTConfig::from_official_json(&format!(r#"{{{base}, "num_classes": 10, "scalelong": 4}}"#))?;
        assert_eq!((ls.scaling, ls.num_classes, ls.extras()), (SkipScaling::LearnedPerSkip, Some(10), 2));
        let err =
            UViTConfig::from_official_json(&format!(r#"{{{base}, "scalelong": 1, "scaling": "ls"}}"#)).unwrap_err();
        assert!(err.to_string().contains("contradicts"), "{err}");
        let err = UViTConfig::from_official_json(&format!(r#"{{{base}, "dropout": 0.1}}"#)).unwrap_err();
        assert!(err.to_string().contains("unknown field `dropout`"), "{err}");
        let err = UViTConfig::from_official_json(&format!(r#"{{{base}, "scalelong": 2, "kappa": 0}}"#)).unwrap_err();
        assert!(err.to_string().contains("finite number > 0"), "{err}");
        Ok(())
    }

    #[test]
    fn validation_names_the_field() {
        let ok = UViTConfig::preset("cifar10-uvit-s2").unwrap();
        assert!(ok.validate().is_ok());
        let cases = [
            (UViTConfig { patch_size: 3, ..ok.clone() }, "`img_size` = 32 is not a multiple of `patch_size` = 3"),
            (UViTConfig { num_heads: 7, ..ok.clone() }, "`embed_dim` = 512 is not a multiple of `num_heads` = 7"),
            (UViTConfig { depth: 1, ..ok.clone() }, "`depth` = 1"),
            (UViTConfig { num_classes: Some(0), ..ok.clone() }, "`num_classes` = 0"),
            (
                UViTConfig { img_size: 4, patch_size: 2, scaling: SkipScaling::Learned, ..ok.clone() },
                "hidden width of 0",
            ),
            (UViTConfig { scaling: SkipScaling::Constant { kappa: -1.0 }, ..ok.clone() }, "finite number > 0"),
        ];
        for (cfg, want) in cases {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err} does not contain {want}");
        }
        assert!(UViTConfig::preset("cifar10").unwrap_err().to_string().contains("imagenet64-uvit-l4"));
    }

    #[test]
    fn serde_rejects_unknown_keys_and_fills_defaults() {
        let cfg: UViTConfig = serde_json::from_str(
            r#"{"img_size": 32, "patch_size": 2, "in_chans": 3, "embed_dim": 64, "depth": 4, "num_heads": 2, "scaling": "cs:0.7"}"#,
        )
        .unwrap();
        assert_eq!((cfg.mlp_ratio, cfg.ls_reduction, cfg.scaling), (4.0, 16, SkipScaling::Constant { kappa: 0.7 }));
        let err = serde_json::from_str::<UViTConfig>(r#"{"img_size": 32, "patch": 2}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `patch`"), "{err}");
    }
}
