use super::*;
use candle_core::{DType, Device};
use candle_nn::VarMap;
use scalelong_lsc_scaling::SkipFactor;

fn count(cfg: &UViTConfig) -> usize {
    crate::params::count(&cfg.param_specs().unwrap())
}

#[test]
fn official_parameter_counts() {
    let cifar = UViTConfig::preset("cifar10-uvit-s2").unwrap();
    assert_eq!(count(&cifar), 44_255_328);
    assert_eq!(count(&cifar.clone().with_scaling(SkipScaling::cs(0.5).unwrap())), 44_255_328);
    assert_eq!(count(&cifar.clone().with_scaling(SkipScaling::InvSqrt2)), 44_255_328);
    assert_eq!(count(&cifar.clone().with_scaling(SkipScaling::Learned)), 44_263_825);
    assert_eq!(count(&cifar.with_scaling(SkipScaling::LearnedPerSkip)), 44_306_310);
    assert_eq!(count(&UViTConfig::preset("celeba64-uvit-s4").unwrap()), 44_292_228);
    assert_eq!(count(&UViTConfig::preset("imagenet64-uvit-m4").unwrap()), 130_940_292);
    assert_eq!(count(&UViTConfig::preset("imagenet64-uvit-l4").unwrap()), 286_827_652);
}

fn tiny(scaling: SkipScaling, num_classes: Option<usize>) -> UViTConfig {
    UViTConfig {
        img_size: 8,
        patch_size: 2,
        in_chans: 3,
        embed_dim: 16,
        depth: 4,
        num_heads: 2,
        mlp_ratio: 2.0,
        qkv_bias: false,
        mlp_time_embed: false,
        num_classes,
        scaling,
        ls_reduction: 16,
    }
}

fn random_model(cfg: &UViTConfig) -> Result<(UViT, VarMap)> {
    let vm = VarMap::new();
    let model = UViT::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    Ok((model, vm))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn taps_hand_out_skips_before_and_after_scaling() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &dev)?;
    let t = Tensor::new(&[10f32, 900.0], &dev)?;
    for scaling in [
        SkipScaling::None,
        SkipScaling::InvSqrt2,
        SkipScaling::cs(0.5).unwrap(),
        SkipScaling::Learned,
        SkipScaling::LearnedPerSkip,
    ] {
        let cfg = tiny(scaling, None);
        let (model, _vm) = random_model(&cfg)?;
        let mut taps = Taps::default();
        let out = model.forward_with_taps(&x, &t, None, &mut taps)?;
        assert_eq!(max_abs_diff(&out, &model.forward(&x, &t, None)?), 0.0, "{scaling}: taps change the output");
        assert_eq!((taps.skips.len(), taps.scaled_skips.len(), taps.blocks.len()), (2, 2, 5), "{scaling}");
        // Skip i (outermost first) is the output of in-block i.
        assert_eq!(max_abs_diff(&taps.skips[0], &taps.blocks[0]), 0.0);
        for (i, (raw, scaled)) in taps.skips.iter().zip(&taps.scaled_skips).enumerate() {
            let want = match scaling.factor(i + 1, 2).unwrap() {
                SkipFactor::Constant(c) => (raw * c)?,
                SkipFactor::Gate => raw.broadcast_mul(&taps.gates[i])?,
            };
            assert!(max_abs_diff(scaled, &want) < 1e-6, "{scaling}: skip {}", i + 1);
        }
        let gates = if scaling.is_learned() { 2 } else { 0 };
        assert_eq!(taps.gates.len(), gates, "{scaling}");
        if let Some(g) = taps.gates.first() {
            assert_eq!(g.dims(), &[2, 17, 1]);
        }
    }
    // CS with kappa 0.5 and two skips: the innermost (i = 2) is halved, the outermost untouched.
    let (model, _vm) = random_model(&tiny(SkipScaling::cs(0.5).unwrap(), None))?;
    let mut taps = Taps::default();
    model.forward_with_taps(&x, &t, None, &mut taps)?;
    assert_eq!(max_abs_diff(&taps.scaled_skips[0], &taps.skips[0]), 0.0);
    assert!(max_abs_diff(&taps.scaled_skips[1], &(&taps.skips[1] * 0.5)?) < 1e-7);
    Ok(())
}

#[test]
fn varmap_model_has_the_official_initialisation() -> Result<()> {
    let cfg = tiny(SkipScaling::LearnedPerSkip, Some(10));
    let (_, vm) = random_model(&cfg)?;
    let data = vm.data().lock().unwrap();
    assert_eq!(data.len(), cfg.param_specs()?.len());
    let stats = |name: &str| -> (f32, f32) {
        let v = data[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        (mean, max)
    };
    assert_eq!(stats("in_blocks.0.norm1.weight"), (1.0, 1.0));
    assert_eq!(stats("out_blocks.1.skip_linear.bias"), (0.0, 0.0));
    let (_, w) = stats("out_blocks.1.mlp.fc1.weight");
    assert!(w > 0.02 && w < 0.2, "trunc-normal(0.02) weight with max {w}");
    let (_, e) = stats("label_emb.weight");
    assert!(e > 1.0, "N(0, 1) embedding with max {e}");
    // The LS gate keeps PyTorch's default Linear init: uniform in ±1/sqrt(17).
    let (_, s) = stats("se.1.layer1.weight");
    assert!(s <= 1.0 / 17f32.sqrt() && s > 0.1, "{s}");
    Ok(())
}

#[test]
fn bad_inputs_are_errors_not_panics() -> Result<()> {
    let dev = Device::Cpu;
    let (model, _vm) = random_model(&tiny(SkipScaling::None, Some(10)))?;
    let t = Tensor::new(&[1f32], &dev)?;
    let y = Tensor::new(&[3i64], &dev)?;
    assert!(model.forward(&Tensor::zeros((1, 3, 8, 8), DType::F32, &dev)?, &t, Some(&y)).is_ok());
    let err = model.forward(&Tensor::zeros((1, 1, 8, 8), DType::F32, &dev)?, &t, Some(&y)).unwrap_err();
    assert!(err.to_string().contains("expected (B, 3, 8, 8)"), "{err}");
    let err = model.forward(&Tensor::zeros((1, 3, 8, 8), DType::F32, &dev)?, &t, None).unwrap_err();
    assert!(err.to_string().contains("without labels"), "{err}");
    Ok(())
}

/// An empty batch is a clear error, not a panic in a kernel (`sample -n 0` once panicked).
#[test]
fn an_empty_batch_is_an_error() -> Result<()> {
    let (model, _) = random_model(&tiny(SkipScaling::None, None))?;
    let x = Tensor::zeros((0, 3, 8, 8), DType::F32, &Device::Cpu)?;
    let t = Tensor::zeros(0, DType::F32, &Device::Cpu)?;
    let err = model.forward(&x, &t, None).unwrap_err().to_string();
    assert!(err.contains("empty batch"), "{err}");
    Ok(())
}
