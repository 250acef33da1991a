//! An in-memory image dataset: u8 pixels, channel-first, with optional class labels.

use std::fmt;

/// Images of one size, stored as u8 `(N, C, H, W)`, with optional labels in `0..num_classes`.
#[derive(Clone, PartialEq)]
pub struct ImageDataset {
    pixels: Vec<u8>,
    len: usize,
    channels: usize,
    height: usize,
    width: usize,
    labels: Option<Vec<u32>>,
    num_classes: usize,
    /// Where the data came from, for messages.
    pub source: String,
}

impl fmt::Debug for ImageDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ImageDataset({}: {} x {}x{}x{}, {} classes)",
            self.source, self.len, self.channels, self.height, self.width, self.num_classes
        )
    }
}

/// A dataset that cannot be built: the message names the file or folder and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DataError(pub String);

pub type Result<T> = std::result::Result<T, DataError>;

/// Builds a [`DataError`] from a format string.
macro_rules! data_err {
    ($($arg:tt)*) => { $crate::dataset::DataError(format!($($arg)*)) };
}
pub(crate) use data_err;

impl ImageDataset {
    /// Checks that `pixels` holds `len` images of `channels x height x width` and the labels fit.
    pub fn new(
        source: impl Into<String>,
        pixels: Vec<u8>,
        (channels, height, width): (usize, usize, usize),
        labels: Option<Vec<u32>>,
        num_classes: usize,
    ) -> Result<Self> {
        let source = source.into();
        let per = channels * height * width;
        if per == 0 || !pixels.len().is_multiple_of(per) {
            return Err(data_err!(
                "{source}: {} bytes is not a whole number of {channels}x{height}x{width} images",
                pixels.len()
            ));
        }
        let len = pixels.len() / per;
        if len == 0 {
            return Err(data_err!("{source}: no images"));
        }
        if let Some(l) = &labels {
            if l.len() != len {
                return Err(data_err!("{source}: {} labels for {len} images", l.len()));
            }
            if let Some(bad) = l.iter().find(|&&y| y as usize >= num_classes) {
                return Err(data_err!("{source}: label {bad} out of range, expected 0..{num_classes}"));
            }
        }
        Ok(Self { pixels, len, channels, height, width, labels, num_classes, source })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// (C, H, W).
    pub fn image_shape(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// The pixels of image `i`, `(C, H, W)` u8.
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.channels * self.height * self.width;
        &self.pixels[i * per..(i + 1) * per]
    }

    /// Pads every image with black borders, centred, to `size x size` (e.g. MNIST 28 -> 32),
    /// instead of resizing it.
    pub fn pad_to(self, size: usize) -> Result<Self> {
        let (c, h, w) = self.image_shape();
        if h > size || w > size {
            return Err(data_err!("{}: {w}x{h} images cannot be padded to {size}x{size}", self.source));
        }
        let (top, left) = ((size - h) / 2, (size - w) / 2);
        let mut out = vec![0u8; self.len * c * size * size];
        for i in 0..self.len {
            let img = self.image(i);
            for ch in 0..c {
                for y in 0..h {
                    let dst = ((i * c + ch) * size + top + y) * size + left;
                    out[dst..dst + w].copy_from_slice(&img[(ch * h + y) * w..(ch * h + y + 1) * w]);
                }
            }
        }
        let source = format!("{} (padded to {size}x{size})", self.source);
        Self::new(source, out, (c, size, size), self.labels, self.num_classes)
    }

    /// Resizes (bilinear) or repeats channels so every image is `(channels, size, size)`.
    /// Square images are resized; non-square ones are centre-cropped to a square first.
    pub fn conform(self, channels: usize, size: usize) -> Result<Self> {
        let (c, h, w) = self.image_shape();
        if c != channels && !(c == 1 && channels == 3) {
            return Err(data_err!(
                "{}: images have {c} channel(s), the model expects {channels} (only 1 -> 3 is converted)",
                self.source
            ));
        }
        if (c, h, w) == (channels, size, size) {
            return Ok(self);
        }
        let mut out = Vec::with_capacity(self.len * channels * size * size);
        for i in 0..self.len {
            let img = crate::transform::square_resize(self.image(i), (c, h, w), size);
            if c == channels {
                out.extend_from_slice(&img);
            } else {
                for _ in 0..channels {
                    out.extend_from_slice(&img);
                }
            }
        }
        let source = format!("{} (as {channels}x{size}x{size})", self.source);
        Self::new(source, out, (channels, size, size), self.labels, self.num_classes)
    }
}
