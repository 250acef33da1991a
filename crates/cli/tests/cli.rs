//! The `scalelong` binary as a user runs it.

use std::path::Path;
use std::process::{Command, Output};

fn scalelong(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scalelong")).args(args).output().expect("running scalelong")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path).to_string_lossy().into_owned()
}

#[test]
fn info_prints_counts_and_skip_coefficients() {
    let o = scalelong(&["info", "--preset", "cifar10-uvit-s2", "--scaling", "cs:0.5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("total              44,255,328"), "{out}");
    assert!(out.contains("in_blocks          18,905,088"), "{out}");
    assert!(out.contains("1      out_blocks.5     1 (outermost)"), "{out}");
    assert!(out.contains("6      out_blocks.0     0.03125 (innermost)"), "{out}");

    let o = scalelong(&["info", "--preset", "cifar10-uvit-s2", "--scaling", "ls-per-skip"]);
    let out = stdout(&o);
    assert!(out.contains("total              44,306,310") && out.contains("LS gate se.0 (innermost)"), "{out}");
}

#[test]
fn info_reads_config_files_and_checks_checkpoints() {
    let o = scalelong(&["info", "--config", &repo("configs/uvit-tiny-cs.toml")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("skip scaling: cs:0.5"));

    let official = r#"{"img_size": 8, "patch_size": 2, "in_chans": 3, "embed_dim": 32, "depth": 6, "num_heads": 4, "num_classes": -1, "scalelong": 0}"#;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("official.json");
    std::fs::write(&json, official).unwrap();
    let pth = repo("tests/fixtures/uvit_0_none_plain.pth");
    let o = scalelong(&["info", "--config", json.to_str().unwrap(), "--checkpoint", &pth]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("fits this model"), "{}", stdout(&o));

    // The same checkpoint against the wrong architecture names what does not fit.
    let o = scalelong(&["info", "--preset", "cifar10-uvit-s2", "--checkpoint", &pth]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("`pos_embed` has shape [1, 17, 32], expected [1, 257, 512]"), "{}", stderr(&o));
}

#[test]
fn bad_input_gives_clear_errors() {
    let o = scalelong(&["info", "--preset", "cifar10-uvit-s2", "--scaling", "cs:-1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("invalid kappa `-1`") && stderr(&o).contains("finite number > 0"), "{}", stderr(&o));

    let o = scalelong(&["info", "--preset", "cifar10-uvit-s2", "--scaling", "cs:2"]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("amplifies"), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[model]\nimg_size = 32\npatchsize = 2\n").unwrap();
    let o = scalelong(&["info", "--config", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("bad.toml") && err.contains("unknown field `patchsize`") && err.contains("`patch_size`"),
        "{err}"
    );

    let o = scalelong(&["info"]);
    assert!(!o.status.success() && stderr(&o).contains("--preset NAME"), "{}", stderr(&o));
}
