//! diffusers' `UNet2DModel` config (`config.json`), with the defaults of its constructor, plus the
//! skip scaling. Keys or values this implementation does not support are errors that name them.

use candle_core::Result;
use scalelong_lsc_scaling::SkipScaling;
use serde::{Deserialize, Serialize};

/// Block types of `UNet2DModel` that are implemented.
pub const DOWN_BLOCKS: &[&str] = &["DownBlock2D", "AttnDownBlock2D"];
pub const UP_BLOCKS: &[&str] = &["UpBlock2D", "AttnUpBlock2D"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNet2DConfig {
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default = "default_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "default_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "default_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "two")]
    pub layers_per_block: usize,
    #[serde(default = "one")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "one_usize")]
    pub downsample_padding: usize,
    #[serde(default = "conv")]
    pub downsample_type: String,
    #[serde(default = "conv")]
    pub upsample_type: String,
    /// Ignored at inference; training here runs without dropout (see docs).
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "silu")]
    pub act_fn: String,
    /// `null` means one head per block (head dim = channels).
    #[serde(default = "eight", with = "nullable")]
    pub attention_head_dim: Option<usize>,
    #[serde(default = "thirty_two", with = "nullable")]
    pub norm_num_groups: Option<usize>,
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "yes")]
    pub add_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
    /// diffusers bookkeeping, accepted and ignored.
    #[serde(default, rename = "_class_name", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    #[serde(default, rename = "_diffusers_version", skip_serializing_if = "Option::is_none")]
    pub diffusers_version: Option<String>,
    #[serde(default, rename = "_name_or_path", skip_serializing_if = "Option::is_none")]
    pub name_or_path: Option<String>,
    /// Ours: how the long skips are scaled (not a diffusers key).
    #[serde(default)]
    pub scaling: SkipScaling,
}

/// An optional number whose default is not `None`: `null` in JSON; TOML has no null, so there it
/// is written `"none"`. Either spelling is read.
mod nullable {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_u64(*n as u64),
            None => s.serialize_str("none"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(usize),
            Text(String),
        }
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Number(n)) => Ok(Some(n)),
            Some(Raw::Text(t)) if t == "none" => Ok(None),
            Some(Raw::Text(t)) => Err(serde::de::Error::custom(format!("{t:?}: expected a number, null or \"none\""))),
        }
    }
}

fn three() -> usize {
    3
}
fn two() -> usize {
    2
}
fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn eight() -> Option<usize> {
    Some(8)
}
fn thirty_two() -> Option<usize> {
    Some(32)
}
fn default_eps() -> f64 {
    1e-5
}
fn positional() -> String {
    "positional".into()
}
fn conv() -> String {
    "conv".into()
}
fn silu() -> String {
    "silu".into()
}
fn default_shift() -> String {
    "default".into()
}
fn default_mid() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn default_down() -> Vec<String> {
    ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"].map(String::from).into()
}
fn default_up() -> Vec<String> {
    ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"].map(String::from).into()
}
fn default_channels() -> Vec<usize> {
    vec![224, 448, 672, 896]
}

impl UNet2DConfig {
    /// Parses a diffusers `config.json` (`source` names it in errors).
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text)
            .map_err(|e| candle_core::Error::Msg(format!("UNet2DModel config {source}: {e}")))?;
        cfg.check().map_err(|e| candle_core::Error::Msg(format!("UNet2DModel config {source}: {e}")))?;
        Ok(cfg)
    }

    /// diffusers' `config.json` of this model. diffusers' `UNet2DModel` has no skip scaling, and a
    /// scaled skip cannot be folded into its weights (the up block's GroupNorm normalises the
    /// skip's channels together with the others), so a scaled model is refused.
    pub fn to_diffusers_json(&self) -> Result<String> {
        if self.scaling != SkipScaling::None {
            candle_core::bail!(
                "`scaling` = {}: diffusers' UNet2DModel has no skip scaling, and it cannot be folded into the weights \
                 (GroupNorm mixes the scaled skip with the unscaled features), so diffusers would compute another \
                 function; only `none` exports to diffusers",
                self.scaling
            );
        }
        let mut v = serde_json::to_value(self).map_err(candle_core::Error::wrap)?;
        let o = v.as_object_mut().expect("a struct serialises to an object");
        o.remove("scaling");
        o.insert("_class_name".into(), "UNet2DModel".into());
        o.insert("_diffusers_version".into(), "0.31.0".into());
        Ok(serde_json::to_string_pretty(&v).expect("a JSON value serialises"))
    }

    /// The same config with another skip scaling.
    pub fn with_scaling(self, scaling: SkipScaling) -> Self {
        Self { scaling, ..self }
    }

    /// Width of the time embedding.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or(4 * self.block_out_channels[0])
    }

    /// GroupNorm groups of the ResNets (diffusers' fallback when `norm_num_groups` is null).
    pub fn groups(&self, channels: usize) -> usize {
        self.norm_num_groups.unwrap_or((channels / 4).min(32))
    }

    /// Channels of each long skip, outermost (conv_in) first.
    pub fn skip_channels(&self) -> Vec<usize> {
        let c = &self.block_out_channels;
        let mut out = vec![c[0]];
        for (k, &ch) in c.iter().enumerate() {
            out.extend(std::iter::repeat_n(ch, self.layers_per_block));
            if k + 1 < c.len() {
                out.push(ch);
            }
        }
        out
    }

    pub fn num_skips(&self) -> usize {
        self.skip_channels().len()
    }

    /// Checks every key this implementation reads, naming the key and what it expects.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(candle_core::Error::Msg)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        let unsupported =
            |key: &str, got: &str, want: &str| Err(format!("`{key}` = {got:?} is not supported: expected {want}"));
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "`block_out_channels` ({n}), `down_block_types` ({}) and `up_block_types` ({}) must have the same, non-zero length",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self.down_block_types.iter().find(|t| !DOWN_BLOCKS.contains(&t.as_str())) {
            return unsupported("down_block_types", t, &DOWN_BLOCKS.join(" or "));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| !UP_BLOCKS.contains(&t.as_str())) {
            return unsupported("up_block_types", t, &UP_BLOCKS.join(" or "));
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2D") => {}
            other => return unsupported("mid_block_type", &format!("{other:?}"), "\"UNetMidBlock2D\""),
        }
        let checks: [(bool, &str, String, &str); 7] = [
            (
                self.time_embedding_type == "positional",
                "time_embedding_type",
                self.time_embedding_type.clone(),
                "\"positional\"",
            ),
            (self.downsample_type == "conv", "downsample_type", self.downsample_type.clone(), "\"conv\""),
            (self.upsample_type == "conv", "upsample_type", self.upsample_type.clone(), "\"conv\""),
            (self.act_fn == "silu" || self.act_fn == "swish", "act_fn", self.act_fn.clone(), "\"silu\""),
            (
                self.resnet_time_scale_shift == "default" || self.resnet_time_scale_shift == "scale_shift",
                "resnet_time_scale_shift",
                self.resnet_time_scale_shift.clone(),
                "\"default\" or \"scale_shift\"",
            ),
            (
                matches!(self.class_embed_type.as_deref(), None | Some("timestep")),
                "class_embed_type",
                format!("{:?}", self.class_embed_type),
                "null or \"timestep\"",
            ),
            (self.norm_eps > 0.0, "norm_eps", self.norm_eps.to_string(), "a number > 0"),
        ];
        if let Some((_, key, got, want)) = checks.into_iter().find(|c| !c.0) {
            return unsupported(key, &got, want);
        }
        for &ch in &self.block_out_channels {
            let g = self.groups(ch);
            if g == 0 || ch % g != 0 {
                return Err(format!("`norm_num_groups` = {g} must divide every block's channels ({ch})"));
            }
            if let Some(h) = self.attention_head_dim {
                if h == 0 || ch % h != 0 {
                    return Err(format!("`attention_head_dim` = {h} must divide every block's channels ({ch})"));
                }
            }
        }
        if self.scaling == SkipScaling::Learned {
            let widths = self.skip_channels();
            if widths.iter().any(|&w| w != widths[0]) {
                return Err(format!(
                    "`scaling` = ls (one calibration network shared by every skip) needs skips of one width, but these have {widths:?} channels: use ls-per-skip"
                ));
            }
        }
        self.scaling.validate().map_err(|e| e.to_string())
    }
}
