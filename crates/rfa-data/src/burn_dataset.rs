//! burn-dataset's [`Dataset`] for rfa's loaders (cargo feature `burn-dataset`), so that a burn
//! user feeds them to burn's `DataLoaderBuilder` as they are (`examples/burn_dataloader.rs`).

use burn_dataset::Dataset;

use crate::images::ImageDataset;
use crate::text::TextDataset;

/// One image of an [`ImageDataset`]: its bytes as stored (`[channels, height, width]`, 0–255)
/// and its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageItem {
    pub pixels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub label: usize,
}

/// One text of a [`TextDataset`], with its class and its id in the source (IMDB's file stem,
/// ELI5's `q_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextItem {
    pub text: String,
    pub label: usize,
    pub id: String,
}

impl Dataset<ImageItem> for ImageDataset {
    fn get(&self, index: usize) -> Option<ImageItem> {
        (index < ImageDataset::len(self)).then(|| ImageItem {
            pixels: self.image(index).to_vec(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            label: self.labels[index],
        })
    }

    fn len(&self) -> usize {
        ImageDataset::len(self)
    }
}

impl Dataset<TextItem> for TextDataset {
    fn get(&self, index: usize) -> Option<TextItem> {
        (index < TextDataset::len(self)).then(|| TextItem {
            text: self.texts[index].clone(),
            label: self.labels[index],
            id: self.ids[index].clone(),
        })
    }

    fn len(&self) -> usize {
        TextDataset::len(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> ImageDataset {
        ImageDataset {
            pixels: (0..2 * 2 * 3).map(|v| v as u8).collect(),
            labels: vec![1, 0],
            channels: 1,
            height: 2,
            width: 3,
            class_names: vec!["a".into(), "b".into()],
            source: "memory".into(),
        }
    }

    #[test]
    fn images_are_items_in_order_and_out_of_range_is_none() {
        let ds = images();
        assert_eq!(Dataset::<ImageItem>::len(&ds), 2);
        let second = ds.get(1).unwrap();
        assert_eq!(second.pixels, vec![6, 7, 8, 9, 10, 11]);
        assert_eq!((second.channels, second.height, second.width, second.label), (1, 2, 3, 0));
        assert_eq!(Dataset::<ImageItem>::get(&ds, 2), None);
        let all: Vec<usize> = Dataset::<ImageItem>::iter(&ds).map(|i| i.label).collect();
        assert_eq!(all, vec![1, 0]);
    }

    #[test]
    fn texts_are_items_with_their_ids() {
        let ds = TextDataset {
            texts: vec!["good".into(), "bad".into()],
            labels: vec![1, 0],
            ids: vec!["0_9".into(), "1_2".into()],
            class_names: vec!["neg".into(), "pos".into()],
            source: "memory".into(),
            lossy: 0,
        };
        assert_eq!(ds.get(1), Some(TextItem { text: "bad".into(), label: 0, id: "1_2".into() }));
        assert_eq!(Dataset::<TextItem>::get(&ds, 5), None);
    }
}
