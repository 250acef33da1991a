//! `--device` and `--dtype`.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

pub fn device(name: &str) -> Result<Device> {
    Ok(match name {
        "cpu" => Device::Cpu,
        "cuda" => {
            Device::new_cuda(0).map_err(|e| anyhow::anyhow!("--device cuda: {e} (build with `--features cuda`)"))?
        }
        "metal" => {
            Device::new_metal(0).map_err(|e| anyhow::anyhow!("--device metal: {e} (build with `--features metal`)"))?
        }
        _ => bail!("--device {name}: expected cpu, cuda or metal"),
    })
}

pub fn dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => bail!("--dtype {name}: expected f32, bf16 or f16"),
    })
}
