//! A folder of images (PNG, JPEG), searched recursively. Images directly under the root make an
//! unlabelled dataset; otherwise each first-level sub-folder is a class (sorted by name).

use std::path::{Path, PathBuf};

use crate::dataset::{data_err, ImageDataset, Result};
use crate::transform;
use rayon::prelude::*;

/// How each decoded image is brought to the common size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preprocess {
    /// Centre square crop, resize to `size`.
    Square { size: usize },
    /// CelebA: crop rows 57..185, cols 25..153, resize to `size`.
    CelebA { size: usize },
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| data_err!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| data_err!("{}: {e}", dir.display()))?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Loads every image under `root` as `channels` (1 = grey, 3 = RGB) at the size `prep` gives.
/// One image file as `channels` x size x size bytes, brought to size by `prep`.
fn decode(path: &Path, channels: usize, prep: Preprocess) -> Result<Vec<u8>> {
    let img = image::open(path).map_err(|e| data_err!("{}: cannot read image: {e}", path.display()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let chw: Vec<u8> = match channels {
        1 => img.to_luma8().into_raw(),
        _ => {
            let rgb = img.to_rgb8().into_raw();
            (0..3).flat_map(|c| rgb.iter().skip(c).step_by(3).copied().collect::<Vec<_>>()).collect()
        }
    };
    let shape = (channels, h, w);
    Ok(match prep {
        Preprocess::Square { size } => transform::square_resize(&chw, shape, size),
        Preprocess::CelebA { size } => {
            if h < 185 || w < 153 {
                return Err(data_err!(
                    "{}: {w}x{h} is too small for the CelebA crop (178x218 aligned images)",
                    path.display()
                ));
            }
            transform::celeba_crop(&chw, shape, size)
        }
    })
}

pub fn load_dir(root: &Path, channels: usize, prep: Preprocess) -> Result<ImageDataset> {
    if !root.is_dir() {
        return Err(data_err!("{}: not a folder", root.display()));
    }
    let mut files = Vec::new();
    walk(root, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(data_err!("{}: no .png, .jpg or .jpeg images found", root.display()));
    }
    let class_of = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix(root).ok()?;
        let mut parts = rel.components();
        let first = parts.next()?.as_os_str().to_string_lossy().into_owned();
        parts.next().map(|_| first)
    };
    let labelled = files.iter().all(|p| class_of(p).is_some());
    let mut classes: Vec<String> = if labelled { files.iter().filter_map(|p| class_of(p)).collect() } else { vec![] };
    classes.sort();
    classes.dedup();
    let size = match prep {
        Preprocess::Square { size } | Preprocess::CelebA { size } => size,
    };
    if channels != 1 && channels != 3 {
        return Err(data_err!("{}: cannot load images as {channels} channels (1 or 3)", root.display()));
    }
    // Decoded in parallel, each image into its own slot; the first failure in file order is reported.
    let per_image = channels * size * size;
    let mut pixels = vec![0u8; files.len() * per_image];
    let results: Vec<Result<()>> = pixels
        .par_chunks_mut(per_image)
        .zip(files.par_iter())
        .map(|(slot, path)| {
            slot.copy_from_slice(&decode(path, channels, prep)?);
            Ok(())
        })
        .collect();
    results.into_iter().collect::<Result<()>>()?;
    let labels: Vec<u32> = match labelled {
        true => files
            .iter()
            .map(|p| classes.binary_search(&class_of(p).expect("labelled")).expect("known class") as u32)
            .collect(),
        false => vec![],
    };
    let num_classes = classes.len();
    let labels = if labelled { Some(labels) } else { None };
    ImageDataset::new(format!("images {}", root.display()), pixels, (channels, size, size), labels, num_classes)
}
