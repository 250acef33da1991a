//! Multiply-add count of one forward pass per image (2 FLOPs each), from the config alone: the
//! matmuls and convolutions, which are all but a few percent of the work. A training step
//! (forward + backward) is about three forward passes. Used to report achieved GFLOP/s.

use crate::{UNet2DConfig, UViTConfig};

pub(crate) fn uvit(c: &UViTConfig) -> f64 {
    let (n, d, p) = (c.num_tokens() as f64, c.embed_dim as f64, c.num_patches() as f64);
    let patch = (c.in_chans * c.patch_size * c.patch_size) as f64;
    let hidden = (c.mlp_ratio * c.embed_dim as f64).floor();
    // qkv, proj, MLP; scores and weighted sum over heads.
    let block = 2.0 * n * d * (3.0 * d + d + 2.0 * hidden) + 4.0 * n * n * d;
    let blocks = (c.depth + 1) as f64 * block;
    let skip_linear = c.num_skips() as f64 * 2.0 * n * 2.0 * d * d;
    let pixels = (c.img_size * c.img_size) as f64;
    let io = 2.0 * p * patch * d * 2.0 + 2.0 * pixels * (c.in_chans * c.in_chans * 9) as f64;
    blocks + skip_linear + io
}

pub(crate) fn unet(c: &UNet2DConfig) -> f64 {
    let conv = |cin: usize, cout: usize, k: usize, side: usize| 2.0 * (cin * cout * k * k * side * side) as f64;
    let resnet = |cin: usize, cout: usize, side: usize| {
        conv(cin, cout, 3, side) + conv(cout, cout, 3, side) + if cin != cout { conv(cin, cout, 1, side) } else { 0.0 }
    };
    let attention = |ch: usize, side: usize| {
        let t = (side * side) as f64;
        2.0 * t * (4 * ch * ch) as f64 + 4.0 * t * t * ch as f64
    };
    let ch = &c.block_out_channels;
    let mut side = c.sample_size.unwrap_or(32);
    let mut total = conv(c.in_channels, ch[0], 3, side);
    let mut skips = vec![ch[0]];
    let mut cin = ch[0];
    for (k, (&cout, kind)) in ch.iter().zip(&c.down_block_types).enumerate() {
        for j in 0..c.layers_per_block {
            total += resnet(if j == 0 { cin } else { cout }, cout, side);
            if kind == "AttnDownBlock2D" {
                total += attention(cout, side);
            }
            skips.push(cout);
        }
        if k + 1 < ch.len() {
            side /= 2;
            total += conv(cout, cout, 3, side);
            skips.push(cout);
        }
        cin = cout;
    }
    let last = *ch.last().unwrap_or(&0);
    total += 2.0 * resnet(last, last, side) + if c.add_attention { attention(last, side) } else { 0.0 };
    let mut prev = last;
    for (k, kind) in c.up_block_types.iter().enumerate() {
        let cout = ch[ch.len() - 1 - k];
        for j in 0..=c.layers_per_block {
            let skip = skips.pop().unwrap_or(0);
            total += resnet(if j == 0 { prev } else { cout } + skip, cout, side);
            if kind == "AttnUpBlock2D" {
                total += attention(cout, side);
            }
        }
        if k + 1 < ch.len() {
            side *= 2;
            total += conv(cout, cout, 3, side);
        }
        prev = cout;
    }
    total + conv(ch[0], c.out_channels, 3, side)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Architecture, ModelConfig};

    #[test]
    fn known_counts() {
        // U-ViT-S/2 on CIFAR-10: the U-ViT paper reports 11.34 G multiply-adds per image, a count
        // without the attention-score matmuls (13 blocks x 2 x 257^2 x 512 multiply-adds).
        let s2 = ModelConfig::UViT(UViTConfig::preset("cifar10-uvit-s2").unwrap());
        let attention = 13.0 * 2.0 * 257f64.powi(2) * 512.0 / 1e9;
        let gmacs = s2.forward_flops() / 2e9;
        assert!((gmacs - attention - 11.34).abs() < 0.05, "{gmacs}");
        // DDPM CIFAR-10 UNet: about 6.1 G multiply-adds per image (reported for the 35.7M model).
        let text = r#"{"block_out_channels": [128, 256, 256, 256], "layers_per_block": 2, "attention_head_dim": null,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "sample_size": 32,
            "downsample_padding": 0, "flip_sin_to_cos": false, "freq_shift": 1, "norm_eps": 1e-06}"#;
        let ddpm = ModelConfig::UNet2D(UNet2DConfig::from_json(text, "test").unwrap());
        let gmacs = ddpm.forward_flops() / 2e9;
        assert!((gmacs - 6.1).abs() < 0.3, "{gmacs}");
    }
}
