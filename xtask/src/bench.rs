//! `cargo xtask bench`: training-step and sampling-step speed of each backbone and scaling mode,
//! against the same model in PyTorch timed in the same invocation with the same thread count.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use clap::Args;
use scalelong_backbones::{Architecture, ModelConfig, Network, SkipScaling, UNet2DConfig, UViTConfig};
use scalelong_train::{AdamW, AdamWConfig, SeededVars};
use serde::Serialize;

const DDPM_CIFAR10: &str = r#"{"sample_size": 32, "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2,
 "attention_head_dim": null, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
 "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "downsample_padding": 0,
 "flip_sin_to_cos": false, "freq_shift": 1, "norm_eps": 1e-06, "norm_num_groups": 32}"#;
const SMALL_UNET: &str = r#"{"sample_size": 32, "block_out_channels": [32, 64], "layers_per_block": 1,
 "attention_head_dim": null, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
 "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8}"#;

/// Models by bench name: the U-ViT presets, the DDPM CIFAR-10 UNet, and two small ones for --quick.
pub const MODELS: &[&str] =
    &["cifar10-uvit-s2", "celeba64-uvit-s4", "imagenet64-uvit-m4", "ddpm-cifar10-unet", "small-uvit", "small-unet"];

fn model(name: &str, scaling: SkipScaling) -> Result<ModelConfig> {
    // One shared LS gate needs equal skip widths; the UNet's LS is one gate per skip.
    let unet_scaling = if scaling == SkipScaling::Learned { SkipScaling::LearnedPerSkip } else { scaling };
    let unet = |json: &str| -> Result<ModelConfig> {
        Ok(ModelConfig::UNet2D(UNet2DConfig::from_json(json, name)?.with_scaling(unet_scaling)))
    };
    Ok(match name {
        "ddpm-cifar10-unet" => unet(DDPM_CIFAR10)?,
        "small-unet" => unet(SMALL_UNET)?,
        "small-uvit" => ModelConfig::UViT(UViTConfig {
            embed_dim: 128,
            depth: 6,
            num_heads: 4,
            patch_size: 4,
            ..UViTConfig::preset("cifar10-uvit-s2")?.with_scaling(scaling)
        }),
        preset if MODELS.contains(&preset) => ModelConfig::UViT(UViTConfig::preset(preset)?.with_scaling(scaling)),
        other => bail!("unknown bench model `{other}`: expected one of {}", MODELS.join(", ")),
    })
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A small matrix (small U-ViT and UNet, batch 8) that runs in about a minute.
    #[arg(long)]
    quick: bool,
    /// Models (comma-separated): cifar10-uvit-s2, celeba64-uvit-s4, imagenet64-uvit-m4, ddpm-cifar10-unet, small-uvit, small-unet.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Scaling modes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "none,cs,ls")]
    modes: Vec<SkipScaling>,
    #[arg(long)]
    batch: Option<usize>,
    /// Untimed steps before timing.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed steps (the median and the spread are reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Threads for both sides (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Python with torch for the reference (default: $SCALELONG_BENCH_PYTHON, else python3); `none` skips it.
    #[arg(long)]
    python: Option<String>,
    /// cpu, or cuda / metal when built with those features.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Debug, Serialize)]
struct Row {
    case: String,
    model: String,
    scaling: String,
    batch: usize,
    step: &'static str,
    ours_ms: f64,
    ours_spread_ms: (f64, f64),
    reference_ms: Option<f64>,
    ratio: Option<f64>,
    images_per_s: f64,
    gflops: f64,
    ours_peak_mb: f64,
    reference_peak_mb: Option<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Resets the kernel's peak-RSS mark of this process (Linux); the peak is then read from VmHWM.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kb.unwrap_or(f64::NAN) / 1024.0
}

/// One case, as the parent hands it to a child process (`xtask bench-case JSON`).
#[derive(Serialize, serde::Deserialize)]
struct Case {
    model: String,
    scaling: SkipScaling,
    batch: usize,
    warmup: usize,
    repeats: usize,
    device: String,
}

/// What a case measured; the PyTorch script prints the same fields.
#[derive(Serialize, serde::Deserialize)]
struct Measured {
    train_ms: Vec<f64>,
    sample_ms: Vec<f64>,
    peak_rss_mb: f64,
    #[serde(default)]
    torch: String,
}

fn device(name: &str) -> Result<Device> {
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
    let train_ms = timed(&mut train, case)?;
    let detached = seeded.vars().into_iter().map(|(n, v)| (n, v.as_tensor().detach())).collect();
    let frozen = cfg.build(VarBuilder::from_tensors(detached, DType::F32, device))?;
    let mut sample = || -> Result<()> {
        frozen.forward(&x, &t, None)?;
        device.synchronize()?;
        Ok(())
    };
    let sample_ms = timed(&mut sample, case)?;
    Ok(Measured { train_ms, sample_ms, peak_rss_mb: peak_mb(), torch: String::new() })
}

fn timed(step: &mut dyn FnMut() -> Result<()>, case: &Case) -> Result<Vec<f64>> {
    for _ in 0..case.warmup {
        step()?;
    }
    (0..case.repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            step()?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

/// Runs `command` and reads the JSON line it prints last.
fn measured(mut command: Command, what: &str) -> Result<Measured> {
    let out = command.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed ({}): {}", out.status, err.lines().last().unwrap_or(""));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim().lines().last().unwrap_or("")).with_context(|| format!("reading {what}'s JSON"))
}

fn time_reference(python: &str, cfg: &ModelConfig, case: &Case, threads: usize) -> Result<Measured> {
    let mut config = serde_json::to_value(cfg)?;
    config.as_object_mut().and_then(|o| o.remove("arch")); // passed on its own below
    let (scaling, kappa) = match cfg.scaling() {
        SkipScaling::Constant { kappa } => ("cs".to_string(), kappa),
        s => (s.to_string(), 0.5),
    };
    let json = serde_json::json!({
        "arch": cfg.arch(), "config": config, "scaling": scaling, "kappa": kappa, "batch": case.batch,
        "warmup": case.warmup, "repeats": case.repeats, "threads": threads,
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench_reference.py");
    let mut command = Command::new(python);
    command.arg(&script).arg(json.to_string());
    measured(command, &format!("{python} {}", script.display()))
}

pub fn run(args: BenchArgs) -> Result<()> {
    device(&args.device)?;
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let models: Vec<String> = match (args.models.is_empty(), args.quick) {
        (false, _) => args.models.clone(),
        (true, true) => vec!["small-uvit".into(), "small-unet".into()],
        (true, false) => vec!["cifar10-uvit-s2".into(), "ddpm-cifar10-unet".into()],
    };
    let batch = args.batch.unwrap_or(if args.quick { 8 } else { 32 });
    let python = args
        .python
        .clone()
        .or_else(|| std::env::var("SCALELONG_BENCH_PYTHON").ok())
        .unwrap_or_else(|| "python3".into());
    let dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&dir)?;
    let json = dir.join(format!("{}.json", chrono::Local::now().format("%Y-%m-%d-%H%M%S")));
    let mut rows = Vec::new();
    let mut torch_version = None;
    for name in &models {
        for &mode in &args.modes {
            let cfg = match model(name, mode) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("skipping {name} with {mode}: {e}");
                    continue;
                }
            };
            let label = format!("{name}/{mode}/b{batch}");
            let case = Case {
                model: name.clone(),
                scaling: mode,
                batch,
                warmup: args.warmup,
                repeats: args.repeats.max(1),
                device: args.device.clone(),
            };
            eprintln!("bench {label} (ours)");
            // candle and its GEMM read RAYON_NUM_THREADS.
            let mut child = Command::new(std::env::current_exe()?);
            child.args(["bench-case", &serde_json::to_string(&case)?]).env("RAYON_NUM_THREADS", threads.to_string());
            let ours = measured(child, &format!("bench-case {label}"))?;
            let reference = match python.as_str() {
                "none" => None,
                py => {
                    eprintln!("bench {label} (PyTorch)");
                    time_reference(py, &cfg, &case, threads).map_err(|e| eprintln!("  no reference: {e:#}")).ok()
                }
            };
            if let Some(r) = &reference {
                torch_version = Some(r.torch.clone());
            }
            let flops = cfg.forward_flops() * batch as f64;
            for (step, mine, theirs, work) in [
                ("train", &ours.train_ms, reference.as_ref().map(|r| &r.train_ms), 3.0 * flops),
                ("sample", &ours.sample_ms, reference.as_ref().map(|r| &r.sample_ms), flops),
            ] {
                let ms = median(mine);
                let lo = mine.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = mine.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let reference_ms = theirs.map(|t| median(t));
                rows.push(Row {
                    case: format!("{label}/{step}"),
                    model: name.clone(),
                    scaling: mode.to_string(),
                    batch,
                    step,
                    ours_ms: ms,
                    ours_spread_ms: (lo, hi),
                    reference_ms,
                    ratio: reference_ms.map(|r| ms / r),
                    images_per_s: batch as f64 / (ms / 1e3),
                    gflops: work / (ms / 1e3) / 1e9,
                    ours_peak_mb: ours.peak_rss_mb,
                    reference_peak_mb: reference.as_ref().map(|r| r.peak_rss_mb),
                });
            }
            // Written after every case: a long matrix that stops halfway keeps what it measured.
            let md = table(&rows, threads, &args.device, torch_version.as_deref());
            std::fs::write(&json, serde_json::to_string_pretty(&rows)?)?;
            std::fs::write(json.with_extension("md"), &md)?;
        }
    }
    println!("{}", table(&rows, threads, &args.device, torch_version.as_deref()));
    eprintln!("wrote {} and .md", json.display());
    Ok(())
}

fn table(rows: &[Row], threads: usize, device: &str, torch: Option<&str>) -> String {
    let mut s = format!(
        "Device {device}, {threads} threads; reference PyTorch {}. Times are medians (min..max) of the timed steps.\n\n| case | ours ms | PyTorch ms | ours / PyTorch | img/s | GFLOP/s | peak MB (ours / PyTorch) |\n|---|---|---|---|---|---|---|\n",
        torch.unwrap_or("not run")
    );
    for r in rows {
        s += &format!(
            "| {} | {:.0} ({:.0}..{:.0}) | {} | {} | {:.1} | {:.1} | {:.0} / {} |\n",
            r.case,
            r.ours_ms,
            r.ours_spread_ms.0,
            r.ours_spread_ms.1,
            r.reference_ms.map_or("-".into(), |v| format!("{v:.0}")),
            r.ratio.map_or("-".into(), |v| format!("{v:.2}")),
            r.images_per_s,
            r.gflops,
            r.ours_peak_mb,
            r.reference_peak_mb.map_or("-".into(), |v| format!("{v:.0}")),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bench_model_builds_its_config_and_medians_are_medians() {
        for name in MODELS {
            for mode in [SkipScaling::None, SkipScaling::Learned] {
                let cfg = model(name, mode).unwrap();
                assert!(cfg.forward_flops() > 0.0 && cfg.param_specs().is_ok(), "{name}");
            }
        }
        assert!(model("resnet50", SkipScaling::None).unwrap_err().to_string().contains("ddpm-cifar10-unet"));
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
