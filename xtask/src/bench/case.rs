//! One benchmark case: ours timed in a fresh process (`xtask bench-case JSON`), the PyTorch
//! reference timed by `bench_reference.py`, both reporting the same fields.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use scalelong_backbones::{Architecture, ModelConfig, Network, SkipScaling};
use scalelong_train::{AdamW, AdamWConfig, SeededVars};
use serde::Serialize;

use super::model;

/// Resets the kernel's peak-RSS mark of this process (Linux); the peak is then read from VmHWM.
pub(super) fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub(super) fn peak_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kb.unwrap_or(f64::NAN) / 1024.0
}

/// One case, as the parent hands it to a child process (`xtask bench-case JSON`).
#[derive(Serialize, serde::Deserialize)]
pub(super) struct Case {
    pub(super) model: String,
    pub(super) scaling: SkipScaling,
    pub(super) batch: usize,
    pub(super) warmup: usize,
    pub(super) repeats: usize,
    pub(super) device: String,
    /// Ours under `autocast_bf16` (the GEMMs of Linear layers, convolutions and attention in bf16).
    #[serde(default)]
    pub(super) autocast: bool,
}

/// What a case measured; the PyTorch script prints the same fields.
#[derive(Serialize, serde::Deserialize)]
pub(super) struct Measured {
    pub(super) train_ms: Vec<f64>,
    pub(super) sample_ms: Vec<f64>,
    pub(super) peak_rss_mb: f64,
    #[serde(default)]
    pub(super) torch: String,
}

pub(super) fn device(name: &str) -> Result<Device> {
    Ok(match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        "metal" => Device::new_metal(0)?,
        d => bail!("--device {d}: expected cpu, cuda or metal"),
    })
}

/// Runs one case in this process and prints its JSON. Every case gets a fresh process, so its
/// peak memory is its own and what it kept (the allocator never returns memory) cannot crowd
/// the next case or the PyTorch process.
pub fn run_case(json: &str) -> Result<()> {
    let case: Case = serde_json::from_str(json)?;
    let cfg = model(&case.model, case.scaling)?;
    let measured = time_ours(&cfg, &case, &device(&case.device)?)?;
    println!("{}", serde_json::to_string(&measured)?);
    Ok(())
}

fn time_ours(cfg: &ModelConfig, case: &Case, device: &Device) -> Result<Measured> {
    reset_peak();
    let seeded = SeededVars::new(0);
    let model = cfg.build(seeded.var_builder(device))?;
    let vars: Vec<Var> = seeded.vars().into_iter().map(|(_, v)| v).collect();
    let adam = AdamWConfig { beta1: 0.99, beta2: 0.999, eps: 1e-8, weight_decay: 0.03 };
    let mut opt = AdamW::new(vars, adam)?;
    let size = cfg.train_size();
    let shape = (case.batch, cfg.in_channels(), size, size);
    let x = Tensor::randn(0f32, 1.0, shape, device)?;
    let eps = Tensor::randn(0f32, 1.0, shape, device)?;
    let t = (Tensor::rand(0f32, 1.0, case.batch, device)? * 999.0)?;
    let mut train = || -> Result<()> {
        let loss = (model.forward(&x, &t, None)? - &eps)?.sqr()?.mean_all()?;
        let store = loss.backward()?;
        let grads = opt
            .params()
            .iter()
            .map(|v| store.get(v.as_tensor()).cloned().map_or_else(|| v.zeros_like(), Ok))
            .collect::<candle_core::Result<Vec<_>>>()?;
        opt.step(&grads, 1e-4)?;
        device.synchronize()?;
        Ok(())
    };
    let autocast = |step: &mut dyn FnMut() -> Result<()>| match case.autocast {
        true => scalelong_backbones::ops::autocast_bf16(step),
        false => step(),
    };
    let mut train = || autocast(&mut train);
    let train_ms = timed(&mut train, case.warmup, case.repeats)?;
    let detached = seeded.vars().into_iter().map(|(n, v)| (n, v.as_tensor().detach())).collect();
    let frozen = cfg.build(VarBuilder::from_tensors(detached, DType::F32, device))?;
    let mut sample = || -> Result<()> {
        frozen.forward(&x, &t, None)?;
        device.synchronize()?;
        Ok(())
    };
    let mut sample = || autocast(&mut sample);
    let sample_ms = timed(&mut sample, case.warmup, case.repeats)?;
    Ok(Measured { train_ms, sample_ms, peak_rss_mb: peak_mb(), torch: String::new() })
}

pub(super) fn timed(step: &mut dyn FnMut() -> Result<()>, warmup: usize, repeats: usize) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        step()?;
    }
    (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            step()?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

/// Runs `command` and reads the JSON line it prints last.
pub(super) fn measured(mut command: Command, what: &str) -> Result<Measured> {
    let out = command.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed ({}): {}", out.status, err.lines().last().unwrap_or(""));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim().lines().last().unwrap_or("")).with_context(|| format!("reading {what}'s JSON"))
}

/// One timing's two sides: ours from `xtask SUBCOMMAND JSON` in a child process with `threads`
/// threads, then `python SCRIPT JSON` (none when `python` is `none` or the script fails, which is
/// said on stderr). `label` names the case in the progress lines.
pub(super) fn ours_and_reference(
    subcommand: &str,
    script: &str,
    json: &str,
    threads: usize,
    python: &str,
    label: &str,
) -> Result<(Measured, Option<Measured>)> {
    eprintln!("bench {label} (ours)");
    let mut child = Command::new(std::env::current_exe()?);
    child.args([subcommand, json]).env("RAYON_NUM_THREADS", threads.to_string());
    let ours = measured(child, subcommand)?;
    let reference = match python {
        "none" => None,
        py => {
            eprintln!("bench {label} (PyTorch)");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
            let mut command = Command::new(py);
            command.arg(&script).arg(json);
            measured(command, &format!("{py} {}", script.display()))
                .map_err(|e| eprintln!("  no reference: {e:#}"))
                .ok()
        }
    };
    Ok((ours, reference))
}

/// Median, min and max of some timings.
pub(super) fn spread(ms: &[f64]) -> (f64, f64, f64) {
    let lo = ms.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (super::median(ms), lo, hi)
}

/// The model as `bench_reference.py`'s `build` reads it: `arch`, `config` (the model's own keys),
/// `scaling` and `kappa`, plus the `extra` fields of the case.
pub(super) fn model_case(cfg: &ModelConfig, extra: serde_json::Value) -> Result<serde_json::Value> {
    let mut config = serde_json::to_value(cfg)?;
    config.as_object_mut().and_then(|o| o.remove("arch")); // passed on its own below
    let (scaling, kappa) = match cfg.scaling() {
        SkipScaling::Constant { kappa } => ("cs".to_string(), kappa),
        s => (s.to_string(), 0.5),
    };
    let mut json = serde_json::json!({"arch": cfg.arch(), "config": config, "scaling": scaling, "kappa": kappa});
    if let (Some(o), serde_json::Value::Object(extra)) = (json.as_object_mut(), extra) {
        o.extend(extra);
    }
    Ok(json)
}

/// With `autocast`, PyTorch runs under `torch.autocast("cpu", torch.bfloat16)` (its mixed
/// precision: bf16 matmuls and convolutions, f32 weights), the fastest it trains on a CPU with
/// AMX or AVX512-BF16.
pub(super) fn time_reference(
    python: &str,
    cfg: &ModelConfig,
    case: &Case,
    threads: usize,
    autocast: bool,
) -> Result<Measured> {
    let extra = serde_json::json!({"batch": case.batch, "warmup": case.warmup, "repeats": case.repeats,
        "threads": threads, "autocast": autocast});
    let json = model_case(cfg, extra)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench_reference.py");
    let mut command = Command::new(python);
    command.arg(&script).arg(json.to_string());
    measured(command, &format!("{python} {}", script.display()))
}
