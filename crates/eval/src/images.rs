//! A folder of images as pytorch-fid reads it: every file with an image extension, sorted by
//! name, converted to RGB.

use std::path::{Path, PathBuf};

use candle_core::{Device, Result, Tensor};

/// pytorch-fid's `IMAGE_EXTENSIONS`.
pub const EXTENSIONS: [&str; 9] = ["bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"];

/// The image files directly in `dir`, sorted.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let err = |e: std::io::Error| candle_core::Error::Msg(format!("image folder {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e.to_lowercase().as_str()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        candle_core::bail!("image folder {}: no images ({})", dir.display(), EXTENSIONS.join(", "));
    }
    Ok(files)
}

/// One image as uint8 `(1, 3, H, W)`.
pub fn read_rgb(path: &Path) -> Result<Tensor> {
    let img = image::open(path)
        .map_err(|e| candle_core::Error::Msg(format!("{}: unreadable image ({e})", path.display())))?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Tensor::from_vec(img.into_raw(), (1, h, w, 3), &Device::Cpu)?.permute((0, 3, 1, 2))?.contiguous()
}
