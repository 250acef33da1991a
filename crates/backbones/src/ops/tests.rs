//! Each fused op against candle's composed ops (and candle's own conv2d): values and gradients,
//! f64 and f32, over shapes that exercise padding, stride, 1x1 kernels and odd sizes.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};

use super::*;

/// Largest |a - b| relative to the largest |b|, or to 1 where every |b| is smaller: the inputs are
/// N(0, 1), so a result that cancels to near zero (a gradient of four probe values) is held to
/// the inputs' scale rather than to its own.
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let scale = b.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?.max(1.0);
    Ok((a - b)?.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? / scale)
}

/// Compares `fused(inputs)` in `dtype` with `reference(inputs)` evaluated in f64 on the same
/// values, and the gradients of `sum(out * probe)`. The reference runs in f64 because candle's f32
/// reductions (a bias gradient sums 18k terms here) are themselves off by ~1e-5: an f32 reference
/// made the test fail on ~5% of random draws through the reference's rounding, not ours.
fn check(
    shapes: &[&[usize]],
    dtype: DType,
    tol: f64,
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    let dev = Device::Cpu;
    let values =
        shapes.iter().map(|s| Tensor::randn(0f64, 1.0, *s, &dev)?.to_dtype(dtype)).collect::<Result<Vec<_>>>()?;
    let vars = values.iter().map(Var::from_tensor).collect::<Result<Vec<_>>>()?;
    let exact = values.iter().map(|v| Var::from_tensor(&v.to_dtype(DType::F64)?)).collect::<Result<Vec<_>>>()?;
    let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let exact_inputs: Vec<Tensor> = exact.iter().map(|v| v.as_tensor().clone()).collect();
    let (ours, want) = (fused(&inputs)?, reference(&exact_inputs)?);
    assert_eq!(ours.dtype(), dtype);
    assert_eq!(ours.dims(), want.dims());
    let err = rel_err(&ours.to_dtype(DType::F64)?, &want)?;
    assert!(err < tol, "output off by {err}");
    let probe = Tensor::randn(0f64, 1.0, ours.shape(), &dev)?.to_dtype(dtype)?;
    let g_ours = (ours * &probe)?.sum_all()?.backward()?;
    let g_want = (want * probe.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
    for (i, (v, e)) in vars.iter().zip(&exact).enumerate() {
        let (a, b) = (g_ours.get(v).expect("fused op lost a gradient"), g_want.get(e).expect("no reference gradient"));
        assert_eq!(a.dtype(), dtype);
        let err = rel_err(&a.to_dtype(DType::F64)?, b)?;
        assert!(err < tol, "gradient of input {i} off by {err}");
    }
    Ok(())
}

#[test]
fn conv2d_matches_candle() -> Result<()> {
    // (x, w, padding, stride): 3x3 same, strided with and without padding, 1x1, odd and tall; the
    // last two have one image per GEMM and 12 and 9 images, so up to 6 threads run them as a
    // parallel loop over image groups (fewer images: each group's GEMM spread over the threads).
    let cases: [(&[usize], &[usize], usize, usize); 8] = [
        (&[2, 3, 8, 8], &[4, 3, 3, 3], 1, 1),
        (&[3, 4, 9, 7], &[5, 4, 3, 3], 1, 2),
        (&[1, 2, 8, 8], &[3, 2, 3, 3], 0, 2),
        (&[2, 6, 5, 5], &[3, 6, 1, 1], 0, 1),
        (&[2, 2, 7, 8], &[2, 2, 2, 3], 2, 3),
        (&[5, 3, 4, 4], &[2, 3, 3, 3], 0, 1),
        (&[12, 2, 46, 46], &[3, 2, 3, 3], 1, 1),
        (&[9, 3, 90, 90], &[2, 3, 3, 3], 1, 2),
    ];
    for (x, w, padding, stride) in cases {
        let p = Conv2dParams { padding, stride };
        // f32: the bias gradient of the last case sums 18k terms, and a draw whose sums cancel
        // to a few percent of their usual size showed 1e-5 (1 in 500 runs); the f64 rows hold
        // the arithmetic to 1e-12, the f32 rows catch what is wrong in f32 only.
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-4)] {
            check(
                &[x, w],
                dtype,
                tol,
                |t| conv2d(&t[0], &t[1], None, p),
                |t| t[0].conv2d(&t[1], padding, stride, 1, 1),
            )?;
            let reference = |t: &[Tensor]| {
                t[0].conv2d(&t[1], padding, stride, 1, 1)?.broadcast_add(&t[2].reshape((1, w[0], 1, 1))?)
            };
            check(&[x, w, &[w[0]]], dtype, tol, |t| conv2d(&t[0], &t[1], Some(&t[2]), p), reference)?;
        }
    }
    Ok(())
}

/// The inference variant: asymmetric padding, 1x1 kernels read directly (one image and several),
/// and the fused ReLU, against candle's conv2d of an explicitly padded input.
#[test]
fn conv2d_inference_matches_candle() -> Result<()> {
    let dev = Device::Cpu;
    // (x, w, (pad rows, pad cols), stride)
    type Case<'a> = (&'a [usize], &'a [usize], (usize, usize), usize);
    let cases: [Case; 5] = [
        (&[2, 3, 9, 9], &[4, 3, 1, 7], (0, 3), 1),
        (&[3, 4, 7, 8], &[5, 4, 7, 1], (3, 0), 1),
        (&[1, 6, 5, 5], &[3, 6, 1, 1], (0, 0), 1),
        (&[4, 6, 5, 5], &[3, 6, 1, 1], (0, 0), 1),
        (&[2, 3, 9, 8], &[2, 3, 3, 3], (0, 0), 2),
    ];
    for (x, w, pad, stride) in cases {
        let x = Tensor::randn(0f32, 1.0, x, &dev)?;
        let w = Tensor::randn(0f32, 1.0, w, &dev)?;
        let b = Tensor::randn(0f32, 1.0, w.dim(0)?, &dev)?;
        let padded = x.pad_with_zeros(2, pad.0, pad.0)?.pad_with_zeros(3, pad.1, pad.1)?;
        let linear = padded.conv2d(&w, 0, stride, 1, 1)?.broadcast_add(&b.reshape((w.dim(0)?, 1, 1))?)?;
        for relu in [false, true] {
            let want = if relu { linear.relu()? } else { linear.clone() };
            let ours = conv2d_inference(&x, &w, &b, pad, stride, relu)?;
            assert_eq!(ours.dims(), want.dims());
            assert!(rel_err(&ours, &want)? < 1e-5, "{pad:?} {stride} relu {relu}: {}", rel_err(&ours, &want)?);
        }
    }
    Ok(())
}

/// Where the stride leaves input rows unused, candle's own conv2d backward fails (a shape error in
/// its transposed convolution); ours is checked against finite differences there.
#[test]
fn conv2d_gradient_with_leftover_rows() -> Result<()> {
    let dev = Device::Cpu;
    let p = Conv2dParams { padding: 0, stride: 2 };
    let x0 = Tensor::randn(0f64, 1.0, (1, 2, 6, 5), &dev)?;
    let w = Tensor::randn(0f64, 1.0, (3, 2, 3, 2), &dev)?;
    let probe = Tensor::randn(0f64, 1.0, conv2d(&x0, &w, None, p)?.shape(), &dev)?;
    let loss = |x: &Tensor| -> Result<f64> { (conv2d(x, &w, None, p)? * &probe)?.sum_all()?.to_scalar::<f64>() };
    let x = Var::from_tensor(&x0)?;
    let grad = (conv2d(x.as_tensor(), &w, None, p)? * &probe)?.sum_all()?.backward()?;
    let grad = grad.get(&x).expect("no gradient").flatten_all()?.to_vec1::<f64>()?;
    let base = x0.flatten_all()?.to_vec1::<f64>()?;
    for (i, g) in grad.iter().enumerate() {
        let at = |d: f64| -> Result<f64> {
            let mut v = base.clone();
            v[i] += d;
            loss(&Tensor::from_vec(v, x0.shape(), &dev)?)
        };
        let fd = (at(1e-6)? - at(-1e-6)?) / 2e-6;
        assert!((fd - g).abs() < 1e-6, "element {i}: finite differences {fd}, gradient {g}");
    }
    Ok(())
}

#[test]
fn layer_norm_matches_composed() -> Result<()> {
    for shape in [&[3usize, 7][..], &[2, 5, 16], &[1, 64]] {
        let c = *shape.last().unwrap();
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let (fused, composed) = (
                |t: &[Tensor]| layer_norm(&t[0], &t[1], &t[2], 1e-5),
                |t: &[Tensor]| norm::composed(&t[0], &t[1], &t[2], None, 1e-5),
            );
            check(&[shape, &[c], &[c]], dtype, tol, fused, composed)?;
        }
    }
    Ok(())
}

#[test]
fn group_norm_matches_composed() -> Result<()> {
    for (shape, groups) in
        [(&[2usize, 4, 3, 3][..], 2), (&[3, 6, 5, 4], 3), (&[2, 8, 4, 4], 8), (&[1, 4, 2, 2], 1), (&[2, 6, 7], 3)]
    {
        let c = shape[1];
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let fused = |t: &[Tensor]| group_norm(&t[0], &t[1], &t[2], groups, 1e-5);
            let composed = |t: &[Tensor]| norm::composed(&t[0], &t[1], &t[2], Some(groups), 1e-5);
            check(&[shape, &[c], &[c]], dtype, tol, fused, composed)?;
            let fused = |t: &[Tensor]| group_norm_silu(&t[0], &t[1], &t[2], groups, 1e-5);
            let composed = |t: &[Tensor]| norm::composed(&t[0], &t[1], &t[2], Some(groups), 1e-5)?.silu();
            check(&[shape, &[c], &[c]], dtype, tol, fused, composed)?;
        }
    }
    let (x, p) = (Tensor::zeros((1, 6, 2, 2), DType::F32, &Device::Cpu)?, Tensor::ones(6, DType::F32, &Device::Cpu)?);
    assert!(group_norm(&x, &p, &p, 4, 1e-5).is_err(), "6 channels in 4 groups");
    assert!(group_norm(&x, &p.narrow(0, 0, 5)?, &p, 3, 1e-5).is_err(), "5 weights for 6 channels");
    Ok(())
}

#[test]
fn softmax_matches_composed() -> Result<()> {
    for shape in [&[4usize, 9][..], &[2, 3, 5, 17], &[1, 1]] {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            check(&[shape], dtype, tol, |t| softmax_last_dim(&t[0]), |t| softmax::composed(&t[0]))?;
        }
    }
    // Shifted far from zero: no overflow.
    let big = Tensor::new(&[[1000f32, 1000.0, 1001.0]], &Device::Cpu)?;
    let s = softmax_last_dim(&big)?.to_vec2::<f32>()?;
    assert!(s[0].iter().all(|v| v.is_finite()) && (s[0].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    Ok(())
}

#[test]
fn fast_erf_is_within_1e6_of_libm() {
    for i in -60_000..=60_000 {
        let x = i as f32 * 1e-4;
        let (ours, libm) = (<f32 as super::Float>::erf(x), libm::erff(x));
        assert!((ours - libm).abs() < 1e-6, "erf({x}) = {ours}, libm {libm}");
    }
}

#[test]
fn vectorised_exp_is_within_3_ulp_of_libm_and_saturates() {
    let exp = <f32 as super::Float>::exp_vec;
    let mut x = -104.0f32;
    while x < 88.7 {
        let (ours, libm) = (exp(x) as f64, (x as f64).exp());
        // Relative error against the exact value, in units of f32's epsilon (subnormals: absolute).
        let err = (ours - libm).abs() / libm.max(f32::MIN_POSITIVE as f64);
        assert!(err < 3.0 * f32::EPSILON as f64, "exp({x}) = {ours}, exactly {libm}");
        x += 1.3e-3;
    }
    assert_eq!((exp(0.0), exp(-200.0), exp(100.0)), (1.0, 0.0, f32::INFINITY));
    assert_eq!((exp(f32::NEG_INFINITY), exp(f32::INFINITY)), (0.0, f32::INFINITY));
    assert!(exp(f32::NAN).is_nan());
}

/// GELU and SiLU against candle's. candle's GELU gradient rounds 1/sqrt(2 pi) to 0.398942 (1e-6
/// relative), hence GELU's f64 tolerance; ours is exact, as the finite-difference test in `nn` checks.
#[test]
fn activations_match_candle() -> Result<()> {
    type Op = fn(&Tensor) -> Result<Tensor>;
    let cases: [(Op, Op, f64); 2] = [(gelu_erf, |x| x.gelu_erf(), 2e-6), (silu, |x| x.silu(), 1e-12)];
    for (ours, candle, f64_tol) in cases {
        for shape in [&[4usize, 9][..], &[3, 5, 40_000]] {
            for (dtype, tol) in [(DType::F64, f64_tol), (DType::F32, 1e-5)] {
                check(&[shape], dtype, tol, |t| ours(&t[0]), |t| candle(&t[0]))?;
            }
        }
    }
    Ok(())
}

#[test]
fn bias_add_matches_candle() -> Result<()> {
    // [3, 130, 70]: more rows than one task takes, the last task short.
    for shape in [&[4usize, 9][..], &[3, 70, 33], &[1, 5], &[3, 130, 70]] {
        let n = *shape.last().unwrap();
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            check(&[shape, &[n]], dtype, tol, |t| bias_add(&t[0], &t[1]), |t| t[0].broadcast_add(&t[1]))?;
        }
    }
    let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
    assert!(bias_add(&x, &Tensor::zeros(2, DType::F32, &Device::Cpu)?).is_err());
    Ok(())
}

#[test]
fn upsample_matches_broadcast() -> Result<()> {
    for shape in [&[2usize, 3, 4, 5][..], &[1, 1, 1, 1], &[3, 2, 7, 3]] {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
            let reference = |t: &[Tensor]| {
                let (b, c, h, w) = t[0].dims4()?;
                t[0].reshape((b, c, h, 1, w, 1))?.broadcast_as((b, c, h, 2, w, 2))?.reshape((b, c, 2 * h, 2 * w))
            };
            check(&[shape], dtype, tol, |t| upsample_nearest2x(&t[0]), reference)?;
        }
    }
    Ok(())
}

#[test]
fn attention_matches_composed() -> Result<()> {
    for (b, l, c, heads) in [(2, 5, 12, 3), (1, 9, 8, 1), (3, 4, 16, 4)] {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let shape: &[usize] = &[b, l, c];
            let scale = 1.0 / ((c / heads) as f64).sqrt();
            let fused = |t: &[Tensor]| attention(&t[0], &t[1], &t[2], heads, scale);
            let reference = |t: &[Tensor]| attention::composed(&t[0], &t[1], &t[2], heads, scale);
            check(&[shape, shape, shape], dtype, tol, fused, reference)?;
            // q, k, v as strided views of one fused projection, as U-ViT's qkv.
            let split = |t: &Tensor, i: usize| t.narrow(2, i * c, c);
            let fused = |t: &[Tensor]| attention(&split(&t[0], 0)?, &split(&t[0], 1)?, &split(&t[0], 2)?, heads, scale);
            let reference = |t: &[Tensor]| {
                attention::composed(&split(&t[0], 0)?, &split(&t[0], 1)?, &split(&t[0], 2)?, heads, scale)
            };
            check(&[&[b, l, 3 * c]], dtype, tol, fused, reference)?;
            // The same projection through the packed op (one gradient for all of it).
            let packed = |t: &[Tensor]| attention_packed(&t[0], heads, scale);
            check(&[&[b, l, 3 * c]], dtype, tol, packed, reference)?;
        }
    }
    let x = Tensor::zeros((1, 4, 6), DType::F32, &Device::Cpu)?;
    assert!(attention(&x, &x, &x, 4, 1.0).is_err(), "6 channels in 4 heads");
    assert!(attention_packed(&x, 4, 1.0).is_err(), "2 channels in 4 heads");
    assert!(attention_packed(&Tensor::zeros((1, 4, 7), DType::F32, &Device::Cpu)?, 1, 1.0).is_err(), "7 not 3C");
    Ok(())
}

#[test]
fn non_contiguous_inputs_are_handled() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 8, 8, 3), &dev)?.permute((0, 3, 1, 2))?;
    let w = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev)?;
    let p = Conv2dParams { padding: 1, stride: 1 };
    assert!(rel_err(&conv2d(&x, &w, None, p)?, &x.conv2d(&w, 1, 1, 1, 1)?)? < 1e-5);
    let t = Tensor::randn(0f32, 1.0, (6, 5), &dev)?.t()?;
    assert!(rel_err(&softmax_last_dim(&t)?, &softmax::composed(&t)?)? < 1e-5);
    Ok(())
}

#[test]
fn conv2d_rejects_mismatched_channels() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev)?;
    let w = Tensor::zeros((2, 4, 3, 3), DType::F32, &dev)?;
    let err = conv2d(&x, &w, None, Conv2dParams { padding: 1, stride: 1 }).unwrap_err().to_string();
    assert!(err.contains("input channels"), "{err}");
    Ok(())
}

/// Parallel reductions (weight, bias and norm-parameter gradients) sum in a fixed order, so that
/// two runs of the same step give the same bits (resume and seeds reproduce exactly).
#[test]
fn gradients_are_bitwise_reproducible() -> Result<()> {
    let dev = Device::Cpu;
    // 37 images of 6x6 (one GEMM for all), and 37 of 46x46 (a parallel loop over 37 image groups).
    for size in [6, 46] {
        gradients_reproduce(&Tensor::randn(0f32, 1.0, (37, 8, size, size), &dev)?)?;
    }
    Ok(())
}

fn gradients_reproduce(x: &Tensor) -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(x)?;
    let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 8, 3, 3), &dev)?)?;
    let (gw, gb) = (
        Var::from_tensor(&Tensor::randn(0f32, 1.0, 8, &dev)?)?,
        Var::from_tensor(&Tensor::randn(0f32, 1.0, 8, &dev)?)?,
    );
    let run = || -> Result<Vec<Vec<f32>>> {
        let y = conv2d(x.as_tensor(), w.as_tensor(), Some(gb.as_tensor()), Conv2dParams { padding: 1, stride: 1 })?;
        let y = group_norm(&y, gw.as_tensor(), gb.as_tensor(), 4, 1e-5)?;
        let grads = y.sqr()?.sum_all()?.backward()?;
        [&w, &gw, &gb].iter().map(|v| grads.get(v).unwrap().flatten_all()?.to_vec1::<f32>()).collect()
    };
    let first = run()?;
    for _ in 0..4 {
        assert!(run()? == first, "gradients changed between identical runs");
    }
    Ok(())
}

/// `x` (f64) rounded to bf16 through f32: half 2.7's direct f64 -> bf16 conversion (candle's
/// cast) drops the last 32 bits of the f64 before rounding, so f32 values just above a tie
/// (low bits 0x8001..0x8007) round down: 8 in 100k normal draws.
fn to_bf16(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F32)?.to_dtype(DType::BF16)?.to_dtype(x.dtype())
}

/// In the references of autocast: a GEMM operand rounded to bf16 going forward, its gradient
/// passed through unchanged.
fn bf16_operand(x: &Tensor) -> Result<Tensor> {
    let rounded = to_bf16(x)?.detach();
    rounded + (x - x.detach())?
}

/// The identity going forward whose backward rounds the gradient to bf16: autocast's GEMM
/// backward reads its output gradient as a bf16 operand.
fn bf16_output(y: &Tensor) -> Result<Tensor> {
    struct RoundGrad;
    impl candle_core::CustomOp1 for RoundGrad {
        fn name(&self) -> &'static str {
            "round-grad"
        }
        fn cpu_fwd(&self, s: &candle_core::CpuStorage, l: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
            let candle_core::CpuStorage::F64(v) = s else { candle_core::bail!("round-grad: f64 only") };
            Ok((candle_core::CpuStorage::F64(contiguous(v, l, self.name())?.to_vec()), l.shape().clone()))
        }
        fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
            Ok(Some(to_bf16(grad)?))
        }
    }
    y.contiguous()?.apply_op1(RoundGrad)
}

/// Inside `autocast_bf16`, a convolution's three GEMMs take bf16 operands (the input, the weight
/// and the output gradient rounded; f32 sums): values and gradients against candle's f64
/// convolution of the rounded operands, over the shapes of `conv2d_matches_candle` (every GEMM
/// layout: one image, image groups, the parallel loop over groups, strides and paddings).
#[test]
fn conv2d_inside_autocast_has_bf16_operands() -> Result<()> {
    // The last three (channels a multiple of 32, stride 1, few padded positions) run on AMX with
    // the tiles reading the padded images in place: one image per group (an odd width, a
    // partial row block), a 1x1 kernel over a group of three images.
    let cases: [(&[usize], &[usize], usize, usize); 8] = [
        (&[2, 3, 8, 8], &[4, 3, 3, 3], 1, 1),
        (&[3, 4, 9, 7], &[5, 4, 3, 3], 1, 2),
        (&[2, 6, 5, 5], &[3, 6, 1, 1], 0, 1),
        (&[12, 2, 46, 46], &[3, 2, 3, 3], 1, 1),
        (&[2, 40, 24, 24], &[33, 40, 3, 3], 1, 1),
        (&[1, 64, 24, 24], &[40, 64, 3, 3], 1, 1),
        (&[1, 32, 23, 29], &[5, 32, 3, 3], 1, 1),
        (&[3, 32, 12, 20], &[8, 32, 1, 1], 0, 1),
    ];
    for (x, w, padding, stride) in cases {
        let p = Conv2dParams { padding, stride };
        let reference =
            |t: &[Tensor]| bf16_output(&bf16_operand(&t[0])?.conv2d(&bf16_operand(&t[1])?, padding, stride, 1, 1)?);
        check(&[x, w], DType::F32, 1e-4, |t| autocast_bf16(|| conv2d(&t[0], &t[1], None, p)), reference)?;
        // Outside autocast the same reference is off by bf16's rounding.
        let dev = Device::Cpu;
        let (xv, wv) = (Tensor::randn(0f32, 1.0, x, &dev)?, Tensor::randn(0f32, 1.0, w, &dev)?);
        let want = reference(&[xv.to_dtype(DType::F64)?, wv.to_dtype(DType::F64)?])?;
        let f32_err = rel_err(&conv2d(&xv, &wv, None, p)?.to_dtype(DType::F64)?, &want)?;
        assert!(f32_err > 5e-4, "{x:?}: the f32 convolution is within {f32_err} of the bf16 one");
    }
    Ok(())
}

/// Root mean square of `a - b` over that of `b`: rare bf16 rounding flips between our f32
/// intermediates and the reference's f64 ones (a probability on either side of a rounding
/// boundary moves one product by 2^-8) barely move it, a missing rounding moves every element.
fn rms_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let rms = |t: &Tensor| -> Result<f64> { t.sqr()?.mean_all()?.sqrt()?.to_scalar::<f64>() };
    Ok(rms(&(a.to_dtype(DType::F64)? - b)?)? / rms(b)?)
}

/// Inside `autocast_bf16`, attention's four GEMMs (q k^T, p v and their gradients) take bf16
/// operands; the scale, softmax and its gradient stay f32. Against a reference that rounds the
/// same operands, output and gradients are five times closer than f32 attention is.
#[test]
fn attention_inside_autocast_has_bf16_operands() -> Result<()> {
    let dev = Device::Cpu;
    for (b, l, c, heads) in [(2, 5, 12, 3), (1, 40, 64, 2), (3, 17, 96, 3)] {
        let scale = 1.0 / ((c / heads) as f64).sqrt();
        let split = |t: &Tensor| t.reshape((b, l, heads, c / heads))?.transpose(1, 2)?.contiguous();
        let vars = (0..3)
            .map(|_| Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, l, c), &dev)?))
            .collect::<Result<Vec<_>>>()?;
        let exact = vars.iter().map(|v| Var::from_tensor(&v.to_dtype(DType::F64)?)).collect::<Result<Vec<_>>>()?;
        let [q, k, v] = [0, 1, 2].map(|i| bf16_operand(&split(exact[i].as_tensor())?));
        let scores = (bf16_output(&q?.matmul(&k?.t()?.contiguous()?)?)? * scale)?;
        let probs = bf16_operand(&softmax::composed(&scores)?)?;
        let want = bf16_output(&probs.matmul(&v?)?)?.transpose(1, 2)?.reshape((b, l, c))?;
        let probe = Tensor::randn(0f32, 1.0, (b, l, c), &dev)?;
        let want_grads = (&want * probe.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
        // q, k, v apart, or packed into one (B, L, 3C) projection whose gradient is split after.
        let packed =
            Var::from_tensor(&Tensor::cat(&[vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor()], 2)?)?;
        let run = |bf16: bool, pack: bool| -> Result<Vec<f64>> {
            let f = || match pack {
                false => attention(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), heads, scale),
                true => attention_packed(packed.as_tensor(), heads, scale),
            };
            let out = if bf16 { autocast_bf16(f)? } else { f()? };
            let grads = (&out * &probe)?.sum_all()?.backward()?;
            let mut errs = vec![rms_err(&out, &want)?];
            for (i, (v, e)) in vars.iter().zip(&exact).enumerate() {
                let grad = match pack {
                    false => grads.get(v).expect("gradient").clone(),
                    true => grads.get(&packed).expect("gradient").narrow(2, i * c, c)?,
                };
                errs.push(rms_err(&grad, want_grads.get(e).expect("reference gradient"))?);
            }
            Ok(errs)
        };
        for pack in [false, true] {
            let (ours, f32_errs) = (run(true, pack)?, run(false, pack)?);
            for (i, (e, f)) in ours.iter().zip(&f32_errs).enumerate() {
                assert!(
                    *e < f / 5.0,
                    "{b}x{l}x{c} {heads} heads (packed {pack}), output/gradient {i}: rms off by {e} (f32: {f})"
                );
            }
        }
    }
    Ok(())
}
