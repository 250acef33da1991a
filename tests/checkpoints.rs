//! Loading U-ViT weights from files: both formats, the layouts users bring, and the errors a
//! wrong or damaged file must give.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::{parity_dir, Fixture};
use scalelong::backbones::{Architecture, Network, UViTConfig};

fn case() -> Result<(Fixture, UViTConfig)> {
    let fx = Fixture::read(&parity_dir().join("uvit_0_none.safetensors"))?;
    let cfg = UViTConfig::from_official_json(fx.meta("config")?)?;
    Ok((fx, cfg))
}

fn repo_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Loads `path` and checks the forward pass against the official output.
fn assert_loads_and_matches(path: &Path, fx: &Fixture, cfg: &UViTConfig) -> Result<()> {
    let model = cfg.load(path, DType::F32, &Device::Cpu)?;
    let out = model.forward(fx.tensor("input.x")?, fx.tensor("input.timesteps")?, None)?;
    let err = (out - fx.tensor("output")?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    assert!(err < 1e-4, "{}: output off by {err}", path.display());
    Ok(())
}

fn save(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(tensors, path)?;
    Ok(())
}

fn load_err(cfg: &UViTConfig, path: &Path) -> String {
    match cfg.load(path, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not have", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn safetensors_checkpoint_loads() -> Result<()> {
    let (fx, cfg) = case()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("nnet_ema.safetensors");
    save(&fx.group("model"), &path)?;
    assert_loads_and_matches(&path, &fx, &cfg)?;
    // DataParallel's prefix is stripped.
    let prefixed = fx.group("model").into_iter().map(|(k, t)| (format!("module.{k}"), t)).collect();
    let path = dir.path().join("ddp.safetensors");
    save(&prefixed, &path)?;
    assert_loads_and_matches(&path, &fx, &cfg)
}

#[test]
fn pytorch_pth_checkpoints_load() -> Result<()> {
    let (fx, cfg) = case()?;
    // Written by torch.save (tests/fixtures/make_pth.py): a plain state dict, and one nested as
    // {"model": {"module.<name>": ...}, "step": ...}.
    assert_loads_and_matches(&repo_fixture("uvit_0_none_plain.pth"), &fx, &cfg)?;
    assert_loads_and_matches(&repo_fixture("uvit_0_none_wrapped.pth"), &fx, &cfg)
}

#[test]
fn mismatched_checkpoint_names_every_problem() -> Result<()> {
    let (fx, cfg) = case()?;
    let mut tensors = fx.group("model");
    tensors.remove("out_blocks.2.skip_linear.bias");
    tensors.insert("se.layer1.weight".into(), Tensor::zeros((1, 17), DType::F32, &Device::Cpu)?);
    tensors.insert("pos_embed".into(), Tensor::zeros((1, 16, 32), DType::F32, &Device::Cpu)?);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.safetensors");
    save(&tensors, &path)?;
    let err = load_err(&cfg, &path);
    for want in [
        "bad.safetensors",
        "3 problems",
        "missing `out_blocks.2.skip_linear.bias` (expected shape [32])",
        "`pos_embed` has shape [1, 16, 32], expected [1, 17, 32]",
        "unexpected `se.layer1.weight`",
    ] {
        assert!(err.contains(want), "error lacks {want:?}:\n{err}");
    }
    // The same weights under an LS config: the calibration module is what is missing.
    let ls = cfg.clone().with_scaling(scalelong::lsc_scaling::SkipScaling::Learned);
    let path = dir.path().join("org.safetensors");
    save(&fx.group("model"), &path)?;
    let err = load_err(&ls, &path);
    assert!(err.contains("missing `se.layer1.weight` (expected shape [1, 17])"), "{err}");
    Ok(())
}

#[test]
fn damaged_files_give_clear_errors() -> Result<()> {
    let (fx, cfg) = case()?;
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.safetensors");
    save(&fx.group("model"), &good)?;
    let bytes = std::fs::read(&good)?;

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    let err = load_err(&cfg, &truncated);
    assert!(err.contains("truncated.safetensors") && err.contains("not a valid safetensors file"), "{err}");

    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, b"this is not a checkpoint at all")?;
    let err = load_err(&cfg, &garbage);
    assert!(err.contains("garbage.bin") && err.contains("not a PyTorch checkpoint"), "{err}");
    let garbage = dir.path().join("garbage.weights");
    std::fs::write(&garbage, b"this is not a checkpoint at all")?;
    let err = load_err(&cfg, &garbage);
    assert!(err.contains("garbage.weights") && err.contains("neither a safetensors file"), "{err}");

    let tiny = dir.path().join("empty.pth");
    std::fs::write(&tiny, b"")?;
    let err = load_err(&cfg, &tiny);
    assert!(err.contains("empty.pth") && err.contains("too short"), "{err}");

    let pth = std::fs::read(repo_fixture("uvit_0_none_plain.pth"))?;
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &pth[..pth.len() / 3])?;
    let err = load_err(&cfg, &cut);
    assert!(err.contains("cut.pth"), "{err}");

    let err = load_err(&cfg, &dir.path().join("absent.safetensors"));
    assert!(err.contains("absent.safetensors") && err.contains("no such file"), "{err}");
    Ok(())
}
