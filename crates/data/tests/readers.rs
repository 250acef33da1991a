//! Readers and batching on small files the tests write.

use std::path::Path;
use std::sync::Arc;

use scalelong_data::{cifar, idx, make_batch, DataPosition, DataSpec, Loader, LoaderConfig};

fn write_cifar10(dir: &Path, batches: &[&[(u8, u8)]]) {
    // Each record: label, then 3072 pixels all equal to `value`.
    for (i, records) in batches.iter().enumerate() {
        let mut bytes = Vec::new();
        for &(label, value) in records.iter() {
            bytes.push(label);
            bytes.extend(std::iter::repeat_n(value, 3072));
        }
        std::fs::write(dir.join(format!("data_batch_{}.bin", i + 1)), bytes).unwrap();
    }
}

#[test]
fn cifar10_two_batches() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path(), &[&[(3, 10), (7, 20)], &[(1, 30)]]);
    let ds = DataSpec::detect(dir.path()).unwrap().load(3, 32).unwrap();
    assert_eq!((ds.len(), ds.image_shape(), ds.num_classes()), (3, (3, 32, 32), 10));
    assert_eq!(ds.labels().unwrap(), &[3, 7, 1]);
    assert!(ds.image(2).iter().all(|&p| p == 30));
    // A truncated batch is an error naming the file.
    std::fs::write(dir.path().join("data_batch_3.bin"), vec![0u8; 100]).unwrap();
    let err = cifar::load_dir(dir.path(), cifar::Split::Train).unwrap_err().to_string();
    assert!(err.contains("data_batch_3.bin") && err.contains("3073-byte"), "{err}");
}

#[test]
fn idx_pair_raw_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..2 * 4 * 4).map(|i| i as u8).collect();
    idx::write_idx(&dir.path().join("train-images-idx3-ubyte"), &[2, 4, 4], &pixels).unwrap();
    idx::write_idx(&dir.path().join("train-labels-idx1-ubyte"), &[2], &[5, 9]).unwrap();
    let ds = DataSpec::detect(dir.path()).unwrap().load(1, 4).unwrap();
    assert_eq!((ds.len(), ds.image_shape(), ds.labels().unwrap()), (2, (1, 4, 4), &[5u32, 9][..]));
    assert_eq!(ds.image(1)[0], 16);
    // Gzipped, and converted to 3 channels at another size.
    let gz = tempfile::tempdir().unwrap();
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
        let raw = std::fs::read(dir.path().join(name)).unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, &raw).unwrap();
        std::fs::write(gz.path().join(format!("{name}.gz")), enc.finish().unwrap()).unwrap();
    }
    let ds3 = format!("idx:{}", gz.path().display()).parse::<DataSpec>().unwrap().load(3, 8).unwrap();
    assert_eq!(ds3.image_shape(), (3, 8, 8));
    let img = ds3.image(0);
    assert_eq!(&img[..64], &img[64..128], "grey repeated to every channel");
    // Padding instead of resizing: the 4x4 image sits in the middle of a black 8x8.
    let padded = DataSpec::detect(dir.path()).unwrap().load_padded(1, 8).unwrap();
    assert_eq!(padded.image(0)[2 * 8 + 2..2 * 8 + 6], pixels[..4]);
    assert_eq!(padded.image(0)[..8], [0; 8]);
    // Truncated data.
    idx::write_idx(&dir.path().join("train-images-idx3-ubyte"), &[3, 4, 4], &pixels).unwrap();
    let err = DataSpec::detect(dir.path()).unwrap().load(1, 4).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte") && err.contains("need 48 bytes"), "{err}");
}

#[test]
fn image_folder_with_classes_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    for (class, value) in [("cat", 50u8), ("dog", 200u8)] {
        let sub = dir.path().join(class).join("nested");
        std::fs::create_dir_all(&sub).unwrap();
        for k in 0..2 {
            image::RgbImage::from_pixel(12, 10, image::Rgb([value, value, value]))
                .save(sub.join(format!("{k}.png")))
                .unwrap();
        }
    }
    let ds = DataSpec::detect(dir.path()).unwrap().load(3, 8).unwrap();
    assert_eq!((ds.len(), ds.num_classes(), ds.image_shape()), (4, 2, (3, 8, 8)));
    assert_eq!(ds.labels().unwrap(), &[0, 0, 1, 1]);
    assert!(ds.image(3).iter().all(|&p| p == 200));
    let err = DataSpec::detect(dir.path()).unwrap().load(2, 8).unwrap_err().to_string();
    assert!(err.contains("2 channels"), "{err}");
    std::fs::write(dir.path().join("dog").join("broken.png"), b"not a png").unwrap();
    let err = DataSpec::detect(dir.path()).unwrap().load(3, 8).unwrap_err().to_string();
    assert!(err.contains("broken.png") && err.contains("cannot read image"), "{err}");
    // Decoded in parallel, but the first bad file in sorted order is the one named.
    std::fs::write(dir.path().join("cat").join("also_broken.png"), b"nor this").unwrap();
    for _ in 0..3 {
        let err = DataSpec::detect(dir.path()).unwrap().load(3, 8).unwrap_err().to_string();
        assert!(err.contains("also_broken.png"), "{err}");
    }
    let err = "does/not/exist".parse::<DataSpec>().unwrap_err().to_string();
    assert!(err.contains("does/not/exist") && err.contains("not found"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = DataSpec::detect(empty.path()).unwrap().load(3, 8).unwrap_err().to_string();
    assert!(err.contains("no .png"), "{err}");
}

#[test]
fn embedded_mnist_is_real() {
    let ds = DataSpec::EmbeddedMnist.load(1, 28).unwrap();
    assert_eq!((ds.len(), ds.image_shape(), ds.num_classes()), (10_000, (1, 28, 28), 10));
    // The first test digit of MNIST is a 7.
    assert_eq!(ds.labels().unwrap()[..4], [7, 2, 1, 0]);
    let ink = ds.image(0).iter().filter(|&&p| p > 128).count();
    assert!((50..300).contains(&ink), "{ink} bright pixels");
}

#[test]
fn batches_are_a_function_of_seed_and_position() {
    let pixels: Vec<u8> = (0..10).flat_map(|i| std::iter::repeat_n(i as u8 * 20, 2 * 3)).collect();
    let labels = Some((0..10).collect());
    let ds = Arc::new(scalelong_data::ImageDataset::new("toy", pixels, (1, 2, 3), labels, 10).unwrap());
    let cfg = LoaderConfig { batch_size: 4, seed: 7, hflip: true, prefetch: 2 };
    let mut loader = Loader::new(ds.clone(), cfg, DataPosition::default());
    let batches: Vec<_> = (0..5).map(|_| loader.next_batch()).collect();
    // 10 images, batches of 4: two per epoch, the remainder dropped.
    let positions: Vec<_> = batches.iter().map(|b| (b.next.epoch, b.next.offset)).collect();
    assert_eq!(positions, [(0, 4), (0, 8), (1, 4), (1, 8), (2, 4)]);
    let epoch0: Vec<u32> = batches[..2].iter().flat_map(|b| b.labels.clone().unwrap()).collect();
    let mut sorted = epoch0.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 8, "no image twice in an epoch: {epoch0:?}");
    let epoch1: Vec<u32> = batches[2..4].iter().flat_map(|b| b.labels.clone().unwrap()).collect();
    assert_ne!(epoch0, epoch1, "each epoch reshuffles");
    // Starting a new loader mid-stream gives the same batches (resume).
    let mut resumed = Loader::new(ds.clone(), cfg, batches[2].next);
    for b in &batches[3..] {
        let r = resumed.next_batch();
        assert_eq!((&r.images, &r.labels), (&b.images, &b.labels));
    }
    // Pixels are in [-1, 1]; some row got flipped (values differ only by position within a row).
    assert!(batches.iter().all(|b| b.images.iter().all(|&v| (-1.0..=1.0).contains(&v))));
    let plain = make_batch(&ds, &LoaderConfig { hflip: false, ..cfg }, DataPosition::default());
    assert_eq!(plain.labels, batches[0].labels);
}
