//! rfa-data's loaders in burn's data pipeline: an `ImageDataset` is a burn-dataset `Dataset`
//! (feature `burn-dataset`), so burn's `DataLoaderBuilder` batches it with your `Batcher`.
//!
//!     cargo run -p rfa-data --features burn-dataset --example burn_dataloader [-- IMAGES LABELS]
//!
//! Without arguments it reads the Fashion-MNIST subset in the repository's `data/` folder; give
//! any IDX pair (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`) otherwise.

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;
use rfa_data::burn_dataset::ImageItem;
use rfa_data::images::{fashion_mnist_classes, load_idx};

type B = NdArray<f32>;

/// Images scaled to [0, 1] as `[batch, channels, height, width]`, and their classes.
#[derive(Clone, Debug)]
struct ImageBatch<B: Backend> {
    pixels: Tensor<B, 4>,
    labels: Tensor<B, 1, Int>,
}

#[derive(Clone, Default)]
struct ImageBatcher;

impl<B: Backend> Batcher<B, ImageItem, ImageBatch<B>> for ImageBatcher {
    fn batch(&self, items: Vec<ImageItem>, device: &B::Device) -> ImageBatch<B> {
        let (c, h, w) = (items[0].channels, items[0].height, items[0].width);
        let pixels: Vec<f32> =
            items.iter().flat_map(|i| i.pixels.iter().map(|&p| p as f32 / 255.0)).collect();
        let labels: Vec<i64> = items.iter().map(|i| i.label as i64).collect();
        ImageBatch {
            pixels: Tensor::from_data(TensorData::new(pixels, [items.len(), c, h, w]), device),
            labels: Tensor::from_data(TensorData::new(labels, [items.len()]), device),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist-subset");
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let images = args.next().unwrap_or_else(|| data.join("train-images-idx3-ubyte.gz"));
    let labels = args.next().unwrap_or_else(|| data.join("train-labels-idx1-ubyte.gz"));
    let dataset = load_idx(&images, &labels, fashion_mnist_classes())?;
    println!(
        "{} images of {}×{} from {}",
        dataset.len(),
        dataset.height,
        dataset.width,
        dataset.source
    );

    let loader =
        DataLoaderBuilder::<B, _, _>::new(ImageBatcher).batch_size(64).shuffle(0).build(dataset);
    let (mut batches, mut seen) = (0, 0);
    for batch in loader.iter() {
        let [n, c, h, w] = batch.pixels.dims();
        if batches == 0 {
            println!("first batch: pixels [{n}, {c}, {h}, {w}], labels {}", batch.labels.dims()[0]);
        }
        batches += 1;
        seen += n;
    }
    println!("{batches} batches, {seen} images");
    Ok(())
}
