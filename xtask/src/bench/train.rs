//! End-to-end training throughput: `scalelong train` on a recipe (the whole loop: data, noise,
//! forward, backward, clipping, AdamW, EMA, logging) against the same recipe's loop in PyTorch
//! (`train_reference.py`), both read as images per second per `log.every` window.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use scalelong_backbones::Architecture;
use scalelong_train::config::Autocast;
use scalelong_train::TrainConfig;

use super::Row;

/// One recipe to time.
pub struct TrainCase<'a> {
    pub config: &'a Path,
    /// `section.key=value` overrides for both sides (e.g. `data.spec=mnist` where the recipe's
    /// dataset is not on this machine: the images' values cost nothing).
    pub set: &'a [String],
    pub steps: u64,
    pub threads: usize,
}

pub fn row(case: &TrainCase, python: &str) -> Result<(Row, Option<String>)> {
    let mut cfg = TrainConfig::read(case.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    for kv in case.set {
        let (k, v) = kv.split_once('=').with_context(|| format!("--train-set {kv}: expected section.key=value"))?;
        cfg.set(k, v).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if cfg.train.grad_accum != 1 {
        bail!(
            "{}: the PyTorch loop has no gradient accumulation (train.grad_accum = 1 expected)",
            case.config.display()
        );
    }
    let log_every = cfg.log.every.max(1);
    if case.steps < 3 * log_every {
        bail!("--train-steps {}: at least 3 windows of log.every = {log_every} steps are needed", case.steps);
    }
    let name = case.config.file_stem().map_or("recipe".into(), |s| s.to_string_lossy().into_owned());
    let autocast = if cfg.train.autocast == Autocast::Bf16 { "/autocast-bf16" } else { "" };
    let label = format!("train-loop/{name}/b{}{autocast}", cfg.train.batch_size);

    eprintln!("bench {label} (ours: scalelong train, {} steps)", case.steps);
    super::cargo_build_cli()?;
    let run_dir = PathBuf::from("target/bench/train-run");
    let mut ours = Command::new(Path::new("target/release/scalelong"));
    ours.args(["train", "--overwrite", "--device", "cpu", "--config"])
        .arg(case.config)
        .arg("--run-dir")
        .arg(&run_dir)
        .env("RAYON_NUM_THREADS", case.threads.to_string());
    let max_steps = format!("train.max_steps={}", case.steps);
    // No checkpoint or grid inside the timed windows; the final ones come after the last line.
    let quiet = [
        "checkpoint.every=0",
        "sample.every=0",
        "sample.n=1",
        "sample.steps=1",
        "eval.every=0",
        "diagnostics.every=0",
        &max_steps,
    ];
    for kv in case.set.iter().map(String::as_str).chain(quiet) {
        ours.args(["--set", kv]);
    }
    let ours_peak_mb = run_watching_peak(ours, "scalelong train")?;
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).context("reading the run's metrics.jsonl")?;
    let ours_speed = metrics
        .lines()
        .map(|l| Ok(serde_json::from_str::<serde_json::Value>(l)?["img_per_s"].as_f64().unwrap_or(f64::NAN)))
        .collect::<Result<Vec<f64>>>()?;

    let reference = match python {
        "none" => None,
        py => {
            eprintln!("bench {label} (PyTorch)");
            reference(py, &cfg, case, log_every).map_err(|e| eprintln!("  no reference: {e:#}")).ok()
        }
    };
    // The first window holds the warm-up (allocation, first-touch pages) on both sides.
    let per_step_ms =
        |speeds: &[f64]| -> Vec<f64> { speeds.iter().skip(1).map(|s| cfg.train.batch_size as f64 / s * 1e3).collect() };
    let mine = per_step_ms(&ours_speed);
    if mine.is_empty() {
        bail!("scalelong train wrote fewer than two metrics lines");
    }
    let (ms, lo, hi) = super::case::spread(&mine);
    let theirs = reference.as_ref().map(|r| super::median(&per_step_ms(&r.0)));
    let flops = 3.0 * cfg.model.forward_flops() * cfg.train.batch_size as f64;
    let row = Row {
        case: label,
        model: name,
        scaling: cfg.model.scaling().to_string(),
        batch: cfg.train.batch_size,
        step: "train-loop",
        ours_ms: ms,
        ours_spread_ms: (lo, hi),
        reference_ms: theirs,
        ratio: theirs.map(|t| ms / t),
        images_per_s: cfg.train.batch_size as f64 / (ms / 1e3),
        gflops: flops / (ms / 1e3) / 1e9,
        ours_peak_mb: ours_peak_mb.unwrap_or(f64::NAN),
        reference_peak_mb: reference.as_ref().map(|r| r.1),
        cpu: super::cpu::describe(),
    };
    Ok((row, reference.map(|r| r.2)))
}

/// The PyTorch loop's windows (img/s), its peak memory and torch's version.
fn reference(python: &str, cfg: &TrainConfig, case: &TrainCase, log_every: u64) -> Result<(Vec<f64>, f64, String)> {
    let t = &cfg.train;
    let extra = serde_json::json!({
        "batch": t.batch_size, "steps": case.steps, "log_every": log_every, "lr": t.lr,
        "betas": [t.beta1, t.beta2], "eps": t.eps, "weight_decay": t.weight_decay,
        "warmup_steps": t.warmup_steps, "grad_clip": t.grad_clip, "ema_decay": t.ema_decay,
        "hflip": cfg.data.hflip, "images": 10_000, "threads": case.threads,
        "autocast": t.autocast == Autocast::Bf16,
    });
    let json = super::case::model_case(&cfg.model, extra)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("train_reference.py");
    let out = Command::new(python).arg(&script).arg(json.to_string()).output().context("running train_reference.py")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("train_reference.py failed ({}): {}", out.status, err.lines().last().unwrap_or(""));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim().lines().last().unwrap_or(""))?;
    let speeds = v["img_per_s"].as_array().context("img_per_s")?.iter().filter_map(|s| s.as_f64()).collect();
    Ok((speeds, v["peak_rss_mb"].as_f64().unwrap_or(f64::NAN), v["torch"].as_str().unwrap_or("").to_string()))
}

/// Runs `command` to its end, reading its peak resident memory (Linux's VmHWM) while it runs.
fn run_watching_peak(mut command: Command, what: &str) -> Result<Option<f64>> {
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = None;
    let mut stderr = child.stderr.take();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = std::io::Read::read_to_string(e, &mut s);
        }
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let hwm = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        });
        peak = hwm.map(|kb| kb / 1024.0).or(peak);
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = log.join().unwrap_or_default();
    if !status.success() {
        bail!("{what} failed ({status}): {}", log.lines().last().unwrap_or(""));
    }
    Ok(peak)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_short_runs_are_refused_before_anything_runs() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/mnist-unet-cpu.toml");
        let case = TrainCase { config: &config, set: &[], steps: 20, threads: 1 };
        let err = row(&case, "none").unwrap_err().to_string();
        assert!(err.contains("--train-steps 20") && err.contains("log.every = 10"), "{err}");
        let set = ["train.grad_accum=2".to_string()];
        let case = TrainCase { config: &config, set: &set, steps: 100, threads: 1 };
        let err = row(&case, "none").unwrap_err().to_string();
        assert!(err.contains("grad_accum"), "{err}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_child_peak_memory_is_read_while_it_runs() {
        let mut sleep = Command::new("sleep");
        sleep.arg("0.5");
        let peak = run_watching_peak(sleep, "sleep").unwrap();
        assert!(peak.is_some_and(|mb| mb > 0.0 && mb < 100.0), "{peak:?}");
        let err = run_watching_peak(Command::new("false"), "false").unwrap_err().to_string();
        assert!(err.contains("false failed"), "{err}");
    }
}
