//! Loaders on the embedded real subset and on small files made here; forget selection.

use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use rfa_data::images::{fashion_mnist_classes, load_cifar10_bin, load_idx, load_image_folder};
use rfa_data::{DataError, ForgetSpec, Preprocess, batches, select_forget, select_forget_after};

fn subset() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist-subset")
}

fn write_idx(
    dir: &Path,
    n: usize,
    h: usize,
    w: usize,
    labels: &[u8],
    gz: bool,
) -> (PathBuf, PathBuf) {
    let mut img = vec![0, 0, 8, 3];
    for v in [n, h, w] {
        img.extend((v as u32).to_be_bytes());
    }
    img.extend((0..n * h * w).map(|i| (i % 251) as u8));
    let mut lab = vec![0, 0, 8, 1];
    lab.extend((labels.len() as u32).to_be_bytes());
    lab.extend_from_slice(labels);
    let (pi, pl) = (dir.join("img.idx"), dir.join("lab.idx"));
    for (p, b) in [(&pi, img), (&pl, lab)] {
        if gz {
            let mut e = flate2::write::GzEncoder::new(
                std::fs::File::create(p).unwrap(),
                flate2::Compression::fast(),
            );
            e.write_all(&b).unwrap();
            e.finish().unwrap();
        } else {
            std::fs::write(p, b).unwrap();
        }
    }
    (pi, pl)
}

#[test]
fn embedded_fashion_mnist_subset_is_balanced_real_data() {
    let d = subset();
    let train = load_idx(
        &d.join("train-images-idx3-ubyte.gz"),
        &d.join("train-labels-idx1-ubyte.gz"),
        fashion_mnist_classes(),
    )
    .unwrap();
    let test = load_idx(
        &d.join("t10k-images-idx3-ubyte.gz"),
        &d.join("t10k-labels-idx1-ubyte.gz"),
        fashion_mnist_classes(),
    )
    .unwrap();
    assert_eq!((train.len(), train.height, train.width, train.channels), (3000, 28, 28, 1));
    assert_eq!(train.class_counts(), vec![300; 10]);
    assert_eq!(test.class_counts(), vec![100; 10]);
    // The first Fashion-MNIST training image is an ankle boot (label 9).
    assert_eq!(train.labels[0], 9);
    let mean = train.pixels.iter().map(|&p| p as f64).sum::<f64>() / train.pixels.len() as f64;
    assert!(mean > 60.0 && mean < 90.0, "mean pixel {mean}");
}

#[test]
fn idx_plain_and_gzipped_read_the_same() {
    let t = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..3).map(|i| i.to_string()).collect();
    let (a, b) = write_idx(t.path(), 4, 3, 2, &[0, 1, 2, 1], false);
    let plain = load_idx(&a, &b, names.clone()).unwrap();
    let (a, b) = write_idx(t.path(), 4, 3, 2, &[0, 1, 2, 1], true);
    let gz = load_idx(&a, &b, names).unwrap();
    assert_eq!(plain.pixels, gz.pixels);
    assert_eq!(gz.labels, vec![0, 1, 2, 1]);
    assert_eq!(gz.image(1), &(6u8..12).collect::<Vec<_>>()[..]);
}

#[test]
fn bad_idx_files_are_errors_naming_the_file() {
    let t = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..3).map(|i| i.to_string()).collect();
    let (a, b) = write_idx(t.path(), 4, 3, 2, &[0, 1, 2, 1], false);
    // Truncated images.
    let bytes = std::fs::read(&a).unwrap();
    std::fs::write(&a, &bytes[..bytes.len() - 5]).unwrap();
    let e = load_idx(&a, &b, names.clone()).unwrap_err().to_string();
    assert!(e.contains("img.idx") && e.contains("truncated"), "{e}");
    // Wrong magic (a label file given as images).
    let e = load_idx(&b, &b, names.clone()).unwrap_err().to_string();
    assert!(e.contains("not an IDX image file"), "{e}");
    // Label count differs.
    let (a, b) = write_idx(t.path(), 4, 3, 2, &[0, 1, 2], false);
    assert!(
        load_idx(&a, &b, names.clone()).unwrap_err().to_string().contains("3 labels for 4 images")
    );
    // Label out of range.
    let (a, b) = write_idx(t.path(), 4, 3, 2, &[0, 1, 7, 1], false);
    let e = load_idx(&a, &b, names.clone()).unwrap_err().to_string();
    assert!(e.contains("label 7") && e.contains("3 classes"), "{e}");
    // Corrupt gzip.
    std::fs::write(&a, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
    assert!(load_idx(&a, &b, names.clone()).unwrap_err().to_string().contains("corrupt gzip"));
    // Images of 0×0, and a header whose sizes overflow: errors, not a panic.
    let (a, b) = write_idx(t.path(), 2, 0, 0, &[0, 1], false);
    let e = load_idx(&a, &b, names.clone()).unwrap_err().to_string();
    assert!(e.contains("img.idx") && e.contains("0×0"), "{e}");
    let mut huge = vec![0, 0, 8, 3];
    for v in [u32::MAX, u32::MAX, u32::MAX] {
        huge.extend(v.to_be_bytes());
    }
    std::fs::write(&a, huge).unwrap();
    let e = load_idx(&a, &b, names.clone()).unwrap_err().to_string();
    assert!(e.contains("img.idx"), "{e}");
    // Missing file.
    assert!(matches!(load_idx(&t.path().join("none"), &b, names), Err(DataError::Io { .. })));
}

#[test]
fn cifar10_binary_batches() {
    let t = tempfile::tempdir().unwrap();
    let mut rec = Vec::new();
    for (l, v) in [(3u8, 10u8), (9, 200)] {
        rec.push(l);
        rec.extend(std::iter::repeat_n(v, 3072));
    }
    let p = t.path().join("data_batch_1.bin");
    std::fs::write(&p, &rec).unwrap();
    let ds = load_cifar10_bin(&[p.clone()]).unwrap();
    assert_eq!((ds.len(), ds.channels, ds.labels.clone()), (2, 3, vec![3, 9]));
    assert_eq!(ds.class_names[3], "cat");
    std::fs::write(&p, &rec[..3000]).unwrap();
    assert!(load_cifar10_bin(&[p.clone()]).unwrap_err().to_string().contains("3073-byte"));
    rec[0] = 12;
    std::fs::write(&p, &rec).unwrap();
    assert!(load_cifar10_bin(&[p]).unwrap_err().to_string().contains("label 12"));
}

#[test]
fn image_folders_jpeg_and_png() {
    let t = tempfile::tempdir().unwrap();
    for (c, v) in [("cat", 30u8), ("dog", 220u8)] {
        std::fs::create_dir_all(t.path().join(c)).unwrap();
        for k in 0..2 {
            let img = image::RgbImage::from_fn(8, 8, |x, _| image::Rgb([v, x as u8 * 10, k * 50]));
            img.save(t.path().join(c).join(format!("{k}.png"))).unwrap();
        }
    }
    let ds = load_image_folder(t.path()).unwrap();
    assert_eq!(ds.class_names, vec!["cat", "dog"]);
    assert_eq!((ds.len(), ds.channels, ds.height), (4, 3, 8));
    assert_eq!(ds.labels, vec![0, 0, 1, 1]);
    // Channel-major: the first 64 bytes are the red plane.
    assert!(ds.image(2)[..64].iter().all(|&p| p == 220));
    // A differently sized image.
    image::RgbImage::new(9, 8).save(t.path().join("dog/odd.png")).unwrap();
    let e = load_image_folder(t.path()).unwrap_err().to_string();
    assert!(e.contains("odd.png") && e.contains("9×8"), "{e}");
    // A corrupt image.
    std::fs::write(t.path().join("dog/odd.png"), b"not a png").unwrap();
    let e = load_image_folder(t.path()).unwrap_err().to_string();
    assert!(e.contains("odd.png") && e.contains("cannot decode"), "{e}");
}

#[test]
fn preprocessing_normalises_resizes_and_repeats_grey() {
    let d = subset();
    let ds = load_idx(
        &d.join("t10k-images-idx3-ubyte.gz"),
        &d.join("t10k-labels-idx1-ubyte.gz"),
        fashion_mnist_classes(),
    )
    .unwrap();
    let x = Preprocess::vit(28, 1).apply(&ds, &[0]).unwrap();
    assert_eq!(x.len(), 784);
    for (v, &p) in x.iter().zip(ds.image(0)) {
        assert!((v - (p as f32 / 255.0 - 0.5) / 0.5).abs() < 1e-6);
    }
    let x3 = Preprocess::vit(32, 3).apply(&ds, &[0, 1]).unwrap();
    assert_eq!(x3.len(), 2 * 3 * 32 * 32);
    assert_eq!(&x3[..1024], &x3[1024..2048], "grey repeated over channels");
    assert!(x3.iter().all(|v| (-1.0..=1.0).contains(v)));
    // A constant image stays constant under resizing.
    let mut flat = ds.subset(&[0]);
    flat.pixels.iter_mut().for_each(|p| *p = 51);
    assert!(
        Preprocess::vit(20, 1)
            .apply(&flat, &[0])
            .unwrap()
            .iter()
            .all(|v| (v - (0.2 - 0.5) / 0.5).abs() < 1e-5)
    );
    let mut rgb = ds.subset(&[0]);
    rgb.channels = 3;
    assert!(Preprocess::vit(28, 1).apply(&rgb, &[]).is_err());
}

#[test]
fn forget_selection_by_class_random_ids_and_file() {
    let labels: Vec<usize> = (0..100).map(|i| i % 10).collect();
    let names = fashion_mnist_classes();
    let s =
        select_forget(&labels, &names, &ForgetSpec::parse("class:Trouser").unwrap(), 0).unwrap();
    assert_eq!((s.forget.len(), s.retain.len(), s.class), (10, 90, Some(1)));
    assert!(s.forget.iter().all(|&i| labels[i] == 1));
    let s = select_forget(&labels, &names, &ForgetSpec::parse("class:3").unwrap(), 0).unwrap();
    assert_eq!(s.class, Some(3));
    let r1 = select_forget(&labels, &names, &ForgetSpec::parse("random:10").unwrap(), 7).unwrap();
    let r2 = select_forget(&labels, &names, &ForgetSpec::Random(10.0), 7).unwrap();
    assert_eq!(r1, r2);
    assert_eq!(r1.forget.len(), 10);
    assert_ne!(
        r1.forget,
        select_forget(&labels, &names, &ForgetSpec::Random(10.0), 8).unwrap().forget
    );
    let s = select_forget(&labels, &names, &ForgetSpec::parse("ids:5,3,3,99").unwrap(), 0).unwrap();
    assert_eq!(s.forget, vec![3, 5, 99]);
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("ids.txt");
    std::fs::write(&f, "# forget these\n1 2\n4,8\n").unwrap();
    let s = select_forget(&labels, &names, &ForgetSpec::IdFile(f.clone()), 0).unwrap();
    assert_eq!(s.forget, vec![1, 2, 4, 8]);
    std::fs::write(&f, "1\nseven\n").unwrap();
    assert!(
        select_forget(&labels, &names, &ForgetSpec::IdFile(f.clone()), 0)
            .unwrap_err()
            .to_string()
            .contains("seven")
    );
    // A file far larger than any id list (a data set given by mistake) is refused unread.
    let big = std::fs::File::create(&f).unwrap();
    big.set_len(rfa_data::ID_FILE_MAX_BYTES + 1).unwrap();
    let e = select_forget(&labels, &names, &ForgetSpec::IdFile(f), 0).unwrap_err().to_string();
    assert!(e.contains("ids.txt") && e.contains("larger than"), "{e}");
}

#[test]
fn forget_selection_errors() {
    let labels: Vec<usize> = (0..20).map(|i| i % 2).collect();
    let names: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
    let err = |spec: ForgetSpec| select_forget(&labels, &names, &spec, 0).unwrap_err().to_string();
    assert!(err(ForgetSpec::Class("c".into())).contains("selects no training sample"));
    assert!(err(ForgetSpec::Class("zebra".into())).contains("unknown class `zebra`"));
    assert!(err(ForgetSpec::Class("7".into())).contains("unknown class"));
    assert!(err(ForgetSpec::Ids(vec![])).contains("selects no training sample"));
    assert!(err(ForgetSpec::Ids(vec![3, 20])).contains("sample id 20 is out of range"));
    assert!(err(ForgetSpec::Ids((0..20).collect())).contains("nothing would be retained"));
    assert!(err(ForgetSpec::Random(0.0)).contains("(0, 100)"));
    assert!(err(ForgetSpec::Random(100.0)).contains("(0, 100)"));
    assert!(err(ForgetSpec::Random(1.0)).contains("selects no training sample"));
    assert!(ForgetSpec::parse("everything").is_err());
}

#[test]
fn a_later_request_forgets_only_what_is_not_forgotten_yet() {
    let labels: Vec<usize> = (0..100).map(|i| i % 10).collect();
    let names = fashion_mnist_classes();
    let first = select_forget(&labels, &names, &ForgetSpec::Random(10.0), 7).unwrap();
    let earlier: std::collections::BTreeSet<usize> = first.forget.iter().copied().collect();
    // random: the next 10 % of the same shuffle, disjoint from the first request's.
    let second =
        select_forget_after(&labels, &names, &ForgetSpec::Random(10.0), 7, &earlier).unwrap();
    assert_eq!(second.forget.len(), 10);
    assert!(second.forget.iter().all(|i| !earlier.contains(i)));
    assert_eq!(second.retain.len(), 80);
    assert!(second.retain.iter().all(|i| !earlier.contains(i) && !second.forget.contains(i)));
    assert_eq!(second.earlier, first.forget);
    // ids: an id forgotten before is reported, not forgotten twice.
    let twice = first.forget[0];
    let fresh = second.retain[0];
    let s = select_forget_after(&labels, &names, &ForgetSpec::Ids(vec![twice, fresh]), 0, &earlier)
        .unwrap();
    assert_eq!((s.forget, s.repeated), (vec![fresh], vec![twice]));
    let e = select_forget_after(&labels, &names, &ForgetSpec::Ids(vec![twice]), 0, &earlier)
        .unwrap_err()
        .to_string();
    assert!(e.contains("earlier requests forgot already"), "{e}");
    // class: what is left of it.
    let c =
        select_forget_after(&labels, &names, &ForgetSpec::Class("1".into()), 0, &earlier).unwrap();
    assert!(c.forget.iter().all(|&i| labels[i] == 1 && !earlier.contains(&i)));
    assert_eq!(c.forget.len() + c.repeated.len(), 10);
    // Nothing left to retain, or an earlier id the training set does not have.
    let all_but: std::collections::BTreeSet<usize> = (10..100).collect();
    let e = select_forget_after(&labels, &names, &ForgetSpec::Ids((0..10).collect()), 0, &all_but)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing would be retained"), "{e}");
    let e = select_forget_after(&labels, &names, &ForgetSpec::Ids(vec![1]), 0, &[100].into())
        .unwrap_err()
        .to_string();
    assert!(e.contains("sample 100"), "{e}");
}

proptest! {
    #[test]
    fn forget_and_retain_partition_the_training_set(n in 2usize..300, k in 1.0f64..99.0, seed in any::<u64>()) {
        let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let names: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        if let Ok(s) = select_forget(&labels, &names, &ForgetSpec::Random(k), seed) {
            let mut all: Vec<usize> = s.forget.iter().chain(&s.retain).copied().collect();
            all.sort();
            prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
            prop_assert_eq!(s.forget.len(), ((n as f64) * k / 100.0).round() as usize);
        }
    }

    #[test]
    fn batches_cover_every_index_once(n in 0usize..200, b in 1usize..33, seed in any::<u64>()) {
        let idx: Vec<usize> = (0..n).map(|i| i * 2).collect();
        let bs = batches(&idx, b, true, seed);
        prop_assert!(bs.iter().all(|x| x.len() <= b));
        let mut all: Vec<usize> = bs.concat();
        all.sort();
        prop_assert_eq!(all, idx);
    }
}

/// What a user may hand rfa: any bytes or text give a result or an error, never a panic; what
/// the parsers accept reads back as it was written (also fuzzed: `scripts/fuzz.sh`).
mod parsers_never_panic {
    use super::*;
    use rfa_data::images::{parse_cifar10_bin, parse_idx};
    use rfa_data::parse_ids;

    proptest! {
        #[test]
        fn idx_bytes(images in proptest::collection::vec(any::<u8>(), 0..96), labels in proptest::collection::vec(any::<u8>(), 0..24), magic in any::<bool>()) {
            let mut images = images;
            if magic && images.len() >= 16 {
                // A plausible header with arbitrary sizes, so that the size checks are reached.
                images[..4].copy_from_slice(&0x803u32.to_be_bytes());
            }
            let _ = parse_idx(Path::new("i"), images, Path::new("l"), labels, fashion_mnist_classes());
        }

        #[test]
        fn cifar_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..7000)) {
            match parse_cifar10_bin(&[(PathBuf::from("b.bin"), bytes.clone())]) {
                Ok(ds) => prop_assert_eq!(ds.len(), bytes.len() / 3073),
                Err(e) => prop_assert!(e.to_string().contains("b.bin"), "{}", e),
            }
        }

        #[test]
        fn id_lists_read_back(ids in proptest::collection::vec(0usize..1_000_000, 0..40), seps in proptest::collection::vec(prop_oneof![Just(","), Just(" "), Just("\n"), Just(", "), Just(" # note\n")], 40)) {
            let mut text = String::new();
            for (i, id) in ids.iter().enumerate() {
                text += &id.to_string();
                text += seps[i];
            }
            prop_assert_eq!(parse_ids(&text, Path::new("f.txt")).unwrap(), ids);
        }

        #[test]
        fn id_files_and_specs_any_text(text in "\\PC{0,60}") {
            if let Err(e) = parse_ids(&text, Path::new("f.txt")) {
                prop_assert!(e.to_string().contains("f.txt"), "{}", e);
            }
            let _ = ForgetSpec::parse(&text);
        }
    }
}
