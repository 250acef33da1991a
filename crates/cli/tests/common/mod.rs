//! What the binary's test files share: a tiny training config, paths in the repository, and a
//! run of the binary with a deadline.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Runs the binary with RUST_BACKTRACE=1 (as many Rust users have it); `None` if it is still
/// running at the deadline (then it is killed).
pub fn run_with_deadline(a: &[String], deadline: Duration) -> Option<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scalelong"))
        .args(a)
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running scalelong");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().unwrap())
}

/// A temp folder with the files the cases point at; `p(name)` is a path in it.
pub struct Scene {
    pub dir: tempfile::TempDir,
}

impl Scene {
    pub fn p(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path.to_string_lossy().into_owned()
    }

    /// TINY with `line` added to `[section]`.
    pub fn config(&self, name: &str, section: &str, line: &str) -> String {
        self.write(name, TINY.replace(&format!("[{section}]\n"), &format!("[{section}]\n{line}\n")))
    }
}
