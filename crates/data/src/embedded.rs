//! The dataset compiled into the binary: MNIST's 10k test split (see `assets/README.md`).

use crate::dataset::{ImageDataset, Result};

const IMAGES: &[u8] = include_bytes!("../assets/mnist-t10k-images-idx3-ubyte.gz");
const LABELS: &[u8] = include_bytes!("../assets/mnist-t10k-labels-idx1-ubyte.gz");

/// MNIST test split: 10,000 grey 28x28 digits with labels 0..9.
pub fn mnist_test() -> Result<ImageDataset> {
    crate::idx::from_idx_bytes("embedded MNIST t10k", ("mnist-t10k-images", IMAGES), ("mnist-t10k-labels", LABELS))
}
