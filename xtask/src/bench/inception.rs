//! The FID Inception network's forward pass (batch of 299x299 images), ours against pytorch-fid's
//! `InceptionV3` with the same weights, each timed in its own process.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use scalelong_eval::FidInception;
use serde::{Deserialize, Serialize};

use super::case::{ours_and_reference, peak_mb, reset_peak, spread, timed, Measured};
use super::Row;

/// Multiply-adds of one 299x299 image, as reported for Inception-v3 (5.7 G), times two.
const FLOPS_PER_IMAGE: f64 = 11.4e9;

/// What the parent hands the child (`xtask bench-inception JSON`) and the PyTorch script.
#[derive(Serialize, Deserialize)]
pub struct InceptionCase {
    pub weights: PathBuf,
    pub batch: usize,
    pub warmup: usize,
    pub repeats: usize,
    pub threads: usize,
}

/// Times our forward pass in this process and prints the JSON of a [`Measured`].
pub fn run_case(json: &str) -> Result<()> {
    let case: InceptionCase = serde_json::from_str(json)?;
    reset_peak();
    let net = FidInception::load(&case.weights, &Device::Cpu)?;
    let x = Tensor::rand(-1f32, 1.0, (case.batch, 3, 299, 299), &Device::Cpu)?;
    let mut forward = || -> Result<()> {
        net.forward(&x)?;
        Ok(())
    };
    let sample_ms = timed(&mut forward, case.warmup, case.repeats)?;
    let m = Measured { train_ms: vec![], sample_ms, peak_rss_mb: peak_mb(), torch: String::new() };
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

/// The row of this benchmark: ours in a child process, PyTorch (unless `python` is `none`).
pub fn row(case: &InceptionCase, python: &str) -> Result<(Row, Option<String>)> {
    let json = serde_json::to_string(case)?;
    let label = format!("fid-inception/b{}", case.batch);
    let (ours, reference) =
        ours_and_reference("bench-inception", "bench_inception.py", &json, case.threads, python, &label)?;
    let (ms, lo, hi) = spread(&ours.sample_ms);
    let reference_ms = reference.as_ref().map(|r| super::median(&r.sample_ms));
    let row = Row {
        case: format!("fid-inception/b{}/forward", case.batch),
        model: "fid-inception".into(),
        scaling: "-".into(),
        batch: case.batch,
        step: "forward",
        ours_ms: ms,
        ours_spread_ms: (lo, hi),
        reference_ms,
        ratio: reference_ms.map(|r| ms / r),
        images_per_s: case.batch as f64 / (ms / 1e3),
        gflops: FLOPS_PER_IMAGE * case.batch as f64 / (ms / 1e3) / 1e9,
        ours_peak_mb: ours.peak_rss_mb,
        reference_peak_mb: reference.as_ref().map(|r| r.peak_rss_mb),
        cpu: super::cpu::describe(),
    };
    Ok((row, reference.map(|r| r.torch)))
}
