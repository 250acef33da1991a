//! The training loop end to end on a tiny U-ViT and the embedded MNIST.

use std::path::Path;

use candle_core::{DType, Device};
use scalelong_train::metrics::MetricsLine;
use scalelong_train::{checkpoint, Event, TrainConfig, Trainer};

fn tiny(max_steps: u64) -> TrainConfig {
    let mut cfg = TrainConfig::from_toml(
        r#"
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
lr = 1e-3
grad_clip = 1.0
[checkpoint]
every = 3
keep = 2
[log]
every = 1
[sample]
every = 0
n = 4
steps = 4
"#,
        "test",
    )
    .unwrap();
    cfg.train.max_steps = max_steps;
    cfg
}

fn train(cfg: TrainConfig, dir: &Path, resume: bool) -> Trainer {
    let mut t = Trainer::new(cfg, dir, &Device::Cpu, DType::F32, resume).unwrap();
    t.run(&mut |_| {}).unwrap();
    t
}

fn bits(t: &Trainer) -> Vec<(String, Vec<u32>)> {
    let mut all = t.weights();
    all.extend(t.ema_weights().into_iter().map(|(n, w)| (format!("ema.{n}"), w)));
    all.into_iter()
        .map(|(n, w)| (n, w.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

#[test]
fn resume_is_bitwise_exact() {
    let straight = tempfile::tempdir().unwrap();
    let a = train(tiny(6), straight.path(), false);
    let split = tempfile::tempdir().unwrap();
    let first = train(tiny(3), split.path(), false);
    assert_eq!(first.step(), 3);
    drop(first);
    let b = train(tiny(6), split.path(), true);
    assert_eq!(b.step(), 6);
    assert!(bits(&a) == bits(&b), "6 straight steps and 3 + 3 with a restart differ");
    // And training did something: weights moved from the initial ones.
    let init = Trainer::new(tiny(6), tempfile::tempdir().unwrap().path(), &Device::Cpu, DType::F32, false).unwrap();
    assert!(bits(&init) != bits(&a));
    // The same seed gives the same initial weights.
    let init2 = Trainer::new(tiny(6), tempfile::tempdir().unwrap().path(), &Device::Cpu, DType::F32, false).unwrap();
    assert!(bits(&init) == bits(&init2));
}

#[test]
fn run_folder_holds_checkpoints_metrics_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let mut events = Vec::new();
    let mut t = Trainer::new(tiny(7), dir.path(), &Device::Cpu, DType::F32, false).unwrap();
    t.run(&mut |e| events.push(e.clone())).unwrap();
    // Checkpoints at 3, 6 and the final 7; only the newest 2 kept.
    let kept: Vec<u64> = checkpoint::list(&dir.path().join("checkpoints")).into_iter().map(|(s, _)| s).collect();
    assert_eq!(kept, [6, 7]);
    assert!(events.iter().filter(|e| matches!(e, Event::Checkpoint(_))).count() == 3);
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 7);
    for key in ["step", "loss", "lr", "grad_norm", "img_per_s"] {
        assert!(lines[6][key].is_number(), "{key} missing in {}", lines[6]);
    }
    assert_eq!(lines[0]["lr"], 0.0, "warm-up starts from 0");
    let grid = image::open(dir.path().join("samples/step_00000007.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (2 * 10 + 2, 2 * 10 + 2));
}

#[test]
fn diverging_training_stops_with_a_clear_error_and_keeps_checkpoints_finite() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(50);
    cfg.train.lr = 1e30;
    cfg.train.warmup_steps = 0;
    cfg.train.grad_clip = 0.0;
    cfg.train.max_nonfinite = 3;
    cfg.checkpoint.every = 1;
    let mut t = Trainer::new(cfg, dir.path(), &Device::Cpu, DType::F32, false).unwrap();
    let err = t.run(&mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("3 steps in a row had a non-finite loss or gradient"), "{err}");
    // The metrics end with one line that says so, at the step where it stopped.
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let lines: Vec<MetricsLine> = text.lines().map(|l| MetricsLine::parse(l).unwrap()).collect();
    let last = lines.last().unwrap();
    assert!(last.diverged && last.skipped_total == 3, "{text}");
    assert_eq!(lines.iter().filter(|l| l.diverged).count(), 1);
    for (_, path) in checkpoint::list(&dir.path().join("checkpoints")) {
        checkpoint::load(&path, &Device::Cpu).unwrap(); // written only with finite values
    }
}

#[test]
fn a_failed_checkpoint_write_leaves_the_previous_one_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let t = train(tiny(3), dir.path(), false);
    let ck_dir = dir.path().join("checkpoints");
    // Writing step 3 again, into a file that runs out of space (/dev/full answers ENOSPC).
    let target = checkpoint::path_for(&ck_dir, 3);
    let before = std::fs::read(&target).unwrap();
    std::os::unix::fs::symlink("/dev/full", checkpoint::tmp_path(&target)).unwrap();
    let err = t.save_checkpoint().unwrap_err().to_string();
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), before, "the previous checkpoint was touched");
    assert!(!checkpoint::tmp_path(&target).exists(), "the temporary file was left behind");
    checkpoint::load(&target, &Device::Cpu).unwrap();
}

#[test]
fn resuming_with_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    train(tiny(3), dir.path(), false);
    let mut other = tiny(6);
    let scalelong_backbones::ModelConfig::UViT(m) = &mut other.model else { panic!("a U-ViT config") };
    m.embed_dim = 32;
    let err = Trainer::new(other, dir.path(), &Device::Cpu, DType::F32, true).err().unwrap().to_string();
    assert!(err.contains("different model"), "{err}");
    // A truncated checkpoint is a clear error too.
    let (_, last) = checkpoint::list(&dir.path().join("checkpoints")).pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() / 2]).unwrap();
    let err = Trainer::new(tiny(6), dir.path(), &Device::Cpu, DType::F32, true).err().unwrap().to_string();
    assert!(err.contains("step_00000003.safetensors") && err.contains("not a valid safetensors file"), "{err}");
    // Its header still says what it is; an official weights file does not.
    assert!(checkpoint::is_training_checkpoint(&last));
    let official = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/uvit_0_none_plain.pth");
    assert!(!checkpoint::is_training_checkpoint(&official));
}

#[test]
fn tensorboard_event_files_hold_every_metrics_line_and_the_grids() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(4);
    cfg.log.tensorboard = true;
    cfg.log.every = 2;
    cfg.sample.every = 2;
    train(cfg, dir.path(), false);
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let bytes = std::fs::read(&files[0]).unwrap();
    let (mut at, mut records) = (0, Vec::new());
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let data = &bytes[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(crc, scalelong_train::tensorboard::masked_crc(data));
        records.push(data.to_vec());
        at += 16 + len;
    }
    let has = |r: &[u8], s: &[u8]| r.windows(s.len()).any(|w| w == s);
    // The version record, two metrics lines (steps 2 and 4) and two grids.
    assert_eq!(records.len(), 5);
    assert_eq!(records.iter().filter(|r| has(r, b"grad_norm")).count(), 2);
    let images: Vec<_> = records.iter().filter(|r| has(r, b"\x89PNG")).collect();
    assert_eq!(images.len(), 2);
    assert!(images.iter().all(|r| has(r, b"samples")));
}

#[test]
fn sampling_reads_one_group_of_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let t = train(tiny(3), dir.path(), false);
    let path = checkpoint::path_for(&dir.path().join("checkpoints"), 3);
    let all = checkpoint::load(&path, &Device::Cpu).unwrap();
    let ema = checkpoint::load_groups(&path, &[checkpoint::Group::Ema], &Device::Cpu).unwrap();
    assert!(ema.tensors.keys().all(|k| k.starts_with("ema.")) && ema.tensors.len() == t.weights().len());
    assert_eq!(all.tensors.len(), 4 * t.weights().len());
    // The same values as the full read, and the same config.
    for (k, v) in &ema.tensors {
        assert_eq!(
            v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            all.tensors[k].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    assert_eq!(ema.config().unwrap(), all.config().unwrap());
}
