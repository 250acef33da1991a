//! Sample grids as PNG.

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::dataset::{data_err, Result};
use crate::transform::to_rgb;

/// Images in [-1, 1] to uint8 as torchvision's `save_image` writes them (the official eval reads
/// those PNGs): `floor(255 clamp((x + 1) / 2, 0, 1) + 0.5)`. Grids and FID use this one rounding.
pub fn to_uint8(x: &Tensor) -> candle_core::Result<Tensor> {
    let unit = ((x.to_dtype(DType::F32)? + 1.0)? * 0.5)?.clamp(0f32, 1f32)?;
    ((unit * 255.0)? + 0.5)?.floor()?.to_dtype(DType::U8)
}

/// Writes images `(N, C, H, W)` in [-1, 1] (C = 1 or 3) as one PNG, `ncols` per row, 2-pixel gaps.
pub fn save_grid(images: &Tensor, path: &Path, ncols: usize) -> Result<()> {
    let (n, c, h, w) = images.dims4().map_err(|e| data_err!("sample grid: {e}"))?;
    if c != 1 && c != 3 {
        return Err(data_err!("sample grid: images have {c} channels, expected 1 or 3"));
    }
    let px: Vec<u8> = to_uint8(images)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<u8>())
        .map_err(|e| data_err!("sample grid: {e}"))?;
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
    write_png(grid, path)
}

/// Writes an RGB image (row-major, 3 bytes a pixel) as PNG, every error reported.
pub fn write_png_rgb(path: &Path, width: u32, height: u32, rgb: Vec<u8>) -> Result<()> {
    let img = image::RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| data_err!("{}: pixel buffer does not hold {width}x{height} RGB pixels", path.display()))?;
    write_png(img, path)
}

/// Writes one image `(C, H, W)` of uint8 (C = 1: grey, C = 3: RGB) as PNG, every error reported.
pub fn save_image(image: &Tensor, path: &Path) -> Result<()> {
    let (c, h, w) = image.dims3().map_err(|e| data_err!("{}: {e}", path.display()))?;
    let px = image
        .permute((1, 2, 0))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<u8>())
        .map_err(|e| data_err!("{}: expected uint8 pixels: {e}", path.display()))?;
    let short = || data_err!("{}: pixel buffer does not hold {w}x{h} pixels", path.display());
    match c {
        1 => write_png(image::GrayImage::from_raw(w as u32, h as u32, px).ok_or_else(short)?, path),
        3 => write_png(image::RgbImage::from_raw(w as u32, h as u32, px).ok_or_else(short)?, path),
        _ => Err(data_err!("{}: {c} channels cannot be a PNG: expected 1 or 3", path.display())),
    }
}

/// Encoded in memory and written in one checked call: `image`'s own `save` drops the error of
/// its buffered writer's last flush (a full disk was reported as success).
fn write_png(img: impl Into<image::DynamicImage>, path: &Path) -> Result<()> {
    let img: image::DynamicImage = img.into();
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| data_err!("{}: cannot encode PNG: {e}", path.display()))?;
    std::fs::write(path, png).map_err(|e| data_err!("{}: cannot write PNG: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_as_torchvision() {
        let x = Tensor::new(&[-2f32, -1.0, 0.0, 0.5, 1.0, 3.0, -0.998], &candle_core::Device::Cpu).unwrap();
        // (x + 1) / 2 * 255 + 0.5, floored: 0, 0, 128 (127.5 + 0.5), 191 (191.25 + 0.5), 255, 255, 0.
        assert_eq!(to_uint8(&x).unwrap().to_vec1::<u8>().unwrap(), [0, 0, 128, 191, 255, 255, 0]);
    }
}
