//! Training-loop parity with the official code: `tests/fixtures/official/train_loop_*.safetensors`
//! (written by `tests/fixtures/make_official_fixtures.py` with the official `sde.LSimple`, torch
//! AdamW, `utils.customized_lr_scheduler` and `utils.ema`) hold the initial weights, every batch,
//! time and noise of 20 steps, the per-step losses and the final weights and EMA. Our trainer,
//! started from the same weights (`train.init_from`) and fed the same batches through its test
//! hook, must give the same losses and weights. Any fixture in that format is checked.
//!
//! `cargo test --release --test train_parity -- --nocapture` prints the errors.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use common::{fixtures, Fixture};
use scalelong::backbones::{ModelConfig, UViTConfig};
use scalelong::train::{FedBatch, TrainConfig, Trainer};

/// Per-step loss, relative.
const LOSS_TOL: f64 = 1e-5;
/// Final weights and EMA: largest difference over the tensor's largest magnitude.
const WEIGHT_TOL: f64 = 1e-5;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official")
}

/// Our config for a fixture's official recipe.
fn config(fx: &Fixture, init_from: &Path) -> Result<TrainConfig> {
    let c: serde_json::Value = serde_json::from_str(fx.meta("config")?)?;
    let mut nnet = c["nnet"].as_object().context("config.nnet")?.clone();
    let flag = match c["scaling"].as_str().context("config.scaling")? {
        "none" => 0,
        "inv_sqrt2" => 1,
        "cs" => 2,
        "ls" => 3,
        "ls_per_skip" => 4,
        other => bail!("config.scaling = {other}"),
    };
    nnet.insert("scalelong".into(), flag.into());
    nnet.insert("kappa".into(), c["kappa"].clone());
    let model = UViTConfig::from_official_json(&serde_json::to_string(&nnet)?)?;
    let o = &c["optimizer"];
    let num = |v: &serde_json::Value, what: &str| v.as_f64().with_context(|| format!("config.{what}"));
    let mut cfg = TrainConfig::from_toml(
        &format!(
            "[model]\nimg_size = 8\npatch_size = 2\nin_chans = 1\nembed_dim = 8\ndepth = 2\nnum_heads = 1\n\
             [data]\nspec = \"mnist\"\nhflip = false\n\
             [diagnostics]\nevery = 0\n\
             [train]\nbatch_size = {}\nmax_steps = {}\nlr = {:e}\nbeta1 = {:e}\nbeta2 = {:e}\neps = {:e}\n\
             weight_decay = {:e}\nwarmup_steps = {}\nema_decay = {:e}\ngrad_clip = {:e}\ninit_from = {:?}\n",
            c["batch_size"].as_u64().context("config.batch_size")?,
            c["steps"].as_u64().context("config.steps")?,
            num(&o["lr"], "optimizer.lr")?,
            num(&o["betas"][0], "optimizer.betas")?,
            num(&o["betas"][1], "optimizer.betas")?,
            num(&o["eps"], "optimizer.eps")?,
            num(&o["weight_decay"], "optimizer.weight_decay")?,
            c["warmup_steps"].as_u64().context("config.warmup_steps")?,
            num(&c["ema_rate"], "ema_rate")?,
            num(&c["grad_clip"], "grad_clip")?,
            init_from.display().to_string(),
        ),
        &fx.name,
    )
    .map_err(anyhow::Error::msg)?;
    cfg.model = ModelConfig::UViT(model);
    Ok(cfg)
}

/// Largest |a - b| over largest |b|.
fn rel_err(ours: &Tensor, reference: &Tensor) -> Result<f64> {
    let (a, b) = (ours.to_dtype(DType::F64)?, reference.to_dtype(DType::F64)?);
    let err = (&a - &b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    Ok(err / scale.max(f64::MIN_POSITIVE))
}

fn check(fx: &Fixture) -> Result<Vec<String>> {
    if fx.meta("kind")? != "train_loop" {
        bail!("metadata `kind` = {}, expected train_loop", fx.meta("kind")?);
    }
    let dir = tempfile::tempdir()?;
    let init = dir.path().join("init.safetensors");
    candle_core::safetensors::save(&fx.group("init"), &init)?;
    let cfg = config(fx, &init)?;
    let steps = cfg.train.max_steps as usize;
    let mut trainer = Trainer::new(cfg, &dir.path().join("run"), &Device::Cpu, DType::F32, false)?;
    let (x0, t, noise) = (fx.tensor("x0")?, fx.tensor("t")?, fx.tensor("noise")?);
    trainer.feed((0..steps).map(|s| -> FedBatch {
        FedBatch {
            x0: x0.get(s).unwrap(),
            u: t.get(s).unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap(),
            noise: noise.get(s).unwrap(),
        }
    }));
    let want = fx.tensor("loss")?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let mut failures = Vec::new();
    let mut worst_loss: f64 = 0.0;
    for (s, want) in want.iter().enumerate() {
        let r = trainer.train_step()?;
        let rel = (r.loss - want).abs() / want.abs();
        worst_loss = worst_loss.max(rel);
        if rel > LOSS_TOL {
            failures.push(format!("step {}: loss {:.7}, official {want:.7} ({rel:.2e} relative)", s + 1, r.loss));
        }
    }
    let mut worst: (f64, String) = (0.0, String::new());
    for (group, ours) in [("final", trainer.weights()), ("final_ema", trainer.ema_weights())] {
        let reference = fx.group(group);
        let ours: HashMap<String, Tensor> = ours.into_iter().collect();
        if ours.len() != reference.len() {
            failures.push(format!("{group}: {} tensors, the fixture has {}", ours.len(), reference.len()));
        }
        for (name, want) in &reference {
            let Some(got) = ours.get(name) else {
                failures.push(format!("{group}.{name}: not in our model"));
                continue;
            };
            let rel = rel_err(got, want)?;
            if rel > worst.0 {
                worst = (rel, format!("{group}.{name}"));
            }
            if rel > WEIGHT_TOL {
                failures.push(format!("{group}.{name} off by {rel:.2e} of its scale (tolerance {WEIGHT_TOL:.0e})"));
            }
        }
    }
    println!(
        "{}: worst loss {worst_loss:.2e} relative; worst weight `{}` at {:.2e} of its scale",
        fx.name, worst.1, worst.0
    );
    Ok(failures)
}

#[test]
fn training_loop_matches_the_official_one() -> Result<()> {
    let mut failures = Vec::new();
    for path in fixtures(&fixture_dir(), "train_loop_")? {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match Fixture::read(&path).and_then(|fx| check(&fx)) {
            Ok(problems) => failures.extend(problems.into_iter().map(|p| format!("{name}: {p}"))),
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    assert!(failures.is_empty(), "training-loop parity failures:\n  {}", failures.join("\n  "));
    Ok(())
}

/// The check can fail: the same fixture under a recipe that differs in one setting (weight decay
/// off) is caught in the losses or the weights.
#[test]
fn training_loop_check_catches_a_different_recipe() -> Result<()> {
    let path = fixtures(&fixture_dir(), "train_loop_")?.remove(0);
    let mut fx = Fixture::read(&path)?;
    let mut c: serde_json::Value = serde_json::from_str(fx.meta("config")?)?;
    c["optimizer"]["weight_decay"] = 0.0.into();
    fx.meta.insert("config".into(), c.to_string());
    let failures = check(&fx)?;
    assert!(failures.iter().any(|f| f.contains("off by")), "no failure reported: {failures:?}");
    Ok(())
}
