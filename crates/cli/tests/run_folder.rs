//! The run-folder guarantees through the binary: a run is never overwritten or restarted by
//! accident, and a signal loses no work.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Scene, TINY};

fn scalelong(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scalelong")).args(args).output().expect("running scalelong")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn metrics_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_run_is_never_overwritten_or_restarted_by_accident() {
    let s = Scene { dir: tempfile::tempdir().unwrap() };
    let tiny = s.write("tiny.toml", TINY);
    let run = s.dir.path().join("run");
    let train = |more: &[&str]| {
        scalelong(&[args(&["train", "--config", &tiny, "--run-dir", run.to_str().unwrap()]), args(more)].concat())
    };
    assert!(train(&["--max-steps", "4"]).status.success());
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    // Again without --resume: refused, nothing touched.
    let o = train(&["--max-steps", "6"]);
    assert!(!o.status.success() && text(&o.stderr).contains("already holds a run"), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before);
    assert_eq!(checkpoint_steps(&run), [2, 4]);
    // --resume continues where it stopped; --resume PATH from an older checkpoint sets newer ones aside.
    assert!(train(&["--max-steps", "6", "--resume"]).status.success());
    assert_eq!(metrics_steps(&run), [1, 2, 3, 4, 5, 6]);
    let o = scalelong(&args(&[
        "train",
        "--config",
        &tiny,
        "--max-steps",
        "5",
        "--resume",
        run.join("checkpoints/step_00000004.safetensors").to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(metrics_steps(&run), [1, 2, 3, 4, 5]);
    assert!(run.join("checkpoints/step_00000006.safetensors.superseded").is_file());
    // A damaged newest checkpoint: --resume says so and names the previous one.
    std::fs::write(run.join("checkpoints/step_00000005.safetensors"), b"damaged").unwrap();
    let o = train(&["--max-steps", "8", "--resume"]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.contains("step_00000005.safetensors"), "{err}");
    assert!(err.contains("previous checkpoint is") && err.contains("step_00000004.safetensors"), "{err}");
    // --overwrite is the last check: a run that fails an earlier one (metal, which no Linux build has)
    // deletes nothing.
    let o = train(&["--max-steps", "2", "--overwrite", "--device", "metal"]);
    assert!(!o.status.success() && text(&o.stderr).contains("--device metal"), "{}", text(&o.stderr));
    assert_eq!(metrics_steps(&run), [1, 2, 3, 4, 5]);
    // --overwrite starts over.
    assert!(train(&["--max-steps", "2", "--overwrite"]).status.success());
    assert_eq!(metrics_steps(&run), [1, 2]);
    assert_eq!(checkpoint_steps(&run), [2]);
    // --resume on an empty folder is an error, not a fresh start.
    std::fs::create_dir_all(s.dir.path().join("empty/checkpoints")).unwrap();
    let o = scalelong(&args(&["train", "--config", &tiny, "--run-dir", &s.p("empty"), "--resume"]));
    assert!(!o.status.success() && text(&o.stderr).contains("nothing to resume"), "{}", text(&o.stderr));
    assert!(!s.dir.path().join("empty/metrics.jsonl").exists());
}

fn checkpoint_steps(run: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("step_")?.strip_suffix(".safetensors")?.parse().ok()
        })
        .collect();
    steps.sort();
    steps
}

/// SIGTERM and SIGINT: the step in progress finishes, a checkpoint is written, the process says
/// so and exits 128 + signal; --resume continues from that step.
#[test]
fn a_signal_finishes_the_step_and_checkpoints() {
    let s = Scene { dir: tempfile::tempdir().unwrap() };
    // Checkpoints only at the end, so the one after the signal is the signal's.
    let tiny = s.write("tiny.toml", TINY.replace("every = 2", "every = 0"));
    let run: PathBuf = s.dir.path().join("run");
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let mut a = args(&["train", "--config", &tiny, "--run-dir", run.to_str().unwrap(), "--max-steps", "1000000"]);
        if run.join("checkpoints").exists() {
            a.push("--resume".into());
        }
        let child = Command::new(env!("CARGO_BIN_EXE_scalelong"))
            .args(&a)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let first = metrics_steps(&run).len();
        while metrics_steps(&run).len() < first + 3 {
            assert!(started.elapsed() < Duration::from_secs(60), "training did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let kill = Command::new("kill").args([format!("-{signal}"), child.id().to_string()]).status().unwrap();
        assert!(kill.success());
        let o = child.wait_with_output().unwrap();
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{err}");
        let steps = checkpoint_steps(&run);
        let last = *steps.last().expect("a checkpoint after the signal");
        assert!(err.contains(&format!("after step {last}")) && err.contains("--resume"), "{err}");
        assert_eq!(*metrics_steps(&run).last().unwrap(), last, "metrics end at the checkpointed step");
    }
    // Both interruptions left one continuous record.
    let steps = metrics_steps(&run);
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());
}
