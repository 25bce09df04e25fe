//! Reading the dataset from disk: every corruption gets its own clear error naming the file.

mod common;

use common::{TempDir, gzip, write_synthetic};
use fmnist::Error;
use fmnist::data::files::{self, Location, Origin};
use fmnist::data::idx::IdxArray;
use fmnist::data::{self, DataOptions};

fn load(dir: &std::path::Path, verify: bool) -> Result<data::FashionMnist, Error> {
    data::load(
        Location {
            dir: dir.to_path_buf(),
            origin: Origin::Flag,
        },
        verify,
    )
}

fn expect_data_error(result: Result<data::FashionMnist, Error>, file: &str, needle: &str) {
    let err = result.expect_err("corrupt data must be rejected");
    let msg = err.to_string();
    assert_eq!(err.exit_code(), 2, "{msg}");
    assert!(msg.contains(file), "error should name {file}: {msg}");
    assert!(msg.contains(needle), "error should say {needle:?}: {msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn synthetic_round_trip_without_checksums() {
    let dir = TempDir::new("synthetic");
    write_synthetic(dir.path(), 30, 10);
    let ds = load(dir.path(), false).unwrap();
    assert_eq!(ds.train.len(), 30);
    assert_eq!(ds.test.len(), 10);
    assert_eq!(ds.train.labels[13], 3);
    assert_eq!(ds.train.image(1)[0], (784 * 7 % 256) as u8);
}

#[test]
fn decompressed_files_are_accepted() {
    let dir = TempDir::new("raw");
    write_synthetic(dir.path(), 5, 5);
    // Replace one .gz by its decompressed form.
    let gz = dir.path().join("t10k-labels-idx1-ubyte.gz");
    let raw = files::gunzip(&gz, &std::fs::read(&gz).unwrap()).unwrap();
    std::fs::remove_file(&gz).unwrap();
    std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), raw).unwrap();
    assert_eq!(load(dir.path(), false).unwrap().test.len(), 5);
}

#[test]
fn checksum_mismatch_is_reported() {
    let dir = TempDir::new("checksum");
    write_synthetic(dir.path(), 5, 5);
    expect_data_error(
        load(dir.path(), true),
        "train-images-idx3-ubyte.gz",
        "checksum mismatch",
    );
}

#[test]
fn truncated_gzip_is_reported() {
    let dir = TempDir::new("truncgz");
    write_synthetic(dir.path(), 20, 5);
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    expect_data_error(
        load(dir.path(), false),
        "train-images-idx3-ubyte.gz",
        "truncated or damaged gzip",
    );
}

#[test]
fn wrong_magic_is_reported() {
    let dir = TempDir::new("magic");
    write_synthetic(dir.path(), 5, 5);
    let mut raw = IdxArray {
        dims: vec![5],
        data: vec![1; 5],
    }
    .to_bytes();
    raw[0] = 0x50;
    std::fs::write(dir.path().join("train-labels-idx1-ubyte.gz"), gzip(&raw)).unwrap();
    expect_data_error(
        load(dir.path(), false),
        "train-labels-idx1-ubyte.gz",
        "wrong IDX magic",
    );
}

#[test]
fn wrong_dimensions_are_reported() {
    let dir = TempDir::new("dims");
    write_synthetic(dir.path(), 5, 5);
    let images = IdxArray {
        dims: vec![5, 32, 32],
        data: vec![0; 5 * 1024],
    };
    std::fs::write(
        dir.path().join("t10k-images-idx3-ubyte.gz"),
        gzip(&images.to_bytes()),
    )
    .unwrap();
    expect_data_error(
        load(dir.path(), false),
        "t10k-images-idx3-ubyte.gz",
        "wrong dimensions [5, 32, 32]",
    );
}

#[test]
fn label_above_nine_is_reported() {
    let dir = TempDir::new("label");
    write_synthetic(dir.path(), 5, 5);
    let labels = IdxArray {
        dims: vec![5],
        data: vec![1, 2, 12, 3, 4],
    };
    std::fs::write(
        dir.path().join("t10k-labels-idx1-ubyte.gz"),
        gzip(&labels.to_bytes()),
    )
    .unwrap();
    expect_data_error(
        load(dir.path(), false),
        "t10k-labels-idx1-ubyte.gz",
        "label 12 at index 2 is above 9",
    );
}

#[test]
fn count_disagreement_is_reported() {
    let dir = TempDir::new("count");
    write_synthetic(dir.path(), 5, 5);
    let labels = IdxArray {
        dims: vec![4],
        data: vec![1, 2, 3, 4],
    };
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte.gz"),
        gzip(&labels.to_bytes()),
    )
    .unwrap();
    expect_data_error(
        load(dir.path(), false),
        "train-labels-idx1-ubyte.gz",
        "holds 4 labels but",
    );
}

#[test]
fn truncated_idx_body_is_reported() {
    let dir = TempDir::new("truncidx");
    write_synthetic(dir.path(), 5, 5);
    let raw = IdxArray {
        dims: vec![5, 28, 28],
        data: vec![0; 5 * 784],
    }
    .to_bytes();
    std::fs::write(
        dir.path().join("train-images-idx3-ubyte.gz"),
        gzip(&raw[..raw.len() - 100]),
    )
    .unwrap();
    expect_data_error(
        load(dir.path(), false),
        "train-images-idx3-ubyte.gz",
        "truncated",
    );
}

#[test]
fn explicit_directory_without_data_is_an_error_not_a_download() {
    let dir = TempDir::new("empty");
    let options = DataOptions {
        data_dir: Some(dir.path().join("nowhere")),
        mirror: Some("http://127.0.0.1:9/".into()),
        ..Default::default()
    };
    let err = data::obtain(&options).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("does not exist"), "{err}");
    let options = DataOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..options
    };
    let err = data::obtain(&options).unwrap_err();
    assert!(
        err.to_string().contains("missing from the data directory"),
        "{err}"
    );
    assert!(err.to_string().contains("fmnist data download"), "{err}");
}

#[test]
fn real_data_verifies_and_loads_quickly() {
    let dir = common::real_data_dir();
    let started = std::time::Instant::now();
    let ds = load(&dir, true).unwrap();
    // Speed is the benchmark's business; this only guards against a pathological regression.
    assert!(started.elapsed().as_secs_f64() < 10.0);
    assert_eq!(ds.train.len(), 60_000);
    assert_eq!(ds.test.len(), 10_000);
    let (mean, std) = ds.train.pixel_stats();
    assert!(
        (mean - 0.2860).abs() < 1e-3 && (std - 0.3530).abs() < 1e-3,
        "{mean} {std}"
    );
    // Every class has 6,000 training and 1,000 test images.
    for c in 0..10u8 {
        assert_eq!(ds.train.labels.iter().filter(|&&l| l == c).count(), 6000);
        assert_eq!(ds.test.labels.iter().filter(|&&l| l == c).count(), 1000);
    }
}
