//! Where `scalelong sample` writes: a PNG grid, one PNG per image (what pytorch-fid, clean-fid and
//! torch-fidelity read), guided-diffusion's `.npz` (`arr_0`, (N, H, W, C) uint8) and the raw
//! samples as `.npy`. Files are written as batches arrive; an existing output is never replaced
//! without `--overwrite`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use scalelong_data::to_uint8;

use crate::output::refuse_existing;

pub struct Outputs {
    pub grid: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub npz: Option<PathBuf>,
    pub tensor: Option<PathBuf>,
    /// Batches in [-1, 1], kept for the grid and the raw tensor.
    kept: Vec<Tensor>,
    /// Batches as (B, H, W, C) uint8, kept for the npz.
    bytes: Vec<Tensor>,
    written: usize,
}

impl Outputs {
    /// Refuses outputs that exist (an image folder: one that holds PNGs) unless `overwrite`.
    pub fn new(
        grid: Option<PathBuf>,
        dir: Option<PathBuf>,
        npz: Option<PathBuf>,
        tensor: Option<PathBuf>,
        overwrite: bool,
    ) -> Result<Self> {
        if !overwrite {
            for (flag, path) in [("--out", &grid), ("--npz", &npz), ("--save-tensor", &tensor)] {
                if let Some(p) = path {
                    refuse_existing(flag, p, overwrite)?;
                }
            }
            if let Some(d) = &dir {
                let pngs = std::fs::read_dir(d).into_iter().flatten().flatten();
                if pngs.map(|e| e.path()).any(|p| p.extension().is_some_and(|e| e == "png")) {
                    bail!("--out-dir {}: the folder holds PNG files; pass --overwrite to write over them", d.display());
                }
            }
        }
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(Self { grid, dir, npz, tensor, kept: vec![], bytes: vec![], written: 0 })
    }

    /// Whether every image must be kept in memory (the grid and the raw tensor need them all).
    pub fn keeps_samples(&self) -> bool {
        self.grid.is_some() || self.tensor.is_some()
    }

    /// One batch of samples in [-1, 1], (B, C, H, W).
    pub fn take(&mut self, batch: Tensor) -> Result<()> {
        let u8s = to_uint8(&batch)?;
        if let Some(dir) = &self.dir {
            for i in 0..u8s.dim(0)? {
                scalelong_data::save_image(&u8s.get(i)?, &dir.join(format!("{:06}.png", self.written + i)))?;
            }
        }
        if self.npz.is_some() {
            self.bytes.push(u8s.permute((0, 2, 3, 1))?.contiguous()?);
        }
        self.written += batch.dim(0)?;
        if self.keeps_samples() {
            self.kept.push(batch);
        }
        Ok(())
    }

    /// Writes what needs every image, and says where everything went.
    pub fn finish(self) -> Result<()> {
        if let Some(d) = &self.dir {
            println!("wrote {} PNGs to {}", self.written, d.display());
        }
        if let Some(p) = &self.npz {
            let all = Tensor::cat(&self.bytes, 0)?;
            // np.savez(path, arr): one array named arr_0.
            Tensor::write_npz(&[("arr_0", &all)], p).with_context(|| format!("writing {}", p.display()))?;
            println!("wrote {} ({:?} uint8 as arr_0)", p.display(), all.dims());
        }
        if self.kept.is_empty() {
            return Ok(());
        }
        let images = Tensor::cat(&self.kept, 0)?;
        if let Some(p) = &self.grid {
            let cols = (images.dim(0)? as f64).sqrt().ceil() as usize;
            scalelong_data::save_grid(&images, p, cols)?;
            println!("wrote {}", p.display());
        }
        if let Some(p) = &self.tensor {
            images.write_npy(p).with_context(|| format!("writing {}", p.display()))?;
            println!("wrote {}", p.display());
        }
        Ok(())
    }
}
