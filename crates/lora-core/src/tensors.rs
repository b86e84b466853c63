//! Reading and writing `.safetensors` files on the host, with errors that name the file, the
//! key and the shapes. Model loaders take tensors out one by one, so that what is left over at
//! the end is exactly the set of unexpected keys.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: tensor `{key}` is missing")]
    Missing { path: PathBuf, key: String },
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    Shape { path: PathBuf, key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: tensor `{key}` has dtype {dtype}, which is not supported here")]
    Dtype { path: PathBuf, key: String, dtype: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error(
        "refusing to write {path}: tensor `{key}` holds {count} non-finite value(s) (NaN or ±inf; \
         a diverged training or unlearning — lower the learning rate or the loss weights)"
    )]
    NonFinite { path: PathBuf, key: String, count: usize },
}

/// Host copy of one tensor: floats are widened to f32, integers to i64.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self { shape, data: HostData::F32(data) }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    pub fn to_i64(&self) -> Vec<i64> {
        match &self.data {
            HostData::F32(v) => v.iter().map(|&x| x as i64).collect(),
            HostData::I64(v) => v.clone(),
        }
    }

    pub fn to_tensor<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(self.to_f32(), self.shape.clone()), device)
    }

    pub fn to_int_tensor<B: Backend, const D: usize>(
        &self,
        device: &B::Device,
    ) -> Tensor<B, D, Int> {
        Tensor::from_data(TensorData::new(self.to_i64(), self.shape.clone()), device)
    }

    pub fn from_tensor<B: Backend, const D: usize>(t: Tensor<B, D>) -> Self {
        let shape = t.dims().to_vec();
        let data = t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data");
        Self::f32(shape, data)
    }
}

/// All tensors of one safetensors file, keyed by name.
#[derive(Debug, Clone)]
pub struct TensorFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, HostTensor>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TensorFileError> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path)
            .map_err(|source| TensorFileError::Io { path: path.clone(), source })?;
        Self::from_bytes(&bytes, path)
    }

    pub fn from_bytes(bytes: &[u8], path: PathBuf) -> Result<Self, TensorFileError> {
        // safetensors' own errors name no tensor ("invalid shape, data type, or offset for
        // tensor"): the header is read again to say which entry is at fault.
        let format = |e: safetensors::SafeTensorError| TensorFileError::Format {
            path: path.clone(),
            reason: match first_bad_entry(bytes) {
                Some(why) => format!("{e}: {why}"),
                None => e.to_string(),
            },
        };
        let st = SafeTensors::deserialize(bytes).map_err(format)?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(format)?;
        let mut tensors = BTreeMap::new();
        for (key, view) in st.tensors() {
            let raw = view.data();
            let data = match view.dtype() {
                Dtype::F32 => HostData::F32(le_chunks::<4>(raw).map(f32::from_le_bytes).collect()),
                Dtype::F64 => HostData::F32(
                    le_chunks::<8>(raw).map(|b| f64::from_le_bytes(b) as f32).collect(),
                ),
                Dtype::F16 => HostData::F32(
                    le_chunks::<2>(raw).map(|b| f16_to_f32(u16::from_le_bytes(b))).collect(),
                ),
                Dtype::BF16 => HostData::F32(
                    le_chunks::<2>(raw)
                        .map(|b| f32::from_bits((u16::from_le_bytes(b) as u32) << 16))
                        .collect(),
                ),
                Dtype::I64 => HostData::I64(le_chunks::<8>(raw).map(i64::from_le_bytes).collect()),
                Dtype::I32 => HostData::I64(
                    le_chunks::<4>(raw).map(|b| i32::from_le_bytes(b) as i64).collect(),
                ),
                Dtype::U8 => HostData::I64(raw.iter().map(|&b| b as i64).collect()),
                Dtype::BOOL => HostData::I64(raw.iter().map(|&b| (b != 0) as i64).collect()),
                other => {
                    return Err(TensorFileError::Dtype { path, key, dtype: format!("{other:?}") });
                }
            };
            tensors.insert(key, HostTensor { shape: view.shape().to_vec(), data });
        }
        Ok(Self { path, tensors, metadata: meta.metadata().clone().unwrap_or_default() })
    }

    pub fn get(&self, key: &str) -> Result<&HostTensor, TensorFileError> {
        self.tensors.get(key).ok_or_else(|| TensorFileError::Missing {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    /// Removes `key` and checks its shape.
    pub fn take(&mut self, key: &str, expected: &[usize]) -> Result<HostTensor, TensorFileError> {
        let t = self.tensors.remove(key).ok_or_else(|| TensorFileError::Missing {
            path: self.path.clone(),
            key: key.to_string(),
        })?;
        if t.shape != expected {
            return Err(TensorFileError::Shape {
                path: self.path.clone(),
                key: key.to_string(),
                expected: expected.to_vec(),
                found: t.shape,
            });
        }
        Ok(t)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }
}

/// The first header entry whose dtype, shape and offsets do not fit together or the file, said
/// in words; `None` when the header cannot be read or every entry fits.
fn first_bad_entry(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    let data_len = bytes.len() - 8 - n;
    let mut entries: Vec<(&String, &serde_json::Value)> =
        header.iter().filter(|(k, _)| k.as_str() != "__metadata__").collect();
    entries.sort_by_key(|(_, v)| v["data_offsets"][0].as_u64().unwrap_or(u64::MAX));
    let mut expected_start = 0u64;
    for (key, v) in entries {
        let dtype = v["dtype"].as_str().unwrap_or("?");
        let size: u64 = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "U8" | "I8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            _ => return Some(format!("tensor `{key}` has dtype {dtype}")),
        };
        let shape: Option<Vec<u64>> =
            v["shape"].as_array().map(|a| a.iter().filter_map(|d| d.as_u64()).collect());
        let offsets: Option<Vec<u64>> =
            v["data_offsets"].as_array().map(|a| a.iter().filter_map(|d| d.as_u64()).collect());
        let (Some(shape), Some(offsets)) = (shape, offsets) else {
            return Some(format!("tensor `{key}` has no valid shape or data_offsets"));
        };
        let [start, end] = offsets[..] else {
            return Some(format!("tensor `{key}` has data_offsets {offsets:?}"));
        };
        let wanted = shape.iter().try_fold(size, |p, &d| p.checked_mul(d));
        if start != expected_start
            || end < start
            || Some(end - start) != wanted
            || end as usize > data_len
        {
            return Some(format!(
                "tensor `{key}` ({dtype}, shape {shape:?}) has data_offsets [{start}, {end}]: \
                 {} bytes expected at offset {expected_start}, the data section holds {data_len}",
                wanted.map_or("more than 2^64".to_string(), |w| w.to_string())
            ));
        }
        expected_start = end;
    }
    None
}

fn le_chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|c| c.try_into().expect("exact chunk"))
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: renormalise.
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Writes f32 tensors as a safetensors file, atomically: a temporary file in the same folder is
/// renamed over `path` only once it is complete.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), TensorFileError> {
    let werr = |reason: String| TensorFileError::Write { path: path.to_path_buf(), reason };
    // A model or adapter with NaN or infinite weights is never saved: it would replace a good
    // result with a useless one that loads without complaint.
    for (key, t) in tensors {
        if let HostData::F32(v) = &t.data {
            let count = v.iter().filter(|x| !x.is_finite()).count();
            if count > 0 {
                return Err(TensorFileError::NonFinite {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    count,
                });
            }
        }
    }
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            let b: Vec<u8> = t.to_f32().iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), b, t.shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, b, s)| {
            safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).map(|v| (k.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| werr(e.to_string()))?;
    let buf = safetensors::serialize(views, metadata).map_err(|e| werr(e.to_string()))?;
    write_atomic(path, &sorted_header(buf))
}

/// safetensors writes `__metadata__` in hash order, so the same tensors and metadata could give
/// other bytes in another process; runs compare files by SHA-256. The header is rewritten with its
/// keys sorted: the same JSON, the same length, the data untouched. A header that does not parse
/// is left as written.
fn sorted_header(mut buf: Vec<u8>) -> Vec<u8> {
    let Some(len) = buf.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))) else {
        return buf;
    };
    let Some(header) = usize::try_from(len).ok().and_then(|n| buf.get(8..8 + n)) else {
        return buf;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(header) else { return buf };
    let Ok(sorted) = serde_json::to_vec(&value) else { return buf };
    if sorted.len() > header.len() {
        return buf;
    }
    let n = header.len();
    buf[8..8 + sorted.len()].copy_from_slice(&sorted);
    buf[8 + sorted.len()..8 + n].fill(b' ');
    buf
}

/// The most bytes a configuration file (`config.json`, `adapter_config.json`, a run's TOML) may
/// hold: hundreds of times any real one, far less than a wrong path to a data set or a device.
pub const CONFIG_MAX_BYTES: u64 = 16 << 20;

/// Reads a text file of at most `max` bytes; a larger one is an error (`InvalidData`) rather than
/// read whole into memory.
pub fn read_text_limited(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes: not a configuration file"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8: {e}"))
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a reader never sees a
/// half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TensorFileError> {
    let werr = |reason: String| TensorFileError::Write { path: path.to_path_buf(), reason };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| werr(e.to_string()))?;
    let name = path.file_name().ok_or_else(|| werr("no file name".into()))?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    crate::fault::write_point("writing", &tmp);
    std::fs::write(&tmp, bytes).map_err(|e| werr(e.to_string()))?;
    crate::fault::write_point("renaming into place", path);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        werr(e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn configuration_files_are_read_only_up_to_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{\"a\": 1}").unwrap();
        assert_eq!(read_text_limited(&path, 8).unwrap(), "{\"a\": 1}");
        let e = read_text_limited(&path, 7).unwrap_err();
        assert!(e.to_string().contains("larger than 7 bytes"), "{e}");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(read_text_limited(&path, 8).unwrap_err().to_string().contains("UTF-8"));
    }

    #[test]
    fn the_same_tensors_and_metadata_give_the_same_bytes() {
        let mut tensors = BTreeMap::new();
        tensors.insert("b".to_string(), HostTensor::f32(vec![2], vec![1.0, 2.0]));
        tensors.insert("a".to_string(), HostTensor::f32(vec![1, 3], vec![1.0, 2.0, 3.0]));
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        // Each map has its own hash seed, so its iteration order is its own.
        for i in 0..4 {
            let metadata: HashMap<String, String> =
                (0..12).map(|k| (format!("key{k}"), format!("value {k}"))).collect();
            let path = dir.path().join(format!("{i}.safetensors"));
            write_safetensors(&path, &tensors, Some(metadata)).unwrap();
            files.push(std::fs::read(&path).unwrap());
        }
        assert!(files.windows(2).all(|w| w[0] == w[1]), "identical bytes");
        let back = TensorFile::open(dir.path().join("0.safetensors")).unwrap();
        assert_eq!(back.tensors, tensors);
        assert_eq!(back.metadata.len(), 12);
        assert_eq!(back.metadata["key11"], "value 11");
        let header_len = u64::from_le_bytes(files[0][..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&files[0][8..8 + header_len]).unwrap();
        let keys: Vec<usize> =
            (0..12).map(|k| header.find(&format!("\"key{k}\"")).unwrap()).collect();
        let mut sorted_by_name: Vec<(String, usize)> =
            (0..12).map(|k| (format!("key{k}"), keys[k])).collect();
        sorted_by_name.sort();
        assert!(sorted_by_name.windows(2).all(|w| w[0].1 < w[1].1), "keys sorted: {header}");
    }

    #[test]
    fn a_bad_header_entry_is_named() {
        let mut tensors = BTreeMap::new();
        tensors.insert("a".to_string(), HostTensor::f32(vec![2], vec![1.0, 2.0]));
        tensors.insert("encoder.weight".to_string(), HostTensor::f32(vec![3], vec![1.0, 2.0, 3.0]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        write_safetensors(&path, &tensors, None).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        // Claim a larger shape for one tensor (same header length).
        let (from, to) = (b"\"shape\":[3]", b"\"shape\":[4]");
        let at =
            bytes.windows(from.len()).position(|w| w == from).expect("the shape in the header");
        bytes[at..at + to.len()].copy_from_slice(to);
        let e = TensorFile::from_bytes(&bytes, path.clone()).unwrap_err().to_string();
        assert!(
            e.contains("m.safetensors")
                && e.contains("`encoder.weight`")
                && e.contains("shape [4]"),
            "{e}"
        );
    }

    #[test]
    fn non_finite_tensors_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let mut tensors = BTreeMap::new();
        tensors.insert("good".to_string(), HostTensor::f32(vec![2], vec![1.0, 2.0]));
        write_safetensors(&path, &tensors, None).unwrap();
        let before = std::fs::read(&path).unwrap();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            tensors
                .insert("layer.weight".to_string(), HostTensor::f32(vec![3], vec![0.0, bad, bad]));
            let e = write_safetensors(&path, &tensors, None).unwrap_err();
            assert!(
                matches!(&e, TensorFileError::NonFinite { key, count: 2, .. } if key == "layer.weight"),
                "{e}"
            );
            assert!(e.to_string().contains("model.safetensors"), "{e}");
        }
        // The earlier good file is untouched.
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever bytes a file holds, reading it returns a value or an error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = TensorFile::from_bytes(&bytes, PathBuf::from("fuzz.safetensors"));
        }

        /// A valid header followed by a corrupted or cut body is an error naming the file.
        #[test]
        fn corrupted_valid_files_are_errors(n in 1usize..40, cut in 0usize..200, flip in any::<u8>()) {
            let mut m = BTreeMap::new();
            m.insert("w".to_string(), HostTensor::f32(vec![n], (0..n).map(|i| i as f32).collect()));
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("t.safetensors");
            write_safetensors(&p, &m, None).unwrap();
            let mut bytes = std::fs::read(&p).unwrap();
            let cut = cut.min(bytes.len());
            bytes.truncate(bytes.len() - cut);
            if let Some(b) = bytes.get_mut(9) { *b ^= flip; }
            if let Err(e) = TensorFile::from_bytes(&bytes, p.clone()) {
                prop_assert!(e.to_string().contains("t.safetensors"));
            }
        }

        /// Shapes and values survive a write/read cycle exactly.
        #[test]
        fn write_read_round_trip(shape in proptest::collection::vec(1usize..5, 0..4), seed in any::<u32>()) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| f32::from_bits(seed.wrapping_mul(2654435761).wrapping_add(i as u32) & 0x7f7f_ffff)).collect();
            let mut m = BTreeMap::new();
            m.insert("x".to_string(), HostTensor::f32(shape.clone(), data));
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("r.safetensors");
            write_safetensors(&p, &m, None).unwrap();
            prop_assert_eq!(TensorFile::open(&p).unwrap().tensors, m);
        }
    }

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn truncated_file_is_a_format_error_naming_the_file() {
        let err =
            TensorFile::from_bytes(&[1, 2, 3], PathBuf::from("x/model.safetensors")).unwrap_err();
        assert!(matches!(err, TensorFileError::Format { .. }));
        assert!(err.to_string().contains("x/model.safetensors"));
    }

    #[test]
    fn round_trip_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let mut m = BTreeMap::new();
        m.insert(
            "a.weight".to_string(),
            HostTensor::f32(vec![2, 3], vec![1.0, -2.5, 3.0, f32::MIN_POSITIVE, 0.0, 7.0]),
        );
        write_safetensors(&p, &m, None).unwrap();
        let back = TensorFile::open(&p).unwrap();
        assert_eq!(back.tensors, m);
        let mut back = back;
        let err = back.take("a.weight", &[3, 2]).unwrap_err();
        assert!(err.to_string().contains("a.weight") && err.to_string().contains("[2, 3]"));
    }
}
