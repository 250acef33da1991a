//! Training checkpoints: one safetensors file holding the weights, the EMA weights, the AdamW
//! moments and, in its metadata, the step, RNG and data position and the config. Written to a
//! temporary file, synced and renamed, so a crash or a full disk never leaves a broken checkpoint
//! where a good one was.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Storage, Tensor};
use candle_nn::VarBuilder;
use safetensors::tensor::{Metadata, TensorInfo};
use scalelong_backbones::{Architecture, Backbone};

use crate::TrainConfig;

/// Metadata key naming the file format.
pub const FORMAT_KEY: &str = "format";
pub const FORMAT: &str = "scalelong-train-v1";

/// The tensor groups of a training checkpoint: every parameter's name under each prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The trained weights.
    Model,
    /// Their exponential moving average (what sampling uses).
    Ema,
    /// AdamW's first moments.
    AdamM,
    /// AdamW's second moments.
    AdamV,
}

impl Group {
    pub const ALL: [Self; 4] = [Self::Model, Self::Ema, Self::AdamM, Self::AdamV];

    pub fn prefix(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Ema => "ema",
            Self::AdamM => "adam.m",
            Self::AdamV => "adam.v",
        }
    }

    /// The key of parameter `name` in this group.
    pub fn key(self, name: &str) -> String {
        format!("{}.{name}", self.prefix())
    }
}

/// Writes `tensors` (as f32) and `metadata` as safetensors at `path`, atomically. Each tensor's
/// bytes go from its own storage to the file: no copy of the whole checkpoint is built in memory
/// (only a tensor that is not an f32 CPU tensor is converted, one at a time).
pub fn save(path: &Path, tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<()> {
    let fail =
        |e: &dyn std::fmt::Display| candle_core::Error::Msg(format!("writing checkpoint {}: {e}", path.display()));
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0;
    for (name, t) in tensors {
        let len = t.elem_count() * 4;
        let dtype = safetensors::Dtype::F32;
        infos
            .push((name.clone(), TensorInfo { dtype, shape: t.dims().to_vec(), data_offsets: (offset, offset + len) }));
        offset += len;
        with_f32_values(t, |values| match values.iter().any(|v| !v.is_finite()) {
            true => {
                candle_core::bail!("refusing to write checkpoint {}: `{name}` holds a non-finite value", path.display())
            }
            false => Ok(()),
        })?;
    }
    // The header as safetensors' own `serialize` frames it: JSON padded with spaces to 8 bytes.
    let header = Metadata::new(Some(metadata), infos).map_err(|e| fail(&e))?;
    let mut header = serde_json::to_vec(&header).map_err(|e| fail(&e))?;
    header.resize(header.len().next_multiple_of(8), b' ');
    let written = write_atomic_with(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        tensors.iter().try_for_each(|(_, t)| {
            with_f32_values(t, |values| Ok(write_le(w, values))).map_err(std::io::Error::other)?
        })
    });
    written.map_err(|e| fail(&e))
}

/// Calls `f` with `t`'s values as a contiguous f32 slice, borrowed from the tensor's storage when
/// it is a contiguous f32 CPU tensor, else from a converted copy of this tensor alone.
fn with_f32_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("checkpoint: tensor not on the CPU after moving it there")
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("checkpoint: tensor not contiguous".into()))?;
    f(&cpu.as_slice::<f32>()?[start..end])
}

/// safetensors stores little-endian values.
fn write_le(w: &mut impl Write, values: &[f32]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        w.write_all(bytemuck::cast_slice(values))
    } else {
        values.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))
    }
}

/// Temp file in the same folder, write, fsync, rename, fsync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// [`write_atomic`] with the contents streamed by `write` through a buffered writer.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let written = (|| {
        let f = std::fs::File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, &f);
        write(&mut w)?;
        w.flush()?;
        drop(w);
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// A checkpoint read back: tensors by name and the metadata.
pub struct Loaded {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl Loaded {
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint metadata lacks `{key}`")))
    }

    pub fn meta_parse<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let v = self.meta(key)?;
        v.parse().map_err(|_| candle_core::Error::Msg(format!("checkpoint metadata `{key}` = `{v}` is not a number")))
    }

    /// The training config stored with the checkpoint.
    pub fn config(&self) -> Result<TrainConfig> {
        TrainConfig::from_toml(self.meta("config")?, &format!("stored in {}", self.path.display()))
            .map_err(candle_core::Error::wrap)
    }

    /// `config`'s model with one group's weights (the EMA weights, for sampling), cast to `dtype`.
    pub fn model(&self, config: &TrainConfig, group: Group, dtype: DType, device: &Device) -> Result<Backbone> {
        config.model.build(VarBuilder::from_tensors(self.group(group), dtype, device))
    }

    /// The tensors of one group, by parameter name.
    pub fn group(&self, group: Group) -> HashMap<String, Tensor> {
        let p = format!("{}.", group.prefix());
        self.tensors.iter().filter_map(|(k, t)| k.strip_prefix(&p).map(|n| (n.to_string(), t.clone()))).collect()
    }
}

/// Whether `path` is one of our training checkpoints, from its safetensors header alone (the
/// tensors are not read, so probing a large official file costs nothing).
pub fn is_training_checkpoint(path: &Path) -> bool {
    use std::io::Read;
    let header = || -> Option<serde_json::Value> {
        let mut f = std::fs::File::open(path).ok()?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).ok()?;
        let len = usize::try_from(u64::from_le_bytes(len)).ok().filter(|&n| n <= 100_000_000)?;
        let mut text = vec![0u8; len];
        f.read_exact(&mut text).ok()?;
        serde_json::from_slice(&text).ok()
    };
    header().is_some_and(|h| h["__metadata__"][FORMAT_KEY] == FORMAT)
}

/// Reads one of our training checkpoints.
pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    load_groups(path, &Group::ALL, device)
}

/// Reads only these groups of a checkpoint (sampling needs the EMA weights alone, not the trained
/// weights and both AdamW moments): the file is memory-mapped and only their tensors are read.
pub fn load_groups(path: &Path, groups: &[Group], device: &Device) -> Result<Loaded> {
    let err =
        |e: &dyn std::fmt::Display| candle_core::Error::Msg(format!("reading checkpoint {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => err(&"no such file"),
        _ => err(&e),
    })?;
    // Safety: checkpoints are written to a temporary file and renamed over, never changed in place.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(&e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| err(&format!("not a valid safetensors file ({e})")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if metadata.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT) {
        return Err(err(&format!("not a scalelong training checkpoint (metadata `{FORMAT_KEY}` is not `{FORMAT}`)")));
    }
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| err(&format!("not a valid safetensors file ({e})")))?;
    let prefixes: Vec<String> = groups.iter().map(|g| format!("{}.", g.prefix())).collect();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            let t = candle_core::safetensors::Load::load(&view, device).map_err(|e| err(&e))?;
            tensors.insert(name, t);
        }
    }
    scalelong_backbones::checkpoint::check_finite(&path.display().to_string(), &tensors)?;
    Ok(Loaded { path: path.to_path_buf(), tensors, metadata })
}

/// Checkpoint files `step_NNNNNNNN.safetensors` in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let step = p.file_name()?.to_str()?.strip_prefix("step_")?.strip_suffix(".safetensors")?.parse().ok()?;
            Some((step, p))
        })
        .collect();
    found.sort();
    found
}

pub fn path_for(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step_{step:08}.safetensors"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `save` streams must read back through safetensors itself, whatever the tensor's layout.
    #[test]
    fn saved_tensors_read_back_through_safetensors() -> Result<()> {
        let dev = Device::Cpu;
        let base = Tensor::arange(0f32, 24., &dev)?.reshape((4, 6))?;
        let tensors = vec![
            ("plain".to_string(), base.clone()),
            ("transposed".to_string(), base.t()?),
            ("narrowed".to_string(), base.narrow(0, 1, 2)?.narrow(1, 2, 3)?),
            ("f64".to_string(), base.to_dtype(DType::F64)?.affine(0.5, 0.25)?),
            ("scalar".to_string(), Tensor::new(7f32, &dev)?),
        ];
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ck.safetensors");
        save(&path, &tensors, HashMap::from([("step".to_string(), "3".to_string())]))?;
        let bytes = std::fs::read(&path)?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(candle_core::Error::wrap)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(candle_core::Error::wrap)?;
        assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("step")).map(String::as_str), Some("3"));
        for (name, t) in &tensors {
            let view = st.tensor(name).map_err(candle_core::Error::wrap)?;
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            assert_eq!(view.shape(), t.dims(), "{name}");
            let got: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            let want = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(got, want, "{name}");
        }
        assert!(!tmp_path(&path).exists());
        Ok(())
    }

    #[test]
    fn a_non_finite_value_is_refused_before_anything_is_written() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ck.safetensors");
        let bad = Tensor::new(&[1f32, f32::NAN], &Device::Cpu)?;
        let err = save(&path, &[("w".to_string(), bad)], HashMap::new()).unwrap_err().to_string();
        assert!(err.contains("`w` holds a non-finite value"), "{err}");
        assert!(!path.exists() && !tmp_path(&path).exists());
        Ok(())
    }
}
