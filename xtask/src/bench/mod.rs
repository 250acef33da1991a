//! `cargo xtask bench`: training-step and sampling-step speed of each backbone and scaling mode,
//! against the same model in PyTorch timed in the same invocation with the same thread count.

mod case;
mod cpu;
mod inception;
mod peak;
mod train;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Result};
use clap::Args;
use scalelong_backbones::{Architecture, ModelConfig, SkipScaling, UNet2DConfig, UViTConfig};
use serde::Serialize;

pub use case::run_case;
use case::{device, measured, time_reference, Case};
pub use inception::run_case as run_inception_case;
pub use peak::run_case as run_gemm_case;

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
    pub(super) batch: Option<usize>,
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
    /// Also time the FID Inception network's forward pass (batch 50, CPU) with these weights
    /// (pytorch-fid's pt_inception-2015-12-05 file); the reference needs pytorch-fid installed.
    /// Without --models, only this is timed.
    #[arg(long)]
    inception: Option<PathBuf>,
    /// Also measure this CPU's f32 FMA peak (and its bf16 dot-product peaks, where it has
    /// AVX512-BF16 or AMX) and time a 2048^3 GEMM in f32 and in bf16 (ours and PyTorch's); every
    /// GFLOP/s is then also given as a share of the f32 peak. Without --models, only this is run.
    #[arg(long)]
    peak: bool,
    /// Time PyTorch's side under `torch.autocast("cpu", torch.bfloat16)` (ours stays f32): how
    /// far ours is from PyTorch's fastest CPU training where the CPU has AMX or AVX512-BF16.
    #[arg(long)]
    reference_autocast: bool,
    /// Time ours under `autocast_bf16`: the GEMMs of Linear layers, convolutions and attention with
    /// bf16 operands (on AMX where the CPU has it), weights and AdamW f32.
    #[arg(long)]
    autocast: bool,
    /// Also time whole `scalelong train` runs of these recipes (TOML configs) against the same
    /// loop in PyTorch (`xtask/train_reference.py`). Without --models, only this is run.
    #[arg(long, value_delimiter = ',')]
    train: Vec<PathBuf>,
    /// Steps of each --train run (the first `log.every` window is warm-up and not counted).
    #[arg(long, default_value_t = 100)]
    train_steps: u64,
    /// `section.key=value` for the --train runs, both sides (e.g. `data.spec=mnist`).
    #[arg(long = "train-set")]
    train_set: Vec<String>,
}

/// Builds the `scalelong` binary (release) that `--train` runs.
fn cargo_build_cli() -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "-p", "scalelong-cli"])
        .status()?;
    if !status.success() {
        bail!("cargo build -p scalelong-cli failed ({status})");
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub(super) struct Row {
    pub(super) case: String,
    pub(super) model: String,
    pub(super) scaling: String,
    pub(super) batch: usize,
    pub(super) step: &'static str,
    pub(super) ours_ms: f64,
    pub(super) ours_spread_ms: (f64, f64),
    pub(super) reference_ms: Option<f64>,
    pub(super) ratio: Option<f64>,
    pub(super) images_per_s: f64,
    pub(super) gflops: f64,
    pub(super) ours_peak_mb: f64,
    pub(super) reference_peak_mb: Option<f64>,
    /// The CPU (model, extensions): ratios move with it.
    pub(super) cpu: String,
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    device(&args.device)?;
    eprintln!("CPU: {}", cpu::describe());
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let models: Vec<String> = match (args.models.is_empty(), args.quick) {
        (false, _) => args.models.clone(),
        // `--inception`, `--peak` or `--train` alone times only those; with `--quick`, the small models too.
        (true, false) if args.inception.is_some() || args.peak || !args.train.is_empty() => vec![],
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
            let ours_bf16 = if args.autocast { "/autocast-bf16" } else { "" };
            let vs = if args.reference_autocast { "/vs-autocast-bf16" } else { "" };
            let label = format!("{name}/{mode}/b{batch}{ours_bf16}{vs}");
            let case = Case {
                model: name.clone(),
                scaling: mode,
                batch,
                warmup: args.warmup,
                repeats: args.repeats.max(1),
                device: args.device.clone(),
                autocast: args.autocast,
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
                    time_reference(py, &cfg, &case, threads, args.reference_autocast)
                        .map_err(|e| eprintln!("  no reference: {e:#}"))
                        .ok()
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
                    cpu: cpu::describe(),
                });
            }
            // Written after every case: a long matrix that stops halfway keeps what it measured.
            let md = table(&rows, threads, &args.device, torch_version.as_deref(), None, &[]);
            std::fs::write(&json, serde_json::to_string_pretty(&rows)?)?;
            std::fs::write(json.with_extension("md"), &md)?;
        }
    }
    if let Some(weights) = &args.inception {
        let case = inception::InceptionCase {
            weights: weights.clone(),
            batch: 50,
            warmup: args.warmup,
            repeats: args.repeats.max(1),
            threads,
        };
        let (row, torch) = inception::row(&case, &python)?;
        rows.push(row);
        torch_version = torch_version.or(torch);
        std::fs::write(&json, serde_json::to_string_pretty(&rows)?)?;
    }
    let (mut peak, mut bf16_peaks) = (None, vec![]);
    if args.peak {
        peak = peak::fma_peak(threads);
        match peak {
            Some((gflops, isa)) => eprintln!("f32 peak: {gflops:.1} GFLOP/s ({isa}, {threads} threads)"),
            None => eprintln!("f32 peak: no measuring loop for this CPU"),
        }
        bf16_peaks = peak::bf16_peaks(threads);
        for (gflops, isa) in &bf16_peaks {
            eprintln!("bf16 peak: {gflops:.1} GFLOP/s ({isa}, {threads} threads)");
        }
        for bf16 in [false, true] {
            let case = peak::GemmCase { n: 2048, bf16, warmup: args.warmup, repeats: args.repeats.max(1), threads };
            let (row, torch) = peak::gemm_row(&case, &python)?;
            rows.push(row);
            torch_version = torch_version.or(torch);
            std::fs::write(&json, serde_json::to_string_pretty(&rows)?)?;
        }
    }
    for config in &args.train {
        let case = train::TrainCase { config, set: &args.train_set, steps: args.train_steps, threads };
        let (row, torch) = train::row(&case, &python)?;
        rows.push(row);
        torch_version = torch_version.or(torch);
        std::fs::write(&json, serde_json::to_string_pretty(&rows)?)?;
    }
    let md = table(&rows, threads, &args.device, torch_version.as_deref(), peak, &bf16_peaks);
    std::fs::write(json.with_extension("md"), &md)?;
    println!("{md}");
    eprintln!("wrote {} and .md", json.display());
    Ok(())
}

/// The Markdown table of `rows`; with a measured f32 `peak` (GFLOP/s, instruction set), each
/// GFLOP/s also as a share of it (of the fastest of `bf16_peaks` for bf16 GEMM rows).
fn table(
    rows: &[Row],
    threads: usize,
    device: &str,
    torch: Option<&str>,
    peak: Option<(f64, &str)>,
    bf16_peaks: &[(f64, &str)],
) -> String {
    let mut peak_line = peak.map_or(String::new(), |(p, isa)| {
        format!(" Measured f32 peak of these {threads} threads: {p:.1} GFLOP/s ({isa} chains); GFLOP/s columns give its share.")
    });
    for (p, isa) in bf16_peaks {
        peak_line += &format!(" bf16 peak: {p:.1} GFLOP/s ({isa} chains).");
    }
    let bf16_peak = bf16_peaks.iter().map(|p| p.0).reduce(f64::max);
    let share = |r: &Row| {
        let p = if r.case.starts_with("gemm/bf16") { bf16_peak } else { peak.map(|p| p.0) };
        p.map_or(String::new(), |p| format!(" ({:.0}%)", 100.0 * r.gflops / p))
    };
    let mut s = format!(
        "Device {device} on {}, {threads} threads; reference PyTorch {}. Times are medians (min..max) of the timed steps; GFLOP/s counts each convolution's direct multiply-adds (Winograd does fewer, so a model can pass the peak).{peak_line}\n\n| case | ours ms | PyTorch ms | ours / PyTorch | img/s | GFLOP/s | peak MB (ours / PyTorch) |\n|---|---|---|---|---|---|---|\n",
        cpu::describe(),
        torch.unwrap_or("not run")
    );
    for r in rows {
        s += &format!(
            "| {} | {:.0} ({:.0}..{:.0}) | {} | {} | {:.1} | {:.1}{} | {:.0} / {} |\n",
            r.case,
            r.ours_ms,
            r.ours_spread_ms.0,
            r.ours_spread_ms.1,
            r.reference_ms.map_or("-".into(), |v| format!("{v:.0}")),
            r.ratio.map_or("-".into(), |v| format!("{v:.2}")),
            r.images_per_s,
            r.gflops,
            share(r),
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
