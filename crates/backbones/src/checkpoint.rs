//! Reading official checkpoints: safetensors and PyTorch `.pth` pickles, checked against what the
//! model asks for so that a wrong file fails with the names that do not fit.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::params::ParamSpec;

/// Top-level keys under which training scripts nest their state dict.
const WRAPPER_KEYS: &[&str] = &["model", "state_dict", "module"];
/// Prefix left by `nn.DataParallel` / DDP.
const DDP_PREFIX: &str = "module.";

/// Reads every tensor of a `.safetensors` or `.pth` file (told apart by their first bytes: a
/// `.pth` is a zip archive). A state dict nested as `{"model": ...}` is unwrapped and a `module.`
/// prefix on every name is stripped.
pub fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let err =
        |e: &dyn std::fmt::Display| candle_core::Error::Msg(format!("reading checkpoint {}: {e}", path.display()));
    let mut head = [0u8; 4];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => err(&"no such file"),
            _ => err(&e),
        })?;
        let n = f.read(&mut head).map_err(|e| err(&e))?;
        if n < 4 {
            return Err(err(&format!("file is {n} bytes long, too short for a safetensors or .pth checkpoint")));
        }
    }
    let torch_name = path.extension().is_some_and(|e| e == "pth" || e == "pt" || e == "bin" || e == "ckpt");
    let tensors: HashMap<String, Tensor> = if &head == b"PK\x03\x04" {
        read_pth(path)
            .map_err(|e| err(&e))?
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device)?)))
            .collect::<Result<_>>()?
    } else if torch_name {
        return Err(err(&"not a PyTorch checkpoint: torch.save writes a zip archive (starting with `PK`), \
             and this file is not one (legacy non-zip pickles are not supported: re-save with torch >= 1.6)"));
    } else {
        candle_core::safetensors::load(path, device).map_err(|e| match path.extension() {
            Some(ext) if ext == "safetensors" => {
                err(&format!("not a valid safetensors file ({e}); damaged or truncated?"))
            }
            _ => err(&format!("neither a safetensors file ({e}) nor a PyTorch .pth zip archive")),
        })?
    };
    if tensors.is_empty() {
        return Err(err(&"no tensors found"));
    }
    Ok(strip_ddp_prefix(tensors))
}

fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let plain = candle_core::pickle::read_all_with_key(path, None)?;
    if !plain.is_empty() {
        return Ok(plain);
    }
    for key in WRAPPER_KEYS {
        if let Ok(nested) = candle_core::pickle::read_all_with_key(path, Some(key)) {
            if !nested.is_empty() {
                return Ok(nested);
            }
        }
    }
    candle_core::bail!(
        "no state dict found: expected a dict of tensors at the top level or under one of {WRAPPER_KEYS:?}"
    )
}

fn strip_ddp_prefix(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    if tensors.keys().all(|k| k.starts_with(DDP_PREFIX)) {
        tensors.into_iter().map(|(k, t)| (k[DDP_PREFIX.len()..].to_string(), t)).collect()
    } else {
        tensors
    }
}

/// Checks a checkpoint's tensors against the parameters a model asks for: every missing,
/// unexpected or wrongly shaped tensor is named in one error.
pub fn check(source: &str, specs: &[ParamSpec], tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut problems = Vec::new();
    for spec in specs {
        match tensors.get(&spec.name) {
            None => problems.push(format!("missing `{}` (expected shape {:?})", spec.name, spec.shape.dims())),
            Some(t) if t.dims() != spec.shape.dims() => {
                problems.push(format!("`{}` has shape {:?}, expected {:?}", spec.name, t.dims(), spec.shape.dims()))
            }
            Some(_) => {}
        }
    }
    let mut unexpected: Vec<&String> = tensors.keys().filter(|k| !specs.iter().any(|s| &s.name == *k)).collect();
    unexpected.sort();
    problems.extend(unexpected.into_iter().map(|k| format!("unexpected `{k}`")));
    if !problems.is_empty() {
        candle_core::bail!(
            "checkpoint {source} does not fit the model ({} problems):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    check_finite(source, tensors)
}

/// Every floating-point tensor holds only finite values; else an error naming the first that
/// does not (a NaN weight otherwise yields an all-black image and exit 0).
pub fn check_finite(source: &str, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        if !t.dtype().is_float() {
            continue;
        }
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            candle_core::bail!(
                "checkpoint {source}: tensor `{name}` holds a non-finite value ({} at flat index {i}); the weights are damaged",
                values[i]
            );
        }
    }
    Ok(())
}

/// Reads `path`, checks it against `specs` (one error naming every problem) and builds the model
/// from its tensors.
pub fn load_checked<M>(
    path: &Path,
    specs: &[ParamSpec],
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<M>,
) -> Result<M> {
    let tensors = read_tensors(path, device)?;
    check(&path.display().to_string(), specs, &tensors)?;
    build(VarBuilder::from_tensors(tensors, dtype, device))
}
