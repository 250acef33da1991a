//! Helpers shared by the workspace tests: the parity fixtures of `../shared/parity/`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

/// `$SCALELONG_PARITY_DIR`, or `../shared/parity` beside the repository.
pub fn parity_dir() -> PathBuf {
    match std::env::var_os("SCALELONG_PARITY_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parity"),
    }
}

/// Every `<prefix>*.safetensors` in `dir`, sorted; none at all is an error.
pub fn fixtures(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading parity directory {}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with(prefix) && name.ends_with(".safetensors") {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        bail!("no {prefix}*.safetensors fixture in {}", dir.display());
    }
    Ok(paths)
}

pub struct Fixture {
    pub name: String,
    pub meta: HashMap<String, String>,
    pub tensors: HashMap<String, Tensor>,
}

impl Fixture {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).context("bad safetensors header")?;
        let meta = header.metadata().clone().context("no metadata")?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        Ok(Self { name: path.file_name().unwrap().to_string_lossy().into_owned(), meta, tensors })
    }

    /// Writes the fixture back in the same format (tensors and metadata).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut data = Vec::new();
        for (name, t) in &self.tensors {
            let flat = t.flatten_all()?;
            let (bytes, dtype): (Vec<u8>, _) = match t.dtype() {
                DType::F32 => {
                    (flat.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(), safetensors::Dtype::F32)
                }
                DType::I64 => {
                    (flat.to_vec1::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(), safetensors::Dtype::I64)
                }
                other => bail!("cannot write {other:?} tensor `{name}`"),
            };
            data.push((name.clone(), dtype, t.dims().to_vec(), bytes));
        }
        let views = data
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                Ok((name.clone(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)?))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize_to_file(views, Some(self.meta.clone()), path)?;
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Result<&str> {
        self.meta.get(key).map(String::as_str).with_context(|| format!("metadata `{key}` missing"))
    }

    pub fn tensor(&self, key: &str) -> Result<&Tensor> {
        self.tensors.get(key).with_context(|| format!("tensor `{key}` missing"))
    }

    pub fn optional(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    /// Tensors under `prefix.`, with the prefix removed.
    pub fn group(&self, prefix: &str) -> HashMap<String, Tensor> {
        let p = format!("{prefix}.");
        self.tensors.iter().filter_map(|(k, t)| k.strip_prefix(&p).map(|n| (n.to_string(), t.clone()))).collect()
    }
}
