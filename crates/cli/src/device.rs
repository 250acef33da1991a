//! `--device` and `--dtype`, and the value lists of typed flags (`--help` shows them, a typo exits 2).

use anyhow::Result;
use candle_core::{DType, Device};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use scalelong_diffusion::SamplerKind;
use scalelong_train::config::NoiseSchedule;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Cpu,
    /// Needs a build with `--features cuda`.
    Cuda,
    /// Needs a build with `--features metal`.
    Metal,
}

impl DeviceArg {
    pub fn name(self) -> &'static str {
        match self {
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

/// `--schedule`: the VP-SDE schedules by name.
pub fn schedule_parser() -> impl TypedValueParser<Value = NoiseSchedule> {
    PossibleValuesParser::new(["vp-linear", "vp-cosine"]).map(|s| s.parse::<NoiseSchedule>().expect("a listed name"))
}
