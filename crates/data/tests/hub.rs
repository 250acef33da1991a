//! `hf:mnist` offline: the Hugging Face cache laid out by this test (as huggingface_hub and hf-hub
//! write it) holds tiny parquet files in the Hub's MNIST schema (fixtures/make_hub_parquet.py).
#![cfg(feature = "hub")]

use std::path::Path;

use scalelong_data::DataSpec;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn write_cache(cache: &Path) {
    let repo = cache.join("datasets--ylecun--mnist");
    let refs = repo.join("refs/refs/convert");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join("parquet"), COMMIT).unwrap();
    let snapshot = repo.join("snapshots").join(COMMIT).join("mnist");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for split in ["train", "test"] {
        std::fs::create_dir_all(snapshot.join(split)).unwrap();
        std::fs::copy(fixtures.join(format!("hub_mnist_{split}.parquet")), snapshot.join(split).join("0000.parquet"))
            .unwrap();
    }
}

#[test]
fn hub_mnist_loads_from_the_cache_without_the_network() {
    let dir = tempfile::tempdir().unwrap();
    write_cache(dir.path());
    // The only test in this binary: nothing else reads the environment concurrently.
    std::env::set_var("HF_HUB_CACHE", dir.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");

    let spec: DataSpec = "hf:mnist".parse().unwrap();
    let ds = spec.load_as_stored().unwrap();
    assert_eq!((ds.len(), ds.image_shape(), ds.num_classes()), (12, (1, 28, 28), 10));
    assert_eq!(ds.labels().unwrap(), &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    for k in 0..12 {
        let want: Vec<u8> = (0..28 * 28).map(|i| ((40 * k + i / 28 + 2 * (i % 28)) % 256) as u8).collect();
        assert_eq!(ds.image(k), want.as_slice(), "image {k}");
    }

    // Training reads it padded to 32x32 like every MNIST source.
    let ds = spec.load(1, 32).unwrap();
    assert_eq!(ds.image_shape(), (1, 32, 32));

    // A cache without the files is an error naming the dataset, not a hang on the network.
    std::env::set_var("HF_HUB_CACHE", dir.path().join("empty"));
    let err = spec.load_as_stored().unwrap_err().to_string();
    assert!(err.contains("hf:mnist"), "{err}");
}
