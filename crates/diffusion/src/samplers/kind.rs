//! Samplers by name, as configs and command lines give them: one table, checked when read, and
//! one `build` that fits a sampler to a schedule.

use std::str::FromStr;

use candle_core::Result;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Ddim, Ddpm, DpmSolverFast, DpmSolverPP2M, EulerMaruyama, EulerOde, Sampler};
use crate::{Schedule, UnknownName};

/// Every sampler, by the name a config (`sample.sampler`) or `--sampler` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// [`DpmSolverFast`] (VP-SDE models).
    DpmSolver,
    /// [`EulerOde`] (VP-SDE models).
    EulerOde,
    /// [`EulerMaruyama`] (VP-SDE models).
    EulerSde,
    /// [`Ddim`] with eta 0 (discrete-schedule models).
    Ddim,
    /// [`DpmSolverPP2M`] (discrete-schedule models).
    DpmSolverPP,
    /// [`Ddpm`] (discrete-schedule models).
    Ddpm,
}

impl SamplerKind {
    pub const ALL: [Self; 6] =
        [Self::DpmSolver, Self::EulerOde, Self::EulerSde, Self::Ddim, Self::DpmSolverPP, Self::Ddpm];

    /// The name, and other names accepted for it.
    fn names(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::DpmSolver => ("dpm-solver", &[]),
            Self::EulerOde => ("euler-ode", &[]),
            Self::EulerSde => ("euler-sde", &["euler-maruyama"]),
            Self::Ddim => ("ddim", &[]),
            Self::DpmSolverPP => ("dpm-solver++", &["dpmpp-2m"]),
            Self::Ddpm => ("ddpm", &[]),
        }
    }

    pub fn name(self) -> &'static str {
        self.names().0
    }

    /// Other names accepted for it.
    pub fn aliases(self) -> &'static [&'static str] {
        self.names().1
    }

    /// Whether this sampler walks `schedule`'s kind of time (continuous VP or discrete steps).
    pub fn fits(self, schedule: &Schedule) -> bool {
        let vp = matches!(self, Self::DpmSolver | Self::EulerOde | Self::EulerSde);
        vp == matches!(schedule, Schedule::Vp(_))
    }

    /// The default for a schedule: the official DPM-Solver for VP models, DDIM for discrete ones.
    pub fn default_for(schedule: &Schedule) -> Self {
        match schedule {
            Schedule::Vp(_) => Self::DpmSolver,
            Schedule::Discrete(_) => Self::Ddim,
        }
    }

    /// The names of the samplers that fit `schedule`, for error messages.
    pub fn names_for(schedule: &Schedule) -> String {
        Self::ALL.iter().filter(|k| k.fits(schedule)).map(|k| k.name()).collect::<Vec<_>>().join(", ")
    }

    /// This sampler with `steps` steps (network evaluations for DPM-Solver) on `schedule`.
    pub fn build(self, steps: usize, schedule: &Schedule) -> Result<Box<dyn Sampler>> {
        if steps == 0 {
            candle_core::bail!("{}: steps must be at least 1", self.name());
        }
        Ok(match (self, schedule) {
            (Self::DpmSolver, Schedule::Vp(sde)) => Box::new(DpmSolverFast::new(*sde, steps)),
            (Self::EulerOde, Schedule::Vp(sde)) => Box::new(EulerOde::new(*sde, steps)),
            (Self::EulerSde, Schedule::Vp(sde)) => Box::new(EulerMaruyama::new(*sde, steps)),
            (Self::Ddim, Schedule::Discrete(d)) => Box::new(Ddim::new(d.clone(), steps, 0.0)),
            (Self::DpmSolverPP, Schedule::Discrete(d)) => Box::new(DpmSolverPP2M::new(d.clone(), steps)),
            (Self::Ddpm, Schedule::Discrete(d)) => Box::new(Ddpm::new(d.clone(), steps)),
            _ => candle_core::bail!(
                "sampler {} does not fit a {} model: expected one of {}",
                self.name(),
                match schedule {
                    Schedule::Vp(_) => "VP-SDE",
                    Schedule::Discrete(_) => "discrete-schedule",
                },
                Self::names_for(schedule)
            ),
        })
    }
}

impl FromStr for SamplerKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownName> {
        Self::ALL.into_iter().find(|k| k.name() == s || k.names().1.contains(&s)).ok_or_else(|| {
            let all: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
            UnknownName { kind: "sampler", name: s.to_string(), expected: format!("one of {}", all.join(", ")) }
        })
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for SamplerKind {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for SamplerKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiscreteSchedule, VpSde};

    #[test]
    fn names_parse_and_samplers_fit_their_schedules() {
        let (vp, discrete) = (Schedule::Vp(VpSde::LINEAR), Schedule::Discrete(DiscreteSchedule::ddpm_linear()));
        for k in SamplerKind::ALL {
            assert_eq!(k.name().parse::<SamplerKind>(), Ok(k));
            let (fits, other) = if k.fits(&vp) { (&vp, &discrete) } else { (&discrete, &vp) };
            assert_eq!(k.build(10, fits).unwrap().model_evaluations(), 10, "{k}");
            let err = k.build(10, other).err().unwrap().to_string();
            assert!(err.contains("does not fit") && err.contains(&SamplerKind::names_for(other)), "{err}");
            assert!(k.build(0, fits).err().unwrap().to_string().contains("at least 1"));
        }
        assert_eq!("euler-maruyama".parse(), Ok(SamplerKind::EulerSde));
        assert_eq!("dpmpp-2m".parse(), Ok(SamplerKind::DpmSolverPP));
        assert!("heun"
            .parse::<SamplerKind>()
            .unwrap_err()
            .to_string()
            .contains("dpm-solver, euler-ode, euler-sde, ddim"));
        assert_eq!(SamplerKind::names_for(&vp), "dpm-solver, euler-ode, euler-sde");
        assert_eq!(
            (SamplerKind::default_for(&vp), SamplerKind::default_for(&discrete)),
            (SamplerKind::DpmSolver, SamplerKind::Ddim)
        );
    }
}
