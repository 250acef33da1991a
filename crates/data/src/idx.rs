//! MNIST / Fashion-MNIST IDX files, raw or gzipped.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::dataset::{data_err, ImageDataset, Result};

/// Reads an IDX file (gzipped or not) from bytes: `(dims, data)`.
pub fn parse_idx(name: &str, bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| data_err!("{name}: bad gzip data: {e}"))?;
        out
    } else {
        bytes.to_vec()
    };
    if raw.len() < 4 || raw[0] != 0 || raw[1] != 0 {
        return Err(data_err!("{name}: not an IDX file (expected magic 00 00 08 NDIM)"));
    }
    if raw[2] != 0x08 {
        return Err(data_err!("{name}: IDX element type {:#04x}, expected 0x08 (unsigned byte)", raw[2]));
    }
    let ndim = raw[3] as usize;
    let header = 4 + 4 * ndim;
    if raw.len() < header {
        return Err(data_err!("{name}: truncated IDX header"));
    }
    let dims: Vec<usize> =
        (0..ndim).map(|i| u32::from_be_bytes(raw[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let count: usize = dims.iter().product();
    if raw.len() - header != count {
        return Err(data_err!(
            "{name}: IDX dims {dims:?} need {count} bytes of data, the file has {}",
            raw.len() - header
        ));
    }
    Ok((dims, raw[header..].to_vec()))
}

/// An images/labels IDX pair as a dataset (labels 0..=max).
pub fn from_idx_bytes(source: &str, images: (&str, &[u8]), labels: (&str, &[u8])) -> Result<ImageDataset> {
    let (idims, pixels) = parse_idx(images.0, images.1)?;
    let (ldims, labels_raw) = parse_idx(labels.0, labels.1)?;
    if idims.len() != 3 || ldims.len() != 1 || idims[0] != ldims[0] {
        return Err(data_err!(
            "{source}: expected images (N, H, W) and labels (N), got {} {idims:?} and {} {ldims:?}",
            images.0,
            labels.0
        ));
    }
    let labels: Vec<u32> = labels_raw.iter().map(|&l| l as u32).collect();
    let num_classes = labels.iter().max().map_or(0, |&m| m as usize + 1).max(10);
    ImageDataset::new(source, pixels, (1, idims[1], idims[2]), Some(labels), num_classes)
}

/// Reads `<prefix>-images-idx3-ubyte[.gz]` and `<prefix>-labels-idx1-ubyte[.gz]` from `dir`
/// (`prefix` = `train` or `t10k`).
pub fn load_dir(dir: &Path, prefix: &str) -> Result<ImageDataset> {
    let find = |kind: &str| -> Result<PathBuf> {
        let base = dir.join(format!("{prefix}-{kind}"));
        let gz = dir.join(format!("{prefix}-{kind}.gz"));
        [base.clone(), gz.clone()]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| data_err!("{}: missing {} (or {})", dir.display(), base.display(), gz.display()))
    };
    let (ip, lp) = (find("images-idx3-ubyte")?, find("labels-idx1-ubyte")?);
    let read = |p: &Path| std::fs::read(p).map_err(|e| data_err!("{}: {e}", p.display()));
    from_idx_bytes(
        &format!("IDX {} ({prefix})", dir.display()),
        (&ip.display().to_string(), &read(&ip)?),
        (&lp.display().to_string(), &read(&lp)?),
    )
}

/// Writes an IDX file of u8 data (for tests and tools).
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> std::io::Result<()> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    std::fs::write(path, out)
}
