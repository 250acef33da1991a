//! Numerical parity with the official PyTorch code, on every fixture in `../shared/parity/`
//! (or `$SCALELONG_PARITY_DIR`). Each model case holds the official weights (`model.*`), inputs
//! (`input.*`), the output and the gradients (`grad.*`) of `sum(output * probe)`. See the
//! fixtures' README for the format; any fixture in it is checked, whatever its shapes or config.
//!
//! Run with `cargo test --release --test parity -- --nocapture` to see each fixture's worst errors.

mod common;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use common::{fixtures, parity_dir, Fixture};
use scalelong::backbones::params::ParamSpec;
use scalelong::backbones::{checkpoint, Architecture, Network, SkipScaling, UNet2D, UNet2DConfig, UViT, UViTConfig};

/// Output agreement, absolute.
const OUTPUT_TOL: f64 = 1e-4;
/// Gradient agreement, relative to the largest magnitude of each reference gradient.
const GRAD_TOL: f64 = 1e-3;
/// Some gradients are zero in exact arithmetic (attention key biases: softmax ignores a shift;
/// a bias right before a GroupNorm with one channel per group), so the reference holds float64
/// round-off (~1e-15) and "relative to its largest magnitude" means nothing. Their scale is taken
/// as at least this fraction of the largest gradient anywhere in the model.
const ZERO_GRAD_FLOOR: f64 = 1e-3;

/// Largest |a - b| and largest |b|.
fn max_err(ours: &Tensor, reference: &Tensor) -> Result<(f64, f64)> {
    if ours.dims() != reference.dims() {
        bail!("shape {:?}, reference {:?}", ours.dims(), reference.dims());
    }
    let (a, b) = (ours.to_dtype(DType::F64)?, reference.to_dtype(DType::F64)?);
    let err = (a - &b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    Ok((err, scale))
}

/// Runs the forward and backward pass of a model case and compares them with the fixture.
/// `forward` builds the model from the builder and runs it on the input image.
fn check_model_case(
    fx: &Fixture,
    specs: &[ParamSpec],
    forward: impl Fn(VarBuilder, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<Vec<String>> {
    let weights = fx.group("model");
    checkpoint::check(&fx.name, specs, &weights)?;
    let vars: HashMap<String, Var> =
        weights.iter().map(|(k, t)| Ok((k.clone(), Var::from_tensor(t)?))).collect::<Result<_>>()?;
    let vb_tensors = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    let x = Var::from_tensor(fx.tensor("input.x")?)?;
    let output = forward(VarBuilder::from_tensors(vb_tensors, DType::F32, &Device::Cpu), x.as_tensor())?;
    let mut failures = Vec::new();
    let (out_err, _) = max_err(&output, fx.tensor("output")?).context("output")?;
    if out_err > OUTPUT_TOL {
        failures.push(format!("output off by {out_err:.3e} (tolerance {OUTPUT_TOL:.0e})"));
    }
    let grads = (&output * fx.tensor("probe")?)?.sum_all()?.backward()?;
    let mut worst = (0.0, String::new());
    let mut targets: Vec<(String, &Tensor)> = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor())).collect();
    targets.push(("input.x".to_string(), x.as_tensor()));
    targets.sort_by(|a, b| a.0.cmp(&b.0));
    let mut model_scale: f64 = 0.0;
    for (name, _) in &targets {
        let (_, scale) = max_err(fx.tensor(&format!("grad.{name}"))?, fx.tensor(&format!("grad.{name}"))?)?;
        model_scale = model_scale.max(scale);
    }
    for (name, var) in targets {
        let reference = fx.tensor(&format!("grad.{name}"))?;
        let Some(ours) = grads.get(var) else {
            failures.push(format!("no gradient for `{name}`"));
            continue;
        };
        let (err, scale) = max_err(ours, reference).with_context(|| format!("gradient of `{name}`"))?;
        let scale = scale.max(ZERO_GRAD_FLOOR * model_scale);
        let rel = err / scale.max(f64::MIN_POSITIVE);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
        if err > GRAD_TOL * scale {
            failures.push(format!(
                "gradient of `{name}` off by {err:.3e} = {rel:.3e} of its largest magnitude (tolerance {GRAD_TOL:.0e})"
            ));
        }
    }
    println!("{}: output max err {out_err:.2e}; worst gradient `{}` at {:.2e} of its scale", fx.name, worst.1, worst.0);
    Ok(failures)
}

fn check_uvit(fx: &Fixture) -> Result<Vec<String>> {
    if fx.meta("kind")? != "uvit" {
        bail!("metadata `kind` = {}, expected uvit", fx.meta("kind")?);
    }
    let config = UViTConfig::from_official_json(fx.meta("config")?)?;
    let specs = config.param_specs()?;
    let (t, y) = (fx.tensor("input.timesteps")?, fx.optional("input.y"));
    check_model_case(fx, &specs, |vb, x| UViT::new(&config, vb)?.forward(x, t, y))
}

/// A `unet2d` fixture's config: diffusers' `UNet2DModel` keys plus `scaling`, `kappa` and `skips`.
fn unet_config(fx: &Fixture) -> Result<UNet2DConfig> {
    let mut json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(fx.meta("config")?)?;
    let mode = json.remove("scaling").and_then(|v| v.as_str().map(String::from)).context("config has no `scaling`")?;
    let kappa = json.remove("kappa").and_then(|v| v.as_f64());
    let skips = json.remove("skips").and_then(|v| v.as_u64());
    let scaling = match (mode.as_str(), kappa) {
        ("cs", Some(kappa)) => SkipScaling::Constant { kappa },
        (m, _) => m.parse()?,
    };
    let config = UNet2DConfig::from_json(&serde_json::to_string(&json)?, &fx.name)?.with_scaling(scaling);
    if let Some(n) = skips {
        if n as usize != config.num_skips() {
            bail!("config says {n} long skips, the UNet built from it has {}", config.num_skips());
        }
    }
    Ok(config)
}

fn check_unet(fx: &Fixture) -> Result<Vec<String>> {
    if fx.meta("kind")? != "unet2d" {
        bail!("metadata `kind` = {}, expected unet2d", fx.meta("kind")?);
    }
    let config = unet_config(fx)?;
    let specs = config.param_specs()?;
    let (t, y) = (fx.tensor("input.timesteps")?, fx.optional("input.y"));
    check_model_case(fx, &specs, |vb, x| UNet2D::new(&config, vb)?.forward(x, t, y))
}

#[test]
fn unet_matches_diffusers_with_scaled_skips() -> Result<()> {
    run_all(&parity_dir(), "unet_", check_unet)
}

/// Runs `check` on every fixture with `prefix`; a fixture that cannot be read or run fails too.
fn run_all(dir: &Path, prefix: &str, check: impl Fn(&Fixture) -> Result<Vec<String>>) -> Result<()> {
    let mut failures = Vec::new();
    for path in fixtures(dir, prefix)? {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match Fixture::read(&path).with_context(|| format!("reading {}", path.display())).and_then(|fx| check(&fx)) {
            Ok(problems) => failures.extend(problems.into_iter().map(|p| format!("{name}: {p}"))),
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!("parity failures:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

#[test]
fn uvit_matches_the_official_code() -> Result<()> {
    run_all(&parity_dir(), "uvit_", check_uvit)
}

/// The bar can fail: a perturbed output or gradient, or an unreadable fixture, is reported.
#[test]
fn parity_check_rejects_wrong_and_unreadable_fixtures() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut fx = Fixture::read(&parity_dir().join("uvit_0_cs.safetensors"))?;
    let out = fx.tensor("output")?.clone();
    fx.tensors.insert("output".into(), (out + 3e-4)?);
    let grad = fx.tensor("grad.out_blocks.2.skip_linear.weight")?.clone();
    fx.tensors.insert("grad.out_blocks.2.skip_linear.weight".into(), (&grad * 1.01)?);
    fx.write(&dir.path().join("uvit_perturbed.safetensors"))?;
    std::fs::write(dir.path().join("uvit_broken.safetensors"), b"\x10\0\0\0\0\0\0\0{not json}")?;
    let err = run_all(dir.path(), "uvit_", check_uvit).unwrap_err().to_string();
    for want in [
        "uvit_perturbed.safetensors: output off by",
        "uvit_perturbed.safetensors: gradient of `out_blocks.2.skip_linear.weight` off by",
        "uvit_broken.safetensors: reading",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // An intact copy passes, so the failures above come from the perturbations.
    let clean = tempfile::tempdir()?;
    Fixture::read(&parity_dir().join("uvit_0_cs.safetensors"))?.write(&clean.path().join("uvit_copy.safetensors"))?;
    run_all(clean.path(), "uvit_", check_uvit)?;
    // An empty directory is an error, not a pass.
    assert!(run_all(tempfile::tempdir()?.path(), "uvit_", check_uvit).is_err());
    Ok(())
}

// ---- samplers ------------------------------------------------------------------------------

use scalelong::diffusion::analytic::GaussianData;
use scalelong::diffusion::samplers::{Ddim, DpmSolverFast, DpmSolverPP2M, EulerOde, Sampler};
use scalelong::diffusion::{BetaSchedule, DiscreteSchedule, Schedule, TimeArithmetic, VpSde};

/// Sampler output agreement, absolute.
const SAMPLER_TOL: f64 = 1e-4;
/// alphas_cumprod agreement (float64 on both sides).
const SCHEDULE_TOL: f64 = 1e-12;

/// A sampler named by a fixture key, the schedule its analytic model uses, and the timesteps it
/// visits where the reference stores them.
struct SamplerCase {
    sampler: Box<dyn Sampler>,
    schedule: Schedule,
    timesteps: Option<Vec<usize>>,
}

/// The sampler of a fixture key `<family>_<N>` (N steps); `None` for keys that name no sampler.
/// `arithmetic`: the precision the reference ran its VP samplers' times in (the analytic fixture
/// was made in float64 throughout; the official code by default holds times in float32).
fn sampler_for(key: &str, arithmetic: TimeArithmetic) -> Result<Option<SamplerCase>> {
    let Some((family, steps)) = key.rsplit_once('_') else { return Ok(None) };
    let Ok(steps) = steps.parse::<usize>() else { return Ok(None) };
    let linear = || DiscreteSchedule::new(BetaSchedule::Linear { start: 1e-4, end: 0.02 }, 1000);
    let vp =
        |sampler: Box<dyn Sampler>| SamplerCase { sampler, schedule: Schedule::Vp(VpSde::LINEAR), timesteps: None };
    let discrete = |sampler: Box<dyn Sampler>, t| SamplerCase {
        sampler,
        schedule: Schedule::Discrete(linear()),
        timesteps: Some(t),
    };
    Ok(Some(match family {
        "vp_euler_ode" => vp(Box::new(EulerOde::new(VpSde::LINEAR, steps).with_arithmetic(arithmetic))),
        "vp_dpm_solver_fast" => vp(Box::new(DpmSolverFast::new(VpSde::LINEAR, steps).with_arithmetic(arithmetic))),
        "ddim_linear" => {
            let s = Ddim::new(linear(), steps, 0.0);
            let t = s.timesteps();
            discrete(Box::new(s), t)
        }
        "dpmpp_2m_linear" => {
            let s = DpmSolverPP2M::new(linear(), steps);
            let t = s.timesteps();
            discrete(Box::new(s), t)
        }
        _ => bail!("unknown sampler fixture `{key}`"),
    }))
}

fn check_samplers(fx: &Fixture) -> Result<Vec<String>> {
    if fx.meta("kind")? != "samplers" {
        bail!("metadata `kind` = {}, expected samplers", fx.meta("kind")?);
    }
    let mut failures = Vec::new();
    for (key, kind) in [("ddpm_linear_alphas_cumprod", "linear"), ("ddpm_cosine_alphas_cumprod", "squaredcos_cap_v2")] {
        let Some(reference) = fx.optional(key) else { continue };
        let ours = DiscreteSchedule::new(kind.parse().map_err(anyhow::Error::msg)?, reference.dim(0)?);
        let (err, _) = max_err(&Tensor::new(ours.alphas_cumprod(), &Device::Cpu)?, reference)?;
        println!("{}: {key} max err {err:.2e}", fx.name);
        if err > SCHEDULE_TOL {
            failures.push(format!("{key} off by {err:.3e} (tolerance {SCHEDULE_TOL:.0e})"));
        }
    }
    let (mu, s, x_t) = (fx.tensor("mu")?, fx.tensor("s")?, fx.tensor("x_T")?);
    let mut keys: Vec<&String> = fx.tensors.keys().collect();
    keys.sort();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    for key in keys {
        let Some(SamplerCase { sampler, schedule, timesteps }) = sampler_for(key, TimeArithmetic::Exact)? else {
            continue;
        };
        if let Some(ours) = timesteps {
            let reference = fx.tensor(&format!("{key}.timesteps"))?.to_vec1::<i64>()?;
            if ours.iter().map(|&t| t as i64).collect::<Vec<_>>() != reference {
                failures.push(format!("{key}: timesteps {ours:?}, reference {reference:?}"));
            }
        }
        let model = GaussianData { mu: mu.clone(), s: s.clone(), schedule };
        let out = sampler.sample(&model, x_t, &mut rng)?;
        let (err, _) = max_err(&out, fx.tensor(key)?)?;
        // The same walk in float64 separates the algorithm from float32 rounding.
        let out64 = sampler.sample(&model, &x_t.to_dtype(DType::F64)?, &mut rng)?;
        let (err64, _) = max_err(&out64, fx.tensor(key)?)?;
        println!("{}: {key} max err {err:.2e} (float64 run: {err64:.2e})", fx.name);
        if err > SAMPLER_TOL {
            failures.push(format!("{key} off by {err:.3e} (tolerance {SAMPLER_TOL:.0e})"));
        }
    }
    Ok(failures)
}

#[test]
fn samplers_match_the_reference_solvers() -> Result<()> {
    run_all(&parity_dir(), "samplers", check_samplers)
}

/// Sampler output driven by a real network, relative to the largest magnitude of the reference:
/// an untrained network's samples reach the hundreds (x0 = x_t / alpha at t = 1 is amplified
/// 150-fold), where one float32 ulp is 6e-5 absolute, 1.1e-7 of the scale. About 9 ulps; the
/// exact (float64) time grid misses it on most of these fixtures.
const SAMPLER_NET_TOL: f64 = 1e-6;

/// `sampler_net_*` fixtures (`tests/fixtures/make_official_fixtures.py`): the official samplers,
/// in float32 as the official code runs them, driven by an official U-ViT (`model.*`, `config`
/// as the `uvit_*` fixtures) from `x_T`; one output per sampler key as in `samplers.safetensors`.
fn check_sampler_net(fx: &Fixture) -> Result<Vec<String>> {
    if fx.meta("kind")? != "sampler_net" {
        bail!("metadata `kind` = {}, expected sampler_net", fx.meta("kind")?);
    }
    let config = UViTConfig::from_official_json(fx.meta("config")?)?;
    let weights = fx.group("model");
    checkpoint::check(&fx.name, &config.param_specs()?, &weights)?;
    let model = UViT::new(&config, VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu))?;
    let net = |x: &Tensor, t: &Tensor| model.forward(x, t, None);
    let x_t = fx.tensor("x_T")?;
    let mut keys: Vec<&String> = fx.tensors.keys().collect();
    keys.sort();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let mut failures = Vec::new();
    for key in keys {
        // The official float32 DPM-Solver grid, to the bit.
        if let Some(steps) = key.strip_prefix("vp_dpm_solver_fast_").and_then(|k| k.strip_suffix(".timesteps")) {
            let reference = fx.tensor(key)?.to_vec1::<f32>()?;
            let ours: Vec<f32> =
                DpmSolverFast::new(VpSde::LINEAR, steps.parse()?).plan().1.iter().map(|&t| t as f32).collect();
            let same = ours.iter().zip(&reference).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
            println!("{}: {key} {same} of {} times identical to the bit", fx.name, reference.len());
            if ours.len() != reference.len() || same != reference.len() {
                failures.push(format!("{key}: ours {ours:?}, official {reference:?}"));
            }
            continue;
        }
        let Some(SamplerCase { sampler, .. }) = sampler_for(key, TimeArithmetic::Official)? else { continue };
        let (err, scale) = max_err(&sampler.sample(&net, x_t, &mut rng)?, fx.tensor(key)?)?;
        let rel = err / scale.max(1.0);
        let exact = sampler_for(key, TimeArithmetic::Exact)?.expect("same key").sampler;
        let (exact_err, _) = max_err(&exact.sample(&net, x_t, &mut rng)?, fx.tensor(key)?)?;
        println!(
            "{}: {key} max err {err:.2e} = {rel:.2e} of the output's scale {scale:.1} (exact arithmetic: {:.2e})",
            fx.name,
            exact_err / scale.max(1.0)
        );
        if rel > SAMPLER_NET_TOL {
            failures.push(format!("{key} off by {err:.3e} = {rel:.3e} of its scale (tolerance {SAMPLER_NET_TOL:.0e})"));
        }
    }
    Ok(failures)
}

#[test]
fn samplers_on_a_real_network_match_the_official_ones() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official");
    run_all(&dir, "sampler_net_", check_sampler_net)
}
