//! Image datasets and batching for scalelong training.
//!
//! - Readers: MNIST / Fashion-MNIST IDX (raw or gzipped), CIFAR-10/100 binary batches, folders of
//!   PNG/JPEG images (labels from sub-folder names), CelebA with the official face crop, and
//!   candle-datasets' Hugging Face loaders with the `hub` feature. [`DataSpec`] names one.
//! - [`ImageDataset`]: u8 images in memory, brought to the model's channels and size.
//! - [`Loader`]: a deterministic shuffle per epoch, random horizontal flips, pixels in [-1, 1],
//!   prepared on a background thread; each batch is a function of the seed and its position, so
//!   training resumes exactly.
//! - [`save_grid`]: sample grids as PNG.
//! - An embedded default: MNIST's 10k test split ([`embedded::mnist_test`]).

pub mod cifar;
mod dataset;
pub mod embedded;
pub mod folder;
mod grid;
pub mod idx;
mod loader;
mod spec;
pub mod transform;

pub use dataset::{DataError, ImageDataset};
pub use grid::{save_grid, save_image, to_uint8, write_png_rgb};
pub use loader::{epoch_order, make_batch, Batch, DataPosition, Loader, LoaderConfig};
pub use spec::DataSpec;
