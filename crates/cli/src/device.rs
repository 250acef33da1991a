//! `--device` and `--dtype`, and the value lists of typed flags (`--help` shows them, a typo exits 2).

use anyhow::Result;
use candle_core::{DType, Device};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use scalelong_diffusion::SamplerKind;
use scalelong_train::config::{Autocast, NoiseSchedule};

/// `--device` and `--cpu`, as every command that computes takes them.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct DeviceOpts {
    /// Where to compute; auto: CUDA if this binary was built with `cuda` and a GPU answers, else
    /// Metal likewise, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Compute on the CPU (the same as --device cpu).
    #[arg(long, conflicts_with = "device")]
    cpu: bool,
}

impl DeviceOpts {
    /// The device these options name (auto resolved), and the device itself.
    pub fn open(&self) -> Result<(DeviceArg, Device)> {
        let chosen = if self.cpu { DeviceArg::Cpu } else { self.device };
        if chosen != DeviceArg::Auto {
            return Ok((chosen, chosen.open()?));
        }
        for gpu in [DeviceArg::Cuda, DeviceArg::Metal] {
            let built = match gpu {
                DeviceArg::Cuda => candle_core::utils::cuda_is_available(),
                _ => candle_core::utils::metal_is_available(),
            };
            if built {
                match gpu.open() {
                    Ok(d) => return Ok((gpu, d)),
                    Err(e) => tracing::warn!("--device auto: {e}; using the CPU"),
                }
            }
        }
        Ok((DeviceArg::Cpu, Device::Cpu))
    }

    /// The device only.
    pub fn device(&self) -> Result<Device> {
        Ok(self.open()?.1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// The best device this binary was built for and this machine has.
    Auto,
    Cpu,
    /// Needs a build with `--features cuda`.
    Cuda,
    /// Needs a build with `--features metal`.
    Metal,
}

impl DeviceArg {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Metal => "metal",
        }
    }

    pub fn open(self) -> Result<Device> {
        let unavailable = |e: candle_core::Error| match e {
            candle_core::Error::NotCompiledWithCudaSupport | candle_core::Error::NotCompiledWithMetalSupport => {
                anyhow::anyhow!(
                    "--device {}: this binary was built without it; rebuild with `--features {}`",
                    self.name(),
                    self.name()
                )
            }
            e => anyhow::anyhow!("--device {}: no usable device: {e}", self.name()),
        };
        Ok(match self {
            Self::Auto => DeviceOpts { device: self, cpu: false }.device()?,
            Self::Cpu => Device::Cpu,
            Self::Cuda => Device::new_cuda(0).map_err(unavailable)?,
            Self::Metal => Device::new_metal(0).map_err(unavailable)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    /// GPU only.
    Bf16,
    /// GPU only.
    F16,
}

impl DtypeArg {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    /// Refuses a half-precision dtype on the CPU.
    pub fn check(self, device: &Device) -> Result<()> {
        let dtype = self.dtype();
        if dtype != DType::F32 && device.is_cpu() {
            anyhow::bail!(
                "--dtype {dtype:?} needs a GPU (--device cuda or metal): candle's CPU backend has no {dtype:?} matmul"
            );
        }
        Ok(())
    }

    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
}

/// `--sampler`: every [`SamplerKind`] by name, with its aliases.
pub fn sampler_parser() -> impl TypedValueParser<Value = SamplerKind> {
    let values = SamplerKind::ALL.map(|k| PossibleValue::new(k.name()).aliases(k.aliases().iter().copied()));
    PossibleValuesParser::new(values).map(|s| s.parse::<SamplerKind>().expect("a listed name"))
}

/// `--autocast`: `off` (f32) or `bf16` (the network's GEMMs with bf16 operands, as
/// `torch.autocast`; on AMX tiles where the CPU has them).
pub fn autocast_parser() -> impl TypedValueParser<Value = Autocast> {
    // The config's own names (`train.autocast`), read by its deserializer.
    PossibleValuesParser::new(["off", "bf16"])
        .map(|s| serde_json::from_value(serde_json::Value::String(s)).expect("a name of Autocast"))
}

/// `--schedule`: the VP-SDE schedules by name.
pub fn schedule_parser() -> impl TypedValueParser<Value = NoiseSchedule> {
    PossibleValuesParser::new(["vp-linear", "vp-cosine"]).map(|s| s.parse::<NoiseSchedule>().expect("a listed name"))
}
