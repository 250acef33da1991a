//! `--device` and `--dtype`.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

pub fn device(name: &str) -> Result<Device> {
    Ok(match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0).map_err(|e| unavailable("cuda", e))?,
        "metal" => Device::new_metal(0).map_err(|e| unavailable("metal", e))?,
        _ => bail!("--device {name}: expected cpu, cuda or metal"),
    })
}

fn unavailable(kind: &str, e: candle_core::Error) -> anyhow::Error {
    match e {
        candle_core::Error::NotCompiledWithCudaSupport | candle_core::Error::NotCompiledWithMetalSupport => {
            anyhow::anyhow!("--device {kind}: this binary was built without it; rebuild with `--features {kind}`")
        }
        e => anyhow::anyhow!("--device {kind}: no usable device: {e}"),
    }
}

pub fn dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => bail!("--dtype {name}: expected f32, bf16 or f16"),
    })
}
