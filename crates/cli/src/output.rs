//! Output files of the commands: an existing one is never replaced without `--overwrite`.

use std::path::Path;

use anyhow::{bail, Result};

/// Refuses `path` (given as `flag`) when it exists, unless `overwrite`.
pub fn refuse_existing(flag: &str, path: &Path, overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        bail!("{flag} {}: the file exists; pass --overwrite to replace it", path.display());
    }
    Ok(())
}
