//! Pixel transforms: crops, resizes, flips and the map to [-1, 1].

use image::imageops::FilterType;
use image::{ImageBuffer, Luma, Rgb};

/// Crops `(C, H, W)` u8 pixels to rows `top..top + h`, cols `left..left + w`.
pub fn crop(
    pixels: &[u8],
    (c, height, width): (usize, usize, usize),
    top: usize,
    left: usize,
    h: usize,
    w: usize,
) -> Vec<u8> {
    assert!(top + h <= height && left + w <= width, "crop outside the image");
    let mut out = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        for y in top..top + h {
            let row = ch * height * width + y * width;
            out.extend_from_slice(&pixels[row + left..row + left + w]);
        }
    }
    out
}

/// Centre-crops to a square and resizes (bilinear, `image`'s Triangle filter) to `size x size`.
pub fn square_resize(pixels: &[u8], (c, h, w): (usize, usize, usize), size: usize) -> Vec<u8> {
    let side = h.min(w);
    let squared =
        if h == w { pixels.to_vec() } else { crop(pixels, (c, h, w), (h - side) / 2, (w - side) / 2, side, side) };
    if side == size {
        return squared;
    }
    let mut out = vec![0u8; c * size * size];
    for ch in 0..c {
        let plane = &squared[ch * side * side..(ch + 1) * side * side];
        let img: ImageBuffer<Luma<u8>, Vec<u8>> =
            ImageBuffer::from_raw(side as u32, side as u32, plane.to_vec()).expect("plane size");
        let resized = image::imageops::resize(&img, size as u32, size as u32, FilterType::Triangle);
        out[ch * size * size..(ch + 1) * size * size].copy_from_slice(resized.as_raw());
    }
    out
}

/// The official CelebA preprocessing: crop rows 57..185 and cols 25..153 of the 178x218 aligned
/// image (a 128x128 face), then resize to `size`.
pub fn celeba_crop(pixels: &[u8], shape: (usize, usize, usize), size: usize) -> Vec<u8> {
    let face = crop(pixels, shape, 57, 25, 128, 128);
    square_resize(&face, (shape.0, 128, 128), size)
}

/// Flips `(C, H, W)` pixels left to right in place.
pub fn hflip(pixels: &mut [f32], (c, h, w): (usize, usize, usize)) {
    for row in pixels.chunks_mut(w).take(c * h) {
        row.reverse();
    }
}

/// u8 in [0, 255] to f32 in [-1, 1].
pub fn to_unit_range(p: u8) -> f32 {
    p as f32 / 127.5 - 1.0
}

/// An RGB or grey image from `(C, H, W)` u8 pixels (C = 1 or 3).
pub(crate) fn to_rgb(pixels: &[u8], (c, h, w): (usize, usize, usize)) -> ImageBuffer<Rgb<u8>, Vec<u8>> {
    ImageBuffer::from_fn(w as u32, h as u32, |x, y| {
        let at = |ch: usize| pixels[ch.min(c - 1) * h * w + y as usize * w + x as usize];
        Rgb([at(0), at(1), at(2)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_flip_and_range() {
        // 1 channel, 3x4: values = 10 y + x.
        let px: Vec<u8> = (0..3).flat_map(|y| (0..4).map(move |x| 10 * y + x)).collect();
        assert_eq!(crop(&px, (1, 3, 4), 1, 1, 2, 2), [11, 12, 21, 22]);
        let mut f: Vec<f32> = px.iter().map(|&p| p as f32).collect();
        hflip(&mut f, (1, 3, 4));
        assert_eq!(&f[..4], &[3.0, 2.0, 1.0, 0.0]);
        assert_eq!((to_unit_range(0), to_unit_range(255)), (-1.0, 1.0));
        // Centre square of a 3x4 image is cols 0..3 ((4 - 3) / 2 = 0).
        assert_eq!(square_resize(&px, (1, 3, 4), 3), [0, 1, 2, 10, 11, 12, 20, 21, 22]);
        // A constant image stays constant through a resize.
        assert!(square_resize(&[7u8; 64], (1, 8, 8), 4).iter().all(|&p| p == 7));
    }

    #[test]
    fn celeba_crop_takes_the_official_window() {
        let (h, w) = (218, 178);
        let mut px = vec![0u8; h * w];
        for y in 57..185 {
            for x in 25..153 {
                px[y * w + x] = 200;
            }
        }
        let out = celeba_crop(&px, (1, h, w), 64);
        assert_eq!(out.len(), 64 * 64);
        assert!(out.iter().all(|&p| p == 200), "the crop must be exactly the marked face window");
    }
}
