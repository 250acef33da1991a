//! What the binary's test files share: a tiny training config and paths in the repository.
#![allow(dead_code)]

use std::path::Path;

/// A U-ViT small enough that a training step takes milliseconds.
pub const TINY: &str = r#"
[model]
img_size = 8
patch_size = 2
in_chans = 1
embed_dim = 16
depth = 2
num_heads = 2
scaling = "cs:0.5"
[train]
batch_size = 8
warmup_steps = 2
[checkpoint]
every = 2
[log]
every = 1
[sample]
every = 0
n = 4
steps = 3
"#;

/// A path in the repository, from this crate's folder.
pub fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path).to_string_lossy().into_owned()
}
