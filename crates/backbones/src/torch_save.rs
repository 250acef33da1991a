//! Writes a state dict as `torch.save(state_dict, path)` does (PyTorch's zip format): so exported
//! weights load with `torch.load` in the official code. No crate writes this format; it is small:
//! a zip of `archive/data.pkl` (a protocol-2 pickle of an `OrderedDict` whose values rebuild
//! tensors from persistent storages), one `archive/data/<k>` file of raw little-endian bytes per
//! tensor, `archive/byteorder` and `archive/version`.

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Result, Tensor};

/// Writes `tensors` (name, tensor) in this order; F32, F16 and BF16 only.
pub fn write_pth(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| candle_core::Error::Msg(format!("writing {}: {e}", path.display()));
    let mut pkl = Pickle::default();
    pkl.op(PROTO, &[2]);
    pkl.global("collections", "OrderedDict");
    pkl.op(EMPTY_TUPLE, &[]).op(REDUCE, &[]).op(MARK, &[]);
    let mut storages = Vec::new();
    for (k, (name, t)) in tensors.iter().enumerate() {
        let storage = match t.dtype() {
            DType::F32 => "FloatStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            d => return Err(err(&format!("`{name}` is {d:?}: only f32, f16 and bf16 are written"))),
        };
        let dims = t.dims().to_vec();
        let strides: Vec<usize> = (0..dims.len()).map(|i| dims[i + 1..].iter().product()).collect();
        pkl.unicode(name);
        pkl.global("torch._utils", "_rebuild_tensor_v2");
        pkl.op(MARK, &[]);
        // The storage, as a persistent id: ('storage', torch.<Kind>Storage, key, 'cpu', numel).
        pkl.op(MARK, &[]).unicode("storage");
        pkl.global("torch", storage);
        pkl.unicode(&k.to_string()).unicode("cpu").int(t.elem_count());
        pkl.op(TUPLE, &[]).op(BINPERSID, &[]);
        pkl.int(0).ints_tuple(&dims).ints_tuple(&strides).op(NEWFALSE, &[]);
        pkl.global("collections", "OrderedDict");
        pkl.op(EMPTY_TUPLE, &[]).op(REDUCE, &[]).op(TUPLE, &[]).op(REDUCE, &[]);
        storages.push(t.flatten_all()?.contiguous()?);
    }
    pkl.op(SETITEMS, &[]).op(STOP, &[]);

    let file = std::fs::File::create(path).map_err(|e| err(&e))?;
    let mut zip = zip::ZipWriter::new(file);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        zip.start_file(format!("archive/{name}"), stored).map_err(|e| err(&e))?;
        zip.write_all(bytes).map_err(|e| err(&e))
    };
    put("data.pkl", &pkl.bytes)?;
    put("byteorder", b"little")?;
    for (k, t) in storages.iter().enumerate() {
        put(&format!("data/{k}"), &raw_bytes(t)?)?;
    }
    put("version", b"3\n")?;
    zip.finish().map_err(|e| err(&e))?.sync_all().map_err(|e| err(&e))
}

/// A tensor's elements as little-endian bytes.
fn raw_bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(match t.dtype() {
        DType::F32 => t.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => t.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        d => candle_core::bail!("no raw bytes for {d:?}"),
    })
}

const PROTO: u8 = 0x80;
const GLOBAL: u8 = b'c';
const EMPTY_TUPLE: u8 = b')';
const REDUCE: u8 = b'R';
const MARK: u8 = b'(';
const TUPLE: u8 = b't';
const BINPERSID: u8 = b'Q';
const BINUNICODE: u8 = b'X';
const BININT: u8 = b'J';
const NEWFALSE: u8 = 0x89;
const SETITEMS: u8 = b'u';
const STOP: u8 = b'.';
const LONG1: u8 = 0x8a;

#[derive(Default)]
struct Pickle {
    bytes: Vec<u8>,
}

impl Pickle {
    fn op(&mut self, code: u8, arg: &[u8]) -> &mut Self {
        self.bytes.push(code);
        self.bytes.extend_from_slice(arg);
        self
    }

    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(GLOBAL, format!("{module}\n{name}\n").as_bytes())
    }

    fn unicode(&mut self, s: &str) -> &mut Self {
        self.op(BINUNICODE, &(s.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(s.as_bytes());
        self
    }

    /// An int: BININT (4 bytes, signed) when it fits, else LONG1 (8 little-endian bytes).
    fn int(&mut self, v: usize) -> &mut Self {
        match i32::try_from(v) {
            Ok(v) => self.op(BININT, &v.to_le_bytes()),
            Err(_) => {
                self.op(LONG1, &[8]);
                self.bytes.extend_from_slice(&(v as i64).to_le_bytes());
                self
            }
        }
    }

    fn ints_tuple(&mut self, v: &[usize]) -> &mut Self {
        self.op(MARK, &[]);
        for &x in v {
            self.int(x);
        }
        self.op(TUPLE, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn written_state_dicts_read_back_with_candles_pickle_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pth");
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 24.0, &dev).unwrap().reshape((2, 3, 4)).unwrap();
        let b = Tensor::new(&[1.5f32, -2.0], &dev).unwrap().to_dtype(DType::BF16).unwrap();
        let s = Tensor::new(3.25f32, &dev).unwrap();
        let tensors =
            vec![("blocks.0.weight".to_string(), a.clone()), ("gate".to_string(), b.clone()), ("scale".to_string(), s)];
        write_pth(&path, &tensors).unwrap();
        let mut back = candle_core::pickle::read_all(&path).unwrap();
        back.sort_by(|a, b| a.0.cmp(&b.0)); // candle's reader does not keep the order
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["blocks.0.weight", "gate", "scale"]);
        assert_eq!(back[0].1.dims(), &[2, 3, 4]);
        assert_eq!(
            back[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert_eq!(back[1].1.dtype(), DType::BF16);
        assert_eq!(back[1].1.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), [1.5, -2.0]);
        assert_eq!(back[2].1.dims(), &[] as &[usize]);
        assert_eq!(back[2].1.to_scalar::<f32>().unwrap(), 3.25);
        let u8s = [("x".to_string(), a.to_dtype(DType::U8).unwrap())];
        assert!(write_pth(&path, &u8s).unwrap_err().to_string().contains("`x` is U8"));
    }
}
