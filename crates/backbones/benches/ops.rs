//! The ops a training step spends its time in, forward and forward + backward, at the sizes of
//! U-ViT-S/2 (tokens 257, width 512) and the DDPM CIFAR-10 UNet (3x3 convs, GroupNorm 32) with a
//! small batch: `cargo bench -p scalelong-backbones` (divan prints median and spread per op).

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use scalelong_backbones::unet::SpatialAttention;
use scalelong_backbones::LayerNorm;

fn main() {
    divan::main();
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

/// Runs `f` on a fresh input; with `backward`, also its gradient (through a `Var` input).
fn run(x: &Tensor, backward: bool, f: &dyn Fn(&Tensor) -> Result<Tensor>) {
    if backward {
        let v = Var::from_tensor(x).unwrap();
        let grads = f(v.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        divan::black_box(grads);
    } else {
        divan::black_box(f(x).unwrap());
    }
}

#[divan::bench(args = [false, true])]
fn matmul_tokens_x_width(bencher: divan::Bencher, backward: bool) {
    // One U-ViT linear layer on a batch of 8: (8, 257, 512) x (512, 2048).
    let (x, w) = (randn(&[8, 257, 512]), randn(&[512, 2048]));
    bencher.bench_local(|| run(&x, backward, &|x| x.broadcast_matmul(&w)));
}

#[divan::bench(args = [false, true])]
fn conv2d_3x3_128ch_32px(bencher: divan::Bencher, backward: bool) {
    let conv =
        Conv2d::new(randn(&[128, 128, 3, 3]), Some(randn(&[128])), Conv2dConfig { padding: 1, ..Default::default() });
    let x = randn(&[8, 128, 32, 32]);
    bencher.bench_local(|| run(&x, backward, &|x| conv.forward(x)));
}

#[divan::bench(args = [false, true])]
fn group_norm_32_groups(bencher: divan::Bencher, backward: bool) {
    let gn = GroupNorm::new(randn(&[128]), randn(&[128]), 128, 32, 1e-6).unwrap();
    let x = randn(&[8, 128, 32, 32]);
    bencher.bench_local(|| run(&x, backward, &|x| gn.forward(x)));
}

#[divan::bench(args = [false, true])]
fn layer_norm_width_512(bencher: divan::Bencher, backward: bool) {
    let ln = LayerNorm::new(512, 1e-5, VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap();
    let x = randn(&[8, 257, 512]);
    bencher.bench_local(|| run(&x, backward, &|x| ln.forward(x)));
}

#[divan::bench(args = [false, true])]
fn attention_16x16_256ch(bencher: divan::Bencher, backward: bool) {
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
    bencher.bench_local(|| run(&x, backward, &|x| attn.forward(x)));
}
