//! pytorch-fid's preprocessing: uint8 images -> [0, 1] -> bilinear resize to 299x299
//! (`F.interpolate(..., mode='bilinear', align_corners=False)`) -> 2x - 1; grayscale repeated to
//! three channels.

use candle_core::{DType, Result, Tensor};

use crate::FidInception;

/// The network's input side.
pub const SIZE: usize = 299;

/// The `(out, inp)` matrix of PyTorch's bilinear interpolation along one axis (align_corners =
/// False, no antialiasing), its weights computed in float32 as PyTorch's CPU kernel does.
fn bilinear_matrix(out: usize, inp: usize) -> Vec<f32> {
    let scale = inp as f32 / out as f32;
    let mut m = vec![0f32; out * inp];
    for d in 0..out {
        let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src as usize).min(inp - 1);
        let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
        let l1 = src - i0 as f32;
        m[d * inp + i0] += 1.0 - l1;
        m[d * inp + i1] += l1;
    }
    m
}

/// Network inputs `(B, 3, 299, 299)` in [-1, 1] from uint8 images `(B, C, H, W)`, C = 1 or 3.
pub fn network_input(images: &Tensor) -> Result<Tensor> {
    let (_, c, h, w) = images.dims4()?;
    if images.dtype() != DType::U8 || !(c == 1 || c == 3) {
        candle_core::bail!(
            "FID images: expected uint8 (B, 1 or 3, H, W), got {:?} {:?}",
            images.dtype(),
            images.dims()
        );
    }
    let dev = images.device();
    let x = (images.to_dtype(DType::F32)? / 255.0)?;
    let x = if c == 1 { x.repeat((1, 3, 1, 1))? } else { x };
    let rows = Tensor::from_vec(bilinear_matrix(SIZE, h), (SIZE, h), dev)?;
    let cols = Tensor::from_vec(bilinear_matrix(SIZE, w), (SIZE, w), dev)?.t()?;
    let resized = rows.broadcast_matmul(&x.contiguous()?)?.broadcast_matmul(&cols.contiguous()?)?;
    (resized * 2.0)? - 1.0
}

impl FidInception {
    /// Pool3 features `(B, 2048)` of uint8 images `(B, C, H, W)` through pytorch-fid's pipeline.
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        self.forward(&network_input(&images.to_device(self.device())?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_weights_as_pytorch() {
        // Upsampling 2 -> 4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (last index clamped).
        let m = bilinear_matrix(4, 2);
        assert_eq!(m, [1.0, 0.0, 0.75, 0.25, 0.25, 0.75, 0.0, 1.0]);
        // Every row sums to one; an identity size is the identity.
        assert!(bilinear_matrix(299, 28).chunks(28).all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-6));
        let id = bilinear_matrix(3, 3);
        assert_eq!(id, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    }
}
