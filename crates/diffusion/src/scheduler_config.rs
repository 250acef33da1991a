//! diffusers' `scheduler_config.json`: the training schedule, and the keys that change how
//! diffusers' DDIM, DDPM and DPM-Solver++ schedulers sample. Each sampler reads the keys it knows
//! with its own class's default when the file lacks one, as `XScheduler.from_config` does (one file,
//! e.g. a `DDPMScheduler` config, serves every sampler). A key whose value we do not implement is
//! an error naming the file, the key and the value we support, never a silent other sampler.

use candle_core::Result;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::samplers::{Ddim, Ddpm, DpmSolverPP2M, Sampler};
use crate::{BetaSchedule, DiscreteSchedule, SamplerKind};

/// A parsed `scheduler_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Where it was read from, for messages.
    origin: String,
    keys: Map<String, Value>,
}

impl SchedulerConfig {
    /// Parses `text`; `origin` (a path) names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let keys = match serde_json::from_str(text) {
            Ok(Value::Object(keys)) => keys,
            Ok(_) => candle_core::bail!("{origin}: expected a JSON object"),
            Err(e) => candle_core::bail!("{origin}: not JSON: {e}"),
        };
        let config = Self { origin: origin.to_string(), keys };
        config.schedule()?;
        Ok(config)
    }

    /// What diffusers' `DDPMScheduler()` holds when a folder has no scheduler config.
    pub fn ddpm_default() -> Self {
        Self { origin: "the default DDPMScheduler config".into(), keys: Map::new() }
    }

    /// `key`'s value, or `default` when absent or null.
    fn get<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        match self.keys.get(key).filter(|v| !v.is_null()) {
            None => Ok(default),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| candle_core::Error::Msg(format!("{}: `{key}` = {v}: {e}", self.origin))),
        }
    }

    /// Refuses `key` set to anything but `supported` (absent or null is fine: the default).
    fn require<T: DeserializeOwned + PartialEq + serde::Serialize + Clone>(
        &self,
        key: &str,
        supported: T,
    ) -> Result<()> {
        if self.get(key, supported.clone())? != supported {
            let expected = serde_json::to_string(&supported).unwrap_or_default();
            candle_core::bail!("{}: `{key}` = {} is not supported: expected {expected}", self.origin, self.keys[key]);
        }
        Ok(())
    }

    /// The training schedule (epsilon prediction only).
    pub fn schedule(&self) -> Result<DiscreteSchedule> {
        self.require("prediction_type", "epsilon".to_string())?;
        self.require("trained_betas", None::<Vec<f64>>)?;
        self.require("rescale_betas_zero_snr", false)?;
        self.require("thresholding", false)?;
        let n: usize = self.get("num_train_timesteps", DiscreteSchedule::DEFAULT_STEPS)?;
        if n == 0 {
            candle_core::bail!("{}: `num_train_timesteps` = 0: expected at least 1", self.origin);
        }
        let (start, end) = (self.get("beta_start", 1e-4)?, self.get("beta_end", 0.02)?);
        let kind = BetaSchedule::named(&self.get("beta_schedule", "linear".to_string())?, start, end)
            .map_err(|e| candle_core::Error::Msg(format!("{}: `beta_schedule`: {e}", self.origin)))?;
        Ok(DiscreteSchedule::new(kind, n))
    }

    /// `kind` with `steps` steps, configured as diffusers' scheduler of that kind reads this file.
    pub fn sampler(&self, kind: SamplerKind, steps: usize) -> Result<Box<dyn Sampler>> {
        if steps == 0 {
            candle_core::bail!("{}: steps must be at least 1", kind.name());
        }
        let schedule = self.schedule()?;
        let clip = |default_clip: bool| -> Result<Option<f64>> {
            Ok(self.get("clip_sample", default_clip)?.then_some(self.get("clip_sample_range", 1.0)?))
        };
        Ok(match kind {
            SamplerKind::Ddim => {
                self.require("timestep_spacing", "leading".to_string())?;
                Box::new(Ddim {
                    steps_offset: self.get("steps_offset", 0)?,
                    set_alpha_to_one: self.get("set_alpha_to_one", true)?,
                    clip_sample: clip(true)?,
                    ..Ddim::new(schedule, steps, 0.0)
                })
            }
            SamplerKind::Ddpm => {
                self.require("timestep_spacing", "leading".to_string())?;
                self.require("variance_type", "fixed_small".to_string())?;
                Box::new(Ddpm {
                    steps_offset: self.get("steps_offset", 0)?,
                    clip_sample: clip(true)?,
                    ..Ddpm::new(schedule, steps)
                })
            }
            SamplerKind::DpmSolverPP => {
                self.require("timestep_spacing", "linspace".to_string())?;
                self.require("algorithm_type", "dpmsolver++".to_string())?;
                self.require("solver_type", "midpoint".to_string())?;
                self.require("solver_order", 2)?;
                self.require("use_karras_sigmas", false)?;
                self.require("final_sigmas_type", "zero".to_string())?;
                Box::new(DpmSolverPP2M::new(schedule, steps))
            }
            _ => kind.build(steps, &crate::Schedule::Discrete(schedule))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> SchedulerConfig {
        SchedulerConfig::from_json(json, "s.json").unwrap()
    }

    #[test]
    /// What each sampler then does is checked against diffusers in crates/cli/tests/diffusers_schedulers.rs.
    fn both_kinds_of_file_build_every_discrete_sampler() {
        // google/ddpm-cifar10-32's file: a DDPMScheduler config without DDIM's keys.
        let c = config(
            r#"{"_class_name": "DDPMScheduler", "beta_schedule": "linear", "clip_sample": true, "variance_type": "fixed_small", "trained_betas": null}"#,
        );
        let sd = config(
            r#"{"steps_offset": 1, "set_alpha_to_one": false, "clip_sample": false, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#,
        );
        assert_eq!(
            sd.schedule().unwrap(),
            DiscreteSchedule::new(BetaSchedule::ScaledLinear { start: 0.00085, end: 0.012 }, 1000)
        );
        for c in [&c, &sd] {
            for kind in [SamplerKind::Ddim, SamplerKind::Ddpm, SamplerKind::DpmSolverPP] {
                assert_eq!(c.sampler(kind, 10).unwrap().model_evaluations(), 10);
            }
        }
    }

    #[test]
    fn values_we_do_not_implement_are_refused_by_name() {
        let cases = [
            (
                r#"{"timestep_spacing": "trailing"}"#,
                SamplerKind::Ddim,
                "`timestep_spacing` = \"trailing\" is not supported: expected \"leading\"",
            ),
            (r#"{"timestep_spacing": "leading"}"#, SamplerKind::DpmSolverPP, "expected \"linspace\""),
            (r#"{"variance_type": "learned_range"}"#, SamplerKind::Ddpm, "`variance_type`"),
            (r#"{"solver_order": 3}"#, SamplerKind::DpmSolverPP, "`solver_order` = 3"),
            (r#"{"use_karras_sigmas": true}"#, SamplerKind::DpmSolverPP, "`use_karras_sigmas`"),
            (r#"{"steps_offset": "one"}"#, SamplerKind::Ddim, "`steps_offset` = \"one\""),
        ];
        for (json, kind, want) in cases {
            let err = config(json).sampler(kind, 10).err().unwrap().to_string();
            assert!(err.starts_with("s.json: ") && err.contains(want), "{json}: {err}");
        }
        for (json, want) in [
            (r#"{"prediction_type": "v_prediction"}"#, "`prediction_type` = \"v_prediction\""),
            (r#"{"thresholding": true}"#, "`thresholding` = true"),
            (r#"{"trained_betas": [0.1, 0.2]}"#, "`trained_betas`"),
            (r#"{"beta_schedule": "sigmoid"}"#, "sigmoid"),
            (r#"{"num_train_timesteps": 0}"#, "`num_train_timesteps` = 0"),
            ("[1, 2]", "expected a JSON object"),
            ("{", "not JSON"),
        ] {
            let err = SchedulerConfig::from_json(json, "s.json").unwrap_err().to_string();
            assert!(err.starts_with("s.json: ") && err.contains(want), "{json}: {err}");
        }
    }
}
