//! Image datasets and batching for scalelong training.
//!
//! This crate is empty for now: the MNIST/Fashion-MNIST IDX, CIFAR binary and image-folder readers,
//! the embedded default dataset and the background batcher land with the trainer. The `hub`
//! feature will bring candle-datasets' Hugging Face loaders for users who are online.
