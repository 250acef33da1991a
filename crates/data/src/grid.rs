//! Sample grids as PNG.

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::dataset::{data_err, Result};
use crate::transform::to_rgb;

/// Writes images `(N, C, H, W)` in [-1, 1] (C = 1 or 3) as one PNG, `ncols` per row, 2-pixel gaps.
pub fn save_grid(images: &Tensor, path: &Path, ncols: usize) -> Result<()> {
    let (n, c, h, w) = images.dims4().map_err(|e| data_err!("sample grid: {e}"))?;
    if c != 1 && c != 3 {
        return Err(data_err!("sample grid: images have {c} channels, expected 1 or 3"));
    }
    let px: Vec<u8> =
        ((images.to_dtype(DType::F32).and_then(|t| t.clamp(-1f32, 1f32)).and_then(|t| (t + 1.0)? * 127.5))
            .and_then(|t| t.round())
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>()))
        .map_err(|e| data_err!("sample grid: {e}"))?
        .into_iter()
        .map(|v| v as u8)
        .collect();
    let ncols = ncols.clamp(1, n.max(1));
    let nrows = n.div_ceil(ncols);
    let gap = 2;
    let (gw, gh) = (ncols * (w + gap) + gap, nrows * (h + gap) + gap);
    let mut grid = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([255, 255, 255]));
    for i in 0..n {
        let tile = to_rgb(&px[i * c * h * w..(i + 1) * c * h * w], (c, h, w));
        let (x0, y0) = (gap + (i % ncols) * (w + gap), gap + (i / ncols) * (h + gap));
        image::imageops::replace(&mut grid, &tile, x0 as i64, y0 as i64);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| data_err!("{}: {e}", dir.display()))?;
    }
    write_png(&grid, path)
}

/// Writes an RGB image (row-major, 3 bytes a pixel) as PNG, every error reported.
pub fn write_png_rgb(path: &Path, width: u32, height: u32, rgb: Vec<u8>) -> Result<()> {
    let img = image::RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| data_err!("{}: pixel buffer does not hold {width}x{height} RGB pixels", path.display()))?;
    write_png(&img, path)
}

/// Encoded in memory and written in one checked call: `image`'s own `save` drops the error of
/// its buffered writer's last flush (a full disk was reported as success).
fn write_png(img: &image::RgbImage, path: &Path) -> Result<()> {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| data_err!("{}: cannot encode PNG: {e}", path.display()))?;
    std::fs::write(path, png).map_err(|e| data_err!("{}: cannot write PNG: {e}", path.display()))
}
