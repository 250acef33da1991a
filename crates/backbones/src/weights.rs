//! Where pretrained diffusers-style weights come from: a local folder or file, or a Hugging Face Hub
//! repository (`hf://OWNER/REPO[@REVISION][/SUBFOLDER]`) through the Hub cache. Offline (the
//! `offline` flag or `HF_HUB_OFFLINE=1`) never touches the network and names what is missing.

use std::path::{Path, PathBuf};

use candle_core::Result;

/// The weights file diffusers writes.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// The files of one pretrained model.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightFiles {
    /// The model's `config.json`.
    pub config: PathBuf,
    /// Its weights (`.safetensors`, or a PyTorch `.bin`/`.pth` state dict).
    pub weights: PathBuf,
    /// The noise scheduler's `scheduler_config.json`, when the source has one.
    pub scheduler: Option<PathBuf>,
}

/// A parsed `hf://OWNER/REPO[@REVISION][/SUBFOLDER]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSpec {
    pub owner: String,
    pub name: String,
    pub revision: Option<String>,
    pub subfolder: Option<String>,
}

impl HubSpec {
    /// `None` when `spec` does not start with `hf://`.
    pub fn parse(spec: &str) -> Option<Result<Self>> {
        let rest = spec.strip_prefix("hf://")?;
        let mut parts = rest.splitn(3, '/');
        let (owner, repo, sub) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
        let (name, revision) = match repo.split_once('@') {
            Some((n, r)) => (n, Some(r.to_string())),
            None => (repo, None),
        };
        if owner.is_empty() || name.is_empty() || revision.as_deref() == Some("") {
            return Some(Err(candle_core::Error::Msg(format!(
                "`{spec}`: expected hf://OWNER/REPO[@REVISION][/SUBFOLDER], e.g. hf://google/ddpm-cifar10-32"
            ))));
        }
        let subfolder = sub.map(|s| s.trim_matches('/').to_string()).filter(|s| !s.is_empty());
        Some(Ok(Self { owner: owner.into(), name: name.into(), revision, subfolder }))
    }

    /// `file` inside the spec's subfolder.
    pub fn in_subfolder(&self, file: &str) -> String {
        match &self.subfolder {
            Some(s) => format!("{s}/{file}"),
            None => file.to_string(),
        }
    }
}

impl std::fmt::Display for HubSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hf://{}/{}", self.owner, self.name)?;
        if let Some(r) = &self.revision {
            write!(f, "@{r}")?;
        }
        if let Some(s) = &self.subfolder {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// Offline when asked, or when `HF_HUB_OFFLINE` is set to a true value (as huggingface_hub reads it).
pub fn offline_from_env(flag: bool) -> bool {
    flag || std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// Finds the files of `spec`: `hf://...`, a folder holding `config.json` and the weights, or a
/// weights file with `config.json` beside it.
pub fn resolve(spec: &str, offline: bool) -> Result<WeightFiles> {
    match HubSpec::parse(spec) {
        Some(hub) => from_hub(&hub?, offline),
        None => from_local(Path::new(spec)),
    }
}

fn from_local(path: &Path) -> Result<WeightFiles> {
    let (dir, weights) = if path.is_dir() {
        let found = [WEIGHTS_FILE, "diffusion_pytorch_model.bin"].iter().map(|f| path.join(f)).find(|p| p.is_file());
        match found {
            Some(w) => (path.to_path_buf(), w),
            None => candle_core::bail!(
                "{}: no {WEIGHTS_FILE} (or diffusion_pytorch_model.bin) in this folder",
                path.display()
            ),
        }
    } else if path.is_file() {
        (path.parent().unwrap_or(Path::new(".")).to_path_buf(), path.to_path_buf())
    } else {
        candle_core::bail!("weights `{}`: no such file or folder (and not hf://OWNER/REPO)", path.display());
    };
    let config = dir.join("config.json");
    if !config.is_file() {
        candle_core::bail!("{}: no config.json beside the weights, so the architecture is unknown", dir.display());
    }
    let scheduler = [dir.join("scheduler_config.json"), dir.join("../scheduler/scheduler_config.json")]
        .into_iter()
        .find(|p| p.is_file());
    Ok(WeightFiles { config, weights, scheduler })
}

#[cfg(feature = "hub")]
fn from_hub(spec: &HubSpec, offline: bool) -> Result<WeightFiles> {
    use hf_hub::{HFClient, HFClientSync, HFError};
    let hub_err = |e: HFError| candle_core::Error::Msg(format!("{spec}: Hugging Face client: {e}"));
    // hf-hub resolves the cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub); errors name it.
    let client = HFClient::new().map_err(hub_err)?;
    let cache = client.cache_dir().to_path_buf();
    let client = HFClientSync::from_inner(client).map_err(hub_err)?;
    let repo = client.model(spec.owner.clone(), spec.name.clone());
    let get = |file: &str| -> Result<Option<PathBuf>> {
        let request = repo.download_file().filename(file).local_files_only(offline);
        match request.maybe_revision(spec.revision.clone()).send() {
            Ok(p) => Ok(Some(p)),
            Err(HFError::EntryNotFound { .. }) => Ok(None),
            Err(HFError::LocalEntryNotFound { .. }) => Err(candle_core::Error::Msg(format!(
                "{spec}: `{file}` is not in the Hugging Face cache ({}) and the Hub is offline (--offline or HF_HUB_OFFLINE): run once online to fetch it, or `huggingface-cli download {}/{}{}`",
                cache.display(),
                spec.owner,
                spec.name,
                spec.revision.as_ref().map(|r| format!(" --revision {r}")).unwrap_or_default()
            ))),
            Err(e) => Err(candle_core::Error::Msg(format!("{spec}: fetching `{file}`: {e}"))),
        }
    };
    let required = |file: String| -> Result<PathBuf> {
        get(&file)?.ok_or_else(|| candle_core::Error::Msg(format!("{spec}: the repository has no `{file}`")))
    };
    let config = required(spec.in_subfolder("config.json"))?;
    let weights = required(spec.in_subfolder(WEIGHTS_FILE))?;
    // A flat repository (google/ddpm-*) keeps the scheduler beside the model; a pipeline keeps it in
    // scheduler/. A scheduler that is not there (offline, not cached) is optional.
    let mut scheduler = None;
    for file in [spec.in_subfolder("scheduler_config.json"), "scheduler/scheduler_config.json".to_string()] {
        if let Ok(Some(p)) = get(&file) {
            scheduler = Some(p);
            break;
        }
    }
    Ok(WeightFiles { config, weights, scheduler })
}

#[cfg(not(feature = "hub"))]
fn from_hub(spec: &HubSpec, _offline: bool) -> Result<WeightFiles> {
    candle_core::bail!(
        "{spec}: this build has no Hugging Face Hub support (enable the `hub` feature of scalelong-backbones)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_specs() {
        let s = HubSpec::parse("hf://google/ddpm-cifar10-32").unwrap().unwrap();
        assert_eq!(
            (s.owner.as_str(), s.name.as_str(), s.revision, s.subfolder),
            ("google", "ddpm-cifar10-32", None, None)
        );
        let s = HubSpec::parse("hf://o/r@v1.0/unet").unwrap().unwrap();
        assert_eq!((s.revision.as_deref(), s.subfolder.as_deref()), (Some("v1.0"), Some("unet")));
        assert_eq!(s.to_string(), "hf://o/r@v1.0/unet");
        assert_eq!(s.in_subfolder("config.json"), "unet/config.json");
        assert!(HubSpec::parse("runs/x.safetensors").is_none());
        let err = HubSpec::parse("hf://onlyowner").unwrap().unwrap_err().to_string();
        assert!(err.contains("hf://OWNER/REPO"), "{err}");
    }

    #[test]
    fn local_folders_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(dir.path().to_str().unwrap(), true).unwrap_err().to_string();
        assert!(err.contains(WEIGHTS_FILE), "{err}");
        std::fs::write(dir.path().join(WEIGHTS_FILE), b"x").unwrap();
        let err = resolve(dir.path().to_str().unwrap(), true).unwrap_err().to_string();
        assert!(err.contains("no config.json"), "{err}");
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        let files = resolve(dir.path().to_str().unwrap(), true).unwrap();
        assert_eq!(files.weights, dir.path().join(WEIGHTS_FILE));
        assert_eq!(files.scheduler, None);
        let by_file = resolve(dir.path().join(WEIGHTS_FILE).to_str().unwrap(), true).unwrap();
        assert_eq!(by_file.config, dir.path().join("config.json"));
        assert!(resolve("/no/such/place", true).unwrap_err().to_string().contains("no such file"));
    }
}
