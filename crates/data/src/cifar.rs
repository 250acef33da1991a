//! CIFAR-10 / CIFAR-100 binary batches.

use std::path::{Path, PathBuf};

use crate::dataset::{data_err, ImageDataset, Result};

const PIXELS: usize = 3 * 32 * 32;

/// Which split to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Reads a CIFAR binary folder: CIFAR-10 (`data_batch_1..5.bin`, `test_batch.bin`; records of
/// 1 label byte + 3072 pixels) or CIFAR-100 (`train.bin`, `test.bin`; coarse and fine label bytes +
/// 3072 pixels, fine labels used).
/// The folder has the other split only: say which spec reads it.
fn missing_split(dir: &Path, split: Split) -> crate::DataError {
    let (want, other, files) = match split {
        Split::Train => ("train", "test", "data_batch_1.bin .. data_batch_5.bin (or train.bin)"),
        Split::Test => ("test", "train", "test_batch.bin (or test.bin)"),
    };
    data_err!(
        "{}: the CIFAR {want} split ({files}) is not there, only the {other} split; use cifar:{}:{other} to train on it",
        dir.display(),
        dir.display()
    )
}

pub fn load_dir(dir: &Path, split: Split) -> Result<ImageDataset> {
    let (files, label_bytes, classes) = if dir.join("test_batch.bin").is_file()
        || dir.join("data_batch_1.bin").is_file()
    {
        let files: Vec<PathBuf> = match split {
            Split::Train => (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).filter(|p| p.is_file()).collect(),
            Split::Test => vec![dir.join("test_batch.bin")],
        };
        if files.is_empty() || !files.iter().all(|f| f.is_file()) {
            return Err(missing_split(dir, split));
        }
        (files, 1, 10)
    } else if dir.join("train.bin").is_file() || dir.join("test.bin").is_file() {
        let file = dir.join(if split == Split::Train { "train.bin" } else { "test.bin" });
        if !file.is_file() {
            return Err(missing_split(dir, split));
        }
        (vec![file], 2, 100)
    } else {
        return Err(data_err!(
            "{}: not a CIFAR binary folder (expected data_batch_N.bin / test_batch.bin, or train.bin / test.bin)",
            dir.display()
        ));
    };
    let record = label_bytes + PIXELS;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| data_err!("{}: {e}", f.display()))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(data_err!(
                "{}: {} bytes is not a whole number of {record}-byte CIFAR records",
                f.display(),
                bytes.len()
            ));
        }
        for r in bytes.chunks_exact(record) {
            labels.push(r[label_bytes - 1] as u32);
            pixels.extend_from_slice(&r[label_bytes..]);
        }
    }
    ImageDataset::new(format!("CIFAR {}", dir.display()), pixels, (3, 32, 32), Some(labels), classes)
}
