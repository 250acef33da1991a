//! Batches for training: a deterministic shuffle per epoch, random horizontal flips, pixels in
//! [-1, 1], prepared on a background thread. Every batch depends only on the seed and its position,
//! so a resumed run sees exactly the batches the uninterrupted run would have.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::transform::{hflip, to_unit_range};
use crate::ImageDataset;

/// Where the next batch starts: an epoch and an offset into that epoch's permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataPosition {
    pub epoch: u64,
    pub offset: usize,
}

/// One batch, on the host: `images` (B, C, H, W) in [-1, 1], row-major.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Option<Vec<u32>>,
    pub shape: (usize, usize, usize, usize),
    /// Where the batch after this one starts.
    pub next: DataPosition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub seed: u64,
    pub hflip: bool,
    /// Batches prepared ahead of the trainer.
    pub prefetch: usize,
}

/// Streams batches from a background thread, forever (epoch after epoch). The last incomplete
/// batch of an epoch is dropped, as PyTorch's `drop_last=True`.
pub struct Loader {
    rx: Receiver<Batch>,
    worker: Option<JoinHandle<()>>,
}

impl Loader {
    pub fn new(dataset: Arc<ImageDataset>, config: LoaderConfig, start: DataPosition) -> Self {
        let (tx, rx) = sync_channel(config.prefetch.max(1));
        let worker = std::thread::spawn(move || {
            let mut pos = start;
            // The epoch's permutation, computed once per epoch rather than once per batch.
            let mut order: Option<(u64, Vec<usize>)> = None;
            loop {
                let pos_now = roll_over(&dataset, &config, pos);
                if order.as_ref().is_none_or(|(e, _)| *e != pos_now.epoch) {
                    order = Some((pos_now.epoch, epoch_order(dataset.len(), config.seed, pos_now.epoch)));
                }
                let batch = batch_at(&dataset, &config, pos_now, &order.as_ref().expect("set above").1);
                pos = batch.next;
                if tx.send(batch).is_err() {
                    return; // the loader was dropped
                }
            }
        });
        Self { rx, worker: Some(worker) }
    }

    /// The next batch (blocks only if the worker is behind).
    pub fn next_batch(&mut self) -> Batch {
        self.rx.recv().expect("data worker stopped")
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Dropping the receiver ends the worker at its next send; don't wait for it.
        self.worker.take();
    }
}

/// The permutation of epoch `epoch`.
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng);
    order
}

/// Builds the batch at `pos` (an epoch with fewer than `batch_size` images left moves on).
pub fn make_batch(ds: &ImageDataset, cfg: &LoaderConfig, pos: DataPosition) -> Batch {
    let pos = roll_over(ds, cfg, pos);
    batch_at(ds, cfg, pos, &epoch_order(ds.len(), cfg.seed, pos.epoch))
}

/// The position itself, or the start of the next epoch if fewer than a batch of images is left.
fn roll_over(ds: &ImageDataset, cfg: &LoaderConfig, pos: DataPosition) -> DataPosition {
    if pos.offset + cfg.batch_size.min(ds.len()) > ds.len() {
        DataPosition { epoch: pos.epoch + 1, offset: 0 }
    } else {
        pos
    }
}

/// The batch at `pos` (already rolled over), given that epoch's permutation.
fn batch_at(ds: &ImageDataset, cfg: &LoaderConfig, pos: DataPosition, order: &[usize]) -> Batch {
    let b = cfg.batch_size.min(ds.len());
    // Flip decisions: one word per position in the epoch, from a stream of their own.
    let mut flips = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5CA1_E10C);
    flips.set_stream(pos.epoch);
    flips.set_word_pos(pos.offset as u128);
    let (c, h, w) = ds.image_shape();
    let mut images = Vec::with_capacity(b * c * h * w);
    let mut labels = ds.labels().map(|_| Vec::with_capacity(b));
    for &i in &order[pos.offset..pos.offset + b] {
        let start = images.len();
        images.extend(ds.image(i).iter().map(|&p| to_unit_range(p)));
        if flips.next_u32() & 1 == 1 && cfg.hflip {
            hflip(&mut images[start..], (c, h, w));
        }
        if let (Some(out), Some(all)) = (labels.as_mut(), ds.labels()) {
            out.push(all[i]);
        }
    }
    Batch { images, labels, shape: (b, c, h, w), next: DataPosition { epoch: pos.epoch, offset: pos.offset + b } }
}
