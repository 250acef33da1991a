//! A run folder (`checkpoints/`, `metrics.jsonl`, `samples/`, and `config.toml`, which every
//! start rewrites) and the checks that keep one run from overwriting or silently replacing another.

use crate::ConfigError;
use std::path::{Path, PathBuf};

use crate::checkpoint;

/// How a training command treats its run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A new run: the folder must not hold one already.
    New,
    /// A new run in place of the one in the folder, whose files are deleted first.
    Overwrite,
    /// Continue from the newest checkpoint in the folder; there must be one.
    Resume,
    /// Continue from this checkpoint file.
    ResumeFrom(PathBuf),
}

/// The files of a run that `dir` holds, relative to it (empty: no run there).
pub fn run_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = checkpoint::list(&dir.join("checkpoints")).into_iter().map(|(_, p)| p).collect();
    if dir.join("metrics.jsonl").exists() {
        found.push(dir.join("metrics.jsonl"));
    }
    let samples = std::fs::read_dir(dir.join("samples")).into_iter().flatten().flatten();
    found.extend(samples.map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "png")));
    found.iter().map(|p| p.strip_prefix(dir).unwrap_or(p).to_path_buf()).collect()
}

/// Checks the folder against `start` before any work; returns the checkpoint to resume from.
pub fn prepare(dir: &Path, start: &Start) -> Result<Option<PathBuf>, ConfigError> {
    let files = run_files(dir);
    let listing = || {
        let shown: Vec<String> = files.iter().take(4).map(|p| p.display().to_string()).collect();
        let more = files.len().saturating_sub(shown.len());
        format!("{}{}", shown.join(", "), if more > 0 { format!(" and {more} more") } else { String::new() })
    };
    match start {
        Start::New if files.is_empty() => Ok(None),
        Start::New => Err(format!(
            "run folder {} already holds a run ({}): continue it with --resume, start over with --overwrite \
             (deletes those files), or give another --run-dir",
            dir.display(),
            listing()
        )
        .into()),
        Start::Overwrite => {
            for f in &files {
                std::fs::remove_file(dir.join(f))
                    .map_err(|e| format!("--overwrite: cannot delete {}: {e}", dir.join(f).display()))?;
            }
            if !files.is_empty() {
                tracing::warn!(run_dir = %dir.display(), files = files.len(), "--overwrite: deleted the previous run");
            }
            Ok(None)
        }
        Start::Resume => match checkpoint::list(&dir.join("checkpoints")).pop() {
            Some((_, path)) => Ok(Some(path)),
            None if !dir.exists() => Err(format!(
                "--resume: run folder {} does not exist; leave out --resume to start a new run there",
                dir.display()
            )
            .into()),
            None => Err(format!(
                "--resume: no checkpoint in {} (nothing to resume); leave out --resume to start a new run, \
                 or give a checkpoint with --resume PATH",
                dir.join("checkpoints").display()
            )
            .into()),
        },
        Start::ResumeFrom(path) if !path.is_file() => Err(format!(
            "--resume {}: no such file; expected a checkpoint checkpoints/step_N.safetensors",
            path.display()
        )
        .into()),
        Start::ResumeFrom(path) => Ok(Some(path.clone())),
    }
}

/// The checkpoint before `path` in its folder, if any (to offer when `path` cannot be read).
pub fn previous_checkpoint(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?;
    let all = checkpoint::list(dir);
    let i = all.iter().position(|(_, p)| p == path)?;
    i.checked_sub(1).map(|j| all[j].1.clone())
}

/// Renames checkpoints newer than `step` in `dir` to `*.superseded`, so a run resumed from an
/// older checkpoint neither prunes its own new checkpoints in their favour nor is later resumed
/// from them. Nothing is deleted.
pub fn set_aside_newer(dir: &Path, step: u64) -> std::io::Result<Vec<PathBuf>> {
    let mut moved = Vec::new();
    for (s, p) in checkpoint::list(dir) {
        if s > step {
            let mut name = p.file_name().unwrap_or_default().to_os_string();
            name.push(".superseded");
            let to = p.with_file_name(name);
            std::fs::rename(&p, &to)?;
            moved.push(to);
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_folder_is_never_reused_by_accident() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        assert_eq!(prepare(&run, &Start::New), Ok(None));
        let err = prepare(&run, &Start::Resume).unwrap_err().to_string();
        assert!(err.contains("does not exist") && err.contains("leave out --resume"), "{err}");
        std::fs::create_dir_all(run.join("checkpoints")).unwrap();
        let err = prepare(&run, &Start::Resume).unwrap_err().to_string();
        assert!(err.contains("no checkpoint in") && err.contains("nothing to resume"), "{err}");
        std::fs::write(run.join("metrics.jsonl"), "{}\n").unwrap();
        let (c1, c2) =
            (checkpoint::path_for(&run.join("checkpoints"), 10), checkpoint::path_for(&run.join("checkpoints"), 20));
        std::fs::write(&c1, b"x").unwrap();
        std::fs::write(&c2, b"x").unwrap();
        let err = prepare(&run, &Start::New).unwrap_err().to_string();
        assert!(
            err.contains("already holds a run") && err.contains("--resume") && err.contains("--overwrite"),
            "{err}"
        );
        assert!(err.contains("step_00000020.safetensors") && err.contains("metrics.jsonl"), "{err}");
        assert_eq!(prepare(&run, &Start::Resume), Ok(Some(c2.clone())));
        assert_eq!(previous_checkpoint(&c2), Some(c1.clone()));
        assert_eq!(previous_checkpoint(&c1), None);
        let err = prepare(&run, &Start::ResumeFrom(run.join("nope.safetensors"))).unwrap_err().to_string();
        assert!(err.contains("no such file"), "{err}");
        assert_eq!(set_aside_newer(&run.join("checkpoints"), 10).unwrap().len(), 1);
        assert_eq!(checkpoint::list(&run.join("checkpoints")), vec![(10, c1)]);
        assert_eq!(prepare(&run, &Start::Overwrite), Ok(None));
        assert!(run_files(&run).is_empty());
        assert_eq!(prepare(&run, &Start::New), Ok(None));
    }
}
