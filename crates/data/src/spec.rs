//! Where training data comes from, as a user writes it on the command line or in a config.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::cifar::{self, Split};
use crate::dataset::{data_err, DataError, ImageDataset, Result};
use crate::folder::{self, Preprocess};
use crate::idx;

/// A dataset to train on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DataSpec {
    /// The MNIST test split compiled into the binary (works offline, anywhere).
    #[default]
    EmbeddedMnist,
    /// An IDX folder (MNIST, Fashion-MNIST); `prefix` `train` or `t10k`.
    Idx { dir: PathBuf, prefix: String },
    /// A CIFAR-10 / CIFAR-100 binary folder.
    Cifar { dir: PathBuf, split: Split },
    /// A folder of images, labels from sub-folder names.
    Folder { dir: PathBuf },
    /// CelebA aligned images with the official face crop.
    CelebA { dir: PathBuf },
    /// A candle-datasets Hugging Face loader (`mnist`, `fashion-mnist`, `cifar10`); needs the `hub`
    /// feature and the network (or the HF cache).
    Hub { name: String },
}

impl FromStr for DataSpec {
    type Err = DataError;

    /// `mnist` (embedded), `idx:DIR[:train|t10k]`, `cifar:DIR[:train|test]`, `folder:DIR`,
    /// `celeba:DIR`, `hf:NAME`, or a bare folder whose contents say which it is.
    fn from_str(s: &str) -> Result<Self> {
        let (kind, rest) = s.split_once(':').unwrap_or(("", s));
        let path_and = |rest: &str| -> (PathBuf, Option<String>) {
            match rest.rsplit_once(':') {
                Some((p, opt)) if ["train", "t10k", "test"].contains(&opt) => (PathBuf::from(p), Some(opt.to_string())),
                _ => (PathBuf::from(rest), None),
            }
        };
        Ok(match kind {
            "" if s == "mnist" || s == "embedded" => Self::EmbeddedMnist,
            "idx" => {
                let (dir, opt) = path_and(rest);
                Self::Idx { dir, prefix: opt.map_or("train".into(), |o| if o == "test" { "t10k".into() } else { o }) }
            }
            "cifar" => {
                let (dir, opt) = path_and(rest);
                Self::Cifar {
                    dir,
                    split: if matches!(opt.as_deref(), Some("test" | "t10k")) { Split::Test } else { Split::Train },
                }
            }
            "folder" => Self::Folder { dir: rest.into() },
            "celeba" => Self::CelebA { dir: rest.into() },
            "hf" => Self::Hub { name: rest.to_string() },
            _ => Self::detect(Path::new(s))?,
        })
    }
}

impl DataSpec {
    /// Tells a folder's kind from its files.
    pub fn detect(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(data_err!(
                "dataset `{}` not found: expected `mnist` (embedded), an existing folder, or idx:/cifar:/folder:/celeba:/hf: followed by one",
                dir.display()
            ));
        }
        let has = |name: &str| dir.join(name).is_file() || dir.join(format!("{name}.gz")).is_file();
        Ok(if has("train-images-idx3-ubyte") {
            Self::Idx { dir: dir.into(), prefix: "train".into() }
        } else if has("t10k-images-idx3-ubyte") {
            Self::Idx { dir: dir.into(), prefix: "t10k".into() }
        } else if has("data_batch_1.bin") || has("test_batch.bin") || has("train.bin") {
            Self::Cifar {
                dir: dir.into(),
                split: if has("data_batch_1.bin") || has("train.bin") { Split::Train } else { Split::Test },
            }
        } else {
            Self::Folder { dir: dir.into() }
        })
    }

    /// As [`DataSpec::load`], padding images smaller than `size` with black borders instead of
    /// resizing them (larger ones are still resized).
    pub fn load_padded(&self, channels: usize, size: usize) -> Result<ImageDataset> {
        let ds = self.load_raw(channels, size)?;
        let (_, h, w) = ds.image_shape();
        let ds = if h <= size && w <= size { ds.pad_to(size)? } else { ds };
        ds.conform(channels, size)
    }

    /// Loads the data and brings every image to `channels x size x size`.
    pub fn load(&self, channels: usize, size: usize) -> Result<ImageDataset> {
        self.load_raw(channels, size)?.conform(channels, size)
    }

    /// The images as the dataset stores them (MNIST 1x28x28, CIFAR 3x32x32), for measuring
    /// against them (FID). Image folders have no one stored size: read them file by file.
    pub fn load_as_stored(&self) -> Result<ImageDataset> {
        match self {
            Self::Folder { dir } | Self::CelebA { dir } => Err(data_err!(
                "{}: an image folder has no stored size; read its files as they are (pass the folder itself)",
                dir.display()
            )),
            _ => self.load_raw(3, 0),
        }
    }

    fn load_raw(&self, channels: usize, size: usize) -> Result<ImageDataset> {
        let ds = match self {
            Self::EmbeddedMnist => crate::embedded::mnist_test()?,
            Self::Idx { dir, prefix } => idx::load_dir(dir, prefix)?,
            Self::Cifar { dir, split } => cifar::load_dir(dir, *split)?,
            Self::Folder { dir } => folder::load_dir(dir, channels, Preprocess::Square { size })?,
            Self::CelebA { dir } => folder::load_dir(dir, channels, Preprocess::CelebA { size })?,
            Self::Hub { name } => hub(name)?,
        };
        Ok(ds)
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmbeddedMnist => f.write_str("mnist"),
            Self::Idx { dir, prefix } => write!(f, "idx:{}:{prefix}", dir.display()),
            Self::Cifar { dir, split } => {
                write!(f, "cifar:{}:{}", dir.display(), if *split == Split::Train { "train" } else { "test" })
            }
            Self::Folder { dir } => write!(f, "folder:{}", dir.display()),
            Self::CelebA { dir } => write!(f, "celeba:{}", dir.display()),
            Self::Hub { name } => write!(f, "hf:{name}"),
        }
    }
}

#[cfg(feature = "hub")]
fn hub(name: &str) -> Result<ImageDataset> {
    use candle_datasets::vision;
    let (ds, shape) = match name {
        "mnist" => (vision::mnist::load(), (1, 28, 28)),
        "fashion-mnist" => (vision::fashion_mnist::load(), (1, 28, 28)),
        "cifar10" => (vision::cifar::load(), (3, 32, 32)),
        _ => return Err(data_err!("hf:{name}: unknown hub dataset, expected mnist, fashion-mnist or cifar10")),
    };
    let ds = ds.map_err(|e| data_err!("hf:{name}: {e}"))?;
    let to_u8 = |t: &candle_core::Tensor| -> Result<Vec<u8>> {
        let v = t.flatten_all().and_then(|t| t.to_dtype(candle_core::DType::F32)).and_then(|t| t.to_vec1::<f32>());
        Ok(v.map_err(|e| data_err!("hf:{name}: {e}"))?
            .iter()
            .map(|&x| (x * 255.0).round().clamp(0.0, 255.0) as u8)
            .collect())
    };
    let labels = ds
        .train_labels
        .to_dtype(candle_core::DType::U32)
        .and_then(|t| t.to_vec1::<u32>())
        .map_err(|e| data_err!("hf:{name}: {e}"))?;
    ImageDataset::new(format!("hf:{name}"), to_u8(&ds.train_images)?, shape, Some(labels), ds.labels)
}

#[cfg(not(feature = "hub"))]
fn hub(name: &str) -> Result<ImageDataset> {
    Err(data_err!(
        "hf:{name}: this build has no Hugging Face dataset loaders: rebuild with the `hub` feature \
         (cargo install --path crates/cli --features hub), or download the dataset and pass its folder: \
         idx:DIR, cifar:DIR or folder:DIR"
    ))
}
