//! The ops a training step spends its time in, forward and forward + backward, at the sizes of
//! U-ViT-S/2 (tokens 257, width 512) and the DDPM CIFAR-10 UNet (3x3 convs, GroupNorm 32) with a
//! small batch: `cargo bench -p scalelong-backbones` (divan prints median and spread per op).
//! Each op runs as ours (`scalelong_backbones::ops`) and as candle's (candle-nn or composed from
//! candle's primitives), forward (`fwd`) and forward + backward (`bwd`).

use candle_core::{DType, Device, Module, Result, Tensor, Var, D};
use candle_nn::VarBuilder;
use scalelong_backbones::ops::{conv2d, gelu_erf, group_norm, layer_norm, softmax_last_dim, Conv2dParams};
use scalelong_backbones::unet::SpatialAttention;

/// Implementation and pass of one measurement.
const CASES: [&str; 4] = ["ours/fwd", "ours/bwd", "candle/fwd", "candle/bwd"];

fn main() {
    divan::main();
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

/// Runs `ours` or `candle` (as `case` says) on `x`; for `bwd`, also its gradient (through a `Var`).
fn run(x: &Tensor, case: &str, ours: &dyn Fn(&Tensor) -> Result<Tensor>, candle: &dyn Fn(&Tensor) -> Result<Tensor>) {
    let f = if case.starts_with("ours") { ours } else { candle };
    if case.ends_with("bwd") {
        let v = Var::from_tensor(x).unwrap();
        let grads = f(v.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        divan::black_box(grads);
    } else {
        divan::black_box(f(x).unwrap());
    }
}

#[divan::bench(args = ["fwd", "bwd"])]
fn matmul_tokens_x_width(bencher: divan::Bencher, case: &str) {
    // One U-ViT linear layer on a batch of 8: (8, 257, 512) x (512, 2048); candle's GEMM only.
    let (x, w) = (randn(&[8, 257, 512]), randn(&[512, 2048]));
    let f = |x: &Tensor| x.broadcast_matmul(&w);
    bencher.bench_local(|| run(&x, case, &f, &f));
}

#[divan::bench(args = CASES)]
fn conv2d_3x3_128ch_32px(bencher: divan::Bencher, case: &str) {
    let (x, w) = (randn(&[8, 128, 32, 32]), randn(&[128, 128, 3, 3]));
    let p = Conv2dParams { padding: 1, stride: 1 };
    bencher.bench_local(|| run(&x, case, &|x| conv2d(x, &w, None, p), &|x| x.conv2d(&w, 1, 1, 1, 1)));
}

/// Candle-nn's GroupNorm and our LayerNorm before the fused op: the same normalisation from
/// candle's primitives (mean, centre, variance, divide, scale, shift).
fn composed_norm(x: &Tensor, chunk: usize, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let rows = x.reshape((x.elem_count() / chunk, chunk))?;
    let centred = rows.broadcast_sub(&rows.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + 1e-5)?.sqrt()?)?.reshape(x.shape())?;
    normed.broadcast_mul(w)?.broadcast_add(b)
}

#[divan::bench(args = CASES)]
fn group_norm_32_groups(bencher: divan::Bencher, case: &str) {
    // 128 channels in 32 groups at 32x32: chunks of 4 channels x 1024 pixels.
    let (x, w, b) = (randn(&[8, 128, 32, 32]), randn(&[128]), randn(&[128]));
    let (w4, b4) = (w.reshape((1, 128, 1, 1)).unwrap(), b.reshape((1, 128, 1, 1)).unwrap());
    let ours = |x: &Tensor| group_norm(x, &w, &b, 32, 1e-5);
    bencher.bench_local(|| run(&x, case, &ours, &|x| composed_norm(x, 4096, &w4, &b4)));
}

#[divan::bench(args = CASES)]
fn layer_norm_width_512(bencher: divan::Bencher, case: &str) {
    let (x, w, b) = (randn(&[8, 257, 512]), randn(&[512]), randn(&[512]));
    let ours = |x: &Tensor| layer_norm(x, &w, &b, 1e-5);
    bencher.bench_local(|| run(&x, case, &ours, &|x| composed_norm(x, 512, &w, &b)));
}

#[divan::bench(args = CASES)]
fn gelu_mlp_hidden(bencher: divan::Bencher, case: &str) {
    // The U-ViT-S MLP's hidden activations of a batch of 8: (8, 257, 2048).
    let x = randn(&[8, 257, 2048]);
    bencher.bench_local(|| run(&x, case, &gelu_erf, &|x| x.gelu_erf()));
}

#[divan::bench(args = CASES)]
fn softmax_257_tokens(bencher: divan::Bencher, case: &str) {
    // U-ViT-S attention scores of a batch of 8: 8 heads, 257 x 257.
    let x = randn(&[8, 8, 257, 257]);
    let composed = |x: &Tensor| {
        let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    };
    bencher.bench_local(|| run(&x, case, &softmax_last_dim, &composed));
}

#[divan::bench(args = ["fwd", "bwd"])]
fn attention_16x16_256ch(bencher: divan::Bencher, case: &str) {
    // The DDPM UNet's attention at 16x16 (256 channels, one head), with its GroupNorm.
    let vb = VarBuilder::from_tensors(
        [
            ("group_norm.weight", randn(&[256])),
            ("group_norm.bias", randn(&[256])),
            ("to_q.weight", randn(&[256, 256])),
            ("to_q.bias", randn(&[256])),
            ("to_k.weight", randn(&[256, 256])),
            ("to_k.bias", randn(&[256])),
            ("to_v.weight", randn(&[256, 256])),
            ("to_v.bias", randn(&[256])),
            ("to_out.0.weight", randn(&[256, 256])),
            ("to_out.0.bias", randn(&[256])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        DType::F32,
        &Device::Cpu,
    );
    let attn = SpatialAttention::new(256, 256, 32, 1e-6, 1.0, vb).unwrap();
    let x = randn(&[8, 256, 16, 16]);
    let f = |x: &Tensor| attn.forward(x);
    bencher.bench_local(|| run(&x, case, &f, &f));
}
