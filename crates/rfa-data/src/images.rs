//! Image data sets in their standard formats: IDX (MNIST, Fashion-MNIST; gzipped or not),
//! CIFAR-10's binary batches, and image folders (one sub-folder per class, JPEG or PNG).

use std::path::{Path, PathBuf};

use crate::{DataError, gunzip_if_gz, read_maybe_gz};

/// Images as bytes, `[n, channels, height, width]` row-major, with integer labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    pub pixels: Vec<u8>,
    pub labels: Vec<usize>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub class_names: Vec<String>,
    /// Where it was read from, for messages and reports.
    pub source: String,
}

impl ImageDataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.image_size();
        &self.pixels[i * s..(i + 1) * s]
    }

    /// The samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_size());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        Self {
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
            source: self.source.clone(),
            ..*self
        }
    }

    /// Number of samples of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.num_classes()];
        self.labels.iter().for_each(|&l| c[l] += 1);
        c
    }

    fn check_labels(self) -> Result<Self, DataError> {
        let n = self.num_classes();
        if let Some((i, &l)) = self.labels.iter().enumerate().find(|(_, l)| **l >= n) {
            return Err(DataError::Format {
                path: self.source.clone().into(),
                reason: format!("label {l} of sample {i} is out of range for {n} classes"),
            });
        }
        Ok(self)
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// An IDX images file (magic 0x00000803: u8, 3 dims) and its labels file (0x00000801).
/// `class_names` gives the classes; labels must be below its length.
pub fn load_idx(
    images: &Path,
    labels: &Path,
    class_names: Vec<String>,
) -> Result<ImageDataset, DataError> {
    parse_idx(images, read_maybe_gz(images)?, labels, read_maybe_gz(labels)?, class_names)
}

/// [`load_idx`] on bytes already in memory (gzipped or not), e.g. a data set embedded in a
/// binary; `images` and `labels` name them in errors and in the data set's source.
pub fn parse_idx(
    images: &Path,
    image_bytes: Vec<u8>,
    labels: &Path,
    label_bytes: Vec<u8>,
    class_names: Vec<String>,
) -> Result<ImageDataset, DataError> {
    let img = gunzip_if_gz(image_bytes, images)?;
    let lab = gunzip_if_gz(label_bytes, labels)?;
    let fmt = |p: &Path, reason: String| DataError::Format { path: p.to_path_buf(), reason };
    if img.len() < 16 || be_u32(&img, 0) != 0x803 {
        return Err(fmt(
            images,
            "not an IDX image file (expected magic 0x00000803: unsigned bytes, 3 dimensions)"
                .into(),
        ));
    }
    if lab.len() < 8 || be_u32(&lab, 0) != 0x801 {
        return Err(fmt(
            labels,
            "not an IDX label file (expected magic 0x00000801: unsigned bytes, 1 dimension)".into(),
        ));
    }
    let (n, h, w) = (be_u32(&img, 4) as usize, be_u32(&img, 8) as usize, be_u32(&img, 12) as usize);
    if h == 0 || w == 0 {
        return Err(fmt(
            images,
            format!("header says the images are {h}×{w}: rows and columns must be at least 1"),
        ));
    }
    let expected = n.checked_mul(h).and_then(|x| x.checked_mul(w)).and_then(|x| x.checked_add(16));
    let Some(expected) = expected else {
        return Err(fmt(
            images,
            format!("header says {n} images of {h}×{w}: more bytes than can be addressed"),
        ));
    };
    if img.len() != expected {
        return Err(fmt(
            images,
            format!(
                "header says {n} images of {h}×{w} ({expected} bytes), the file has {} bytes (truncated or corrupt)",
                img.len()
            ),
        ));
    }
    let nl = be_u32(&lab, 4) as usize;
    if nl != n || lab.len() != 8 + nl {
        return Err(fmt(
            labels,
            format!(
                "{} labels for {n} images in {}",
                lab.len().saturating_sub(8),
                images.display()
            ),
        ));
    }
    ImageDataset {
        pixels: img[16..].to_vec(),
        labels: lab[8..].iter().map(|&l| l as usize).collect(),
        channels: 1,
        height: h,
        width: w,
        class_names,
        source: images.display().to_string(),
    }
    .check_labels()
}

/// Fashion-MNIST's class names.
pub fn fashion_mnist_classes() -> Vec<String> {
    [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    .map(String::from)
    .to_vec()
}

/// CIFAR-10's class names.
pub fn cifar10_classes() -> Vec<String> {
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        .map(String::from)
        .to_vec()
}

/// CIFAR-10 binary batches (`data_batch_N.bin`, `test_batch.bin`): records of one label byte
/// and 3 × 32 × 32 pixel bytes (channel-major).
pub fn load_cifar10_bin(files: &[PathBuf]) -> Result<ImageDataset, DataError> {
    let read = files
        .iter()
        .map(|f| Ok((f.clone(), std::fs::read(f).map_err(|e| DataError::io(f, e))?)))
        .collect::<Result<Vec<_>, DataError>>()?;
    parse_cifar10_bin(&read)
}

/// [`load_cifar10_bin`] on files already read, each with the path that names it in errors.
pub fn parse_cifar10_bin(files: &[(PathBuf, Vec<u8>)]) -> Result<ImageDataset, DataError> {
    const REC: usize = 1 + 3 * 32 * 32;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (f, b) in files {
        if b.is_empty() || b.len() % REC != 0 {
            return Err(DataError::Format {
                path: f.clone(),
                reason: format!(
                    "{} bytes is not a whole number of {REC}-byte CIFAR-10 records",
                    b.len()
                ),
            });
        }
        for rec in b.chunks_exact(REC) {
            labels.push(rec[0] as usize);
            pixels.extend_from_slice(&rec[1..]);
        }
    }
    let source = files.first().map(|(p, _)| p.display().to_string()).unwrap_or_default();
    ImageDataset {
        pixels,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        class_names: cifar10_classes(),
        source,
    }
    .check_labels()
}

/// An image folder: `dir/<class>/<file>.{jpg,jpeg,png}`, classes in sorted order. All images
/// must have the same size; grey images are read as one channel when all are grey, else every
/// image is converted to RGB.
pub fn load_image_folder(dir: &Path) -> Result<ImageDataset, DataError> {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::Format {
            path: dir.to_path_buf(),
            reason: "no class sub-folders".into(),
        });
    }
    let mut files = Vec::new();
    for (c, cdir) in classes.iter().enumerate() {
        let mut fs: Vec<PathBuf> = std::fs::read_dir(cdir)
            .map_err(|e| DataError::io(cdir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                    matches!(x.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
                })
            })
            .collect();
        fs.sort();
        files.extend(fs.into_iter().map(|f| (c, f)));
    }
    if files.is_empty() {
        return Err(DataError::Format {
            path: dir.to_path_buf(),
            reason: "no .jpg/.jpeg/.png images in the class folders".into(),
        });
    }
    let decoded: Vec<(usize, image::DynamicImage, &PathBuf)> = files
        .iter()
        .map(|(c, f)| {
            image::open(f).map(|im| (*c, im, f)).map_err(|e| DataError::Format {
                path: f.clone(),
                reason: format!("cannot decode image: {e}"),
            })
        })
        .collect::<Result<_, _>>()?;
    let (w, h) = (decoded[0].1.width() as usize, decoded[0].1.height() as usize);
    let grey = decoded.iter().all(|(_, im, _)| im.color().channel_count() == 1);
    let channels = if grey { 1 } else { 3 };
    let mut pixels = Vec::with_capacity(decoded.len() * channels * h * w);
    let mut labels = Vec::with_capacity(decoded.len());
    for (c, im, f) in &decoded {
        if (im.width() as usize, im.height() as usize) != (w, h) {
            return Err(DataError::Format {
                path: (*f).clone(),
                reason: format!("image is {}×{}, the others are {w}×{h}", im.width(), im.height()),
            });
        }
        if grey {
            pixels.extend_from_slice(im.to_luma8().as_raw());
        } else {
            let rgb = im.to_rgb8();
            let raw = rgb.as_raw();
            for ch in 0..3 {
                pixels.extend(raw.iter().skip(ch).step_by(3));
            }
        }
        labels.push(*c);
    }
    let class_names = classes
        .iter()
        .map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();
    Ok(ImageDataset {
        pixels,
        labels,
        channels,
        height: h,
        width: w,
        class_names,
        source: dir.display().to_string(),
    })
}

/// How images become model input: resize, channel count and per-channel normalisation
/// (`(x / 255 − mean) / std`, Hugging Face's image-processor convention).
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub size: usize,
    pub channels: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Preprocess {
    /// ViT's default processor: mean = std = 0.5 per channel.
    pub fn vit(size: usize, channels: usize) -> Self {
        Self { size, channels, mean: vec![0.5; channels], std: vec![0.5; channels] }
    }

    /// `[n, channels, size, size]` floats of the samples at `indices`. Grey images are repeated
    /// over the channels a colour model expects; other sizes are resized bilinearly.
    pub fn apply(&self, ds: &ImageDataset, indices: &[usize]) -> Result<Vec<f32>, DataError> {
        if ds.channels != self.channels && !(ds.channels == 1 && self.channels == 3) {
            return Err(DataError::Mismatch(format!(
                "{}: images have {} channel(s), the model takes {}",
                ds.source, ds.channels, self.channels
            )));
        }
        let s = self.size;
        let mut out = Vec::with_capacity(indices.len() * self.channels * s * s);
        for &i in indices {
            let img = ds.image(i);
            for c in 0..self.channels {
                let src_c = if ds.channels == 1 { 0 } else { c };
                let plane = &img[src_c * ds.height * ds.width..(src_c + 1) * ds.height * ds.width];
                let (m, std_dev) = (self.mean[c], self.std[c]);
                if ds.height == s && ds.width == s {
                    out.extend(plane.iter().map(|&p| (p as f32 / 255.0 - m) / std_dev));
                } else {
                    for y in 0..s {
                        for x in 0..s {
                            let v = bilinear(plane, ds.height, ds.width, y, x, s);
                            out.push((v / 255.0 - m) / std_dev);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Bilinear sample with half-pixel centres (PIL / torchvision convention, no antialiasing).
fn bilinear(plane: &[u8], h: usize, w: usize, y: usize, x: usize, s: usize) -> f32 {
    let fy = ((y as f32 + 0.5) * h as f32 / s as f32 - 0.5).clamp(0.0, (h - 1) as f32);
    let fx = ((x as f32 + 0.5) * w as f32 / s as f32 - 0.5).clamp(0.0, (w - 1) as f32);
    let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let (dy, dx) = (fy - y0 as f32, fx - x0 as f32);
    let p = |yy: usize, xx: usize| plane[yy * w + xx] as f32;
    p(y0, x0) * (1.0 - dy) * (1.0 - dx)
        + p(y0, x1) * (1.0 - dy) * dx
        + p(y1, x0) * dy * (1.0 - dx)
        + p(y1, x1) * dy * dx
}
