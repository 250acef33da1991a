//! TensorBoard event files (`[log] tensorboard = true`): scalars and PNG images, so
//! `tensorboard --logdir runs/` shows a run as it does for diffusers users. The format is small:
//! TFRecords (length, masked CRC-32C of the length, an `Event` protobuf, masked CRC-32C of it),
//! the first record naming the file version. No maintained crate writes it.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Appends events to `events.out.tfevents.<seconds>.scalelong` in a run folder (a new file per
/// process, as TensorBoard expects; it reads every file in the folder).
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let path = dir.join(format!("events.out.tfevents.{}.scalelong", secs.as_secs()));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let mut w = Self { file, path };
        let mut event = event_header(0);
        field_bytes(&mut event, 3, b"brain.Event:2");
        w.record(&event)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scalars `(tag, value)` at `step`; non-finite values are left out.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> std::io::Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values.iter().filter(|(_, v)| v.is_finite()) {
            let mut value = Vec::new();
            field_bytes(&mut value, 1, tag.as_bytes());
            key(&mut value, 2, 5);
            value.extend_from_slice(&(*v as f32).to_le_bytes());
            field_bytes(&mut summary, 1, &value);
        }
        self.summary(step, &summary)
    }

    /// A PNG image (`channels` 1 = grey, 3 = RGB) under `tag` at `step`.
    pub fn image(
        &mut self,
        step: u64,
        tag: &str,
        png: &[u8],
        (height, width, channels): (u32, u32, u32),
    ) -> std::io::Result<()> {
        let mut image = Vec::new();
        for (field, v) in [(1, height), (2, width), (3, channels)] {
            key(&mut image, field, 0);
            varint(&mut image, v as u64);
        }
        field_bytes(&mut image, 4, png);
        let mut value = Vec::new();
        field_bytes(&mut value, 1, tag.as_bytes());
        field_bytes(&mut value, 4, &image);
        let mut summary = Vec::new();
        field_bytes(&mut summary, 1, &value);
        self.summary(step, &summary)
    }

    fn summary(&mut self, step: u64, summary: &[u8]) -> std::io::Result<()> {
        let mut event = event_header(step);
        field_bytes(&mut event, 5, summary);
        self.record(&event)
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file.write_all(&rec)?;
        self.file.flush()
    }
}

/// An `Event` with `wall_time` (field 1, double) and `step` (field 2, int64).
fn event_header(step: u64) -> Vec<u8> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut e = Vec::new();
    key(&mut e, 1, 1);
    e.extend_from_slice(&secs.as_secs_f64().to_le_bytes());
    key(&mut e, 2, 0);
    varint(&mut e, step);
    e
}

/// TFRecord's checksum: CRC-32C, rotated and offset.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c::crc32c(bytes);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, ((field as u64) << 3) | wire as u64);
}

fn field_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(buf, field, 2);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of an event file, their checksums checked.
    fn records(path: &Path) -> Vec<Vec<u8>> {
        let bytes = std::fs::read(path).unwrap();
        let (mut at, mut out) = (0, Vec::new());
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), masked_crc(len_bytes));
            let data = &bytes[at + 12..at + 12 + len];
            assert_eq!(u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()), masked_crc(data));
            out.push(data.to_vec());
            at += 16 + len;
        }
        out
    }

    #[test]
    fn known_checksum_and_records_read_back() {
        // CRC-32C of "123456789" is 0xE3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(7, &[("loss", 0.5), ("fid", f64::NAN)]).unwrap();
        w.image(7, "samples", b"\x89PNG", (2, 3, 1)).unwrap();
        let r = records(w.path());
        assert_eq!(r.len(), 3);
        assert!(r[0].windows(13).any(|s| s == b"brain.Event:2"));
        // Event: wall_time (tag 0x09, 8 bytes), step 7 (0x10 0x07), summary (0x2a ...).
        assert_eq!((r[1][0], r[1][9], r[1][10], r[1][11]), (0x09, 0x10, 7, 0x2a));
        // One value: tag "loss" and simple_value 0.5 as f32; the NaN is left out.
        let tail = &r[1][r[1].len() - 5..];
        assert_eq!(tail, [0x15, 0, 0, 0, 0x3f]);
        assert!(r[1].windows(4).any(|s| s == b"loss") && !r[1].windows(3).any(|s| s == b"fid"));
        // Image: height 2, width 3, colorspace 1, then the PNG bytes.
        assert!(r[2].windows(6).any(|s| s == [0x08, 2, 0x10, 3, 0x18, 1]));
        assert!(r[2].ends_with(b"\x89PNG"));
    }
}
