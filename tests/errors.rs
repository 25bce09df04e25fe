//! Every bad input answered by the binary with one line naming the file or option, the reason and
//! the fix, and exit code 2 — never a panic or a backtrace.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{TempDir, gzip, write_synthetic};
use fmnist::data::idx::IdxArray;

fn fmnist(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fmnist"))
        .args(args)
        .env_remove("FMNIST_DATA")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("fmnist runs")
}

fn assert_error(out: &Output, code: i32, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}

/// A synthetic data directory with one file replaced by `bytes` (gzipped).
fn broken_data(name: &str, raw: Option<Vec<u8>>, gz: Option<Vec<u8>>) -> TempDir {
    let dir = TempDir::new("bad-data");
    write_synthetic(dir.path(), 20, 10);
    let path = dir.path().join(name);
    std::fs::write(&path, gz.unwrap_or_else(|| gzip(&raw.unwrap()))).unwrap();
    dir
}

fn data_cmd(dir: &Path) -> Output {
    fmnist(&["data", "--no-verify", "--data-dir", dir.to_str().unwrap()])
}

#[test]
fn corrupt_data_files() {
    let truncated = {
        let bytes = gzip(
            &IdxArray {
                dims: vec![20, 28, 28],
                data: vec![3; 20 * 784],
            }
            .to_bytes(),
        );
        bytes[..bytes.len() / 2].to_vec()
    };
    // (file, decompressed content or none, raw gz bytes or none, expected message)
    type Case = (&'static str, Option<Vec<u8>>, Option<Vec<u8>>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "train-images-idx3-ubyte.gz",
            None,
            Some(truncated),
            "truncated or damaged gzip data",
        ),
        (
            "train-labels-idx1-ubyte.gz",
            Some(b"\x01\x02\x08\x01\x00\x00\x00\x14".to_vec()),
            None,
            "wrong IDX magic",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            Some(
                IdxArray {
                    dims: vec![10, 14, 56],
                    data: vec![0; 10 * 784],
                }
                .to_bytes(),
            ),
            None,
            "wrong dimensions [10, 14, 56]",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            Some(
                IdxArray {
                    dims: vec![10],
                    data: vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 10],
                }
                .to_bytes(),
            ),
            None,
            "label 10 at index 9 is above 9",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            Some(
                IdxArray {
                    dims: vec![9],
                    data: vec![1; 9],
                }
                .to_bytes(),
            ),
            None,
            "holds 9 labels but",
        ),
    ];
    for (file, raw, gz, message) in cases {
        let dir = broken_data(file, raw, gz);
        assert_error(
            &data_cmd(dir.path()),
            2,
            &[file, message, "fmnist data download"],
        );
    }
    // With verification on, synthetic files fail their checksum.
    let dir = TempDir::new("checksum");
    write_synthetic(dir.path(), 20, 10);
    assert_error(
        &fmnist(&[
            "train",
            "--epochs",
            "1",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]),
        2,
        &["train-images-idx3-ubyte.gz", "checksum mismatch"],
    );
}

#[test]
fn missing_or_unreadable_data_directory() {
    assert_error(
        &fmnist(&["data", "--data-dir", "/nonexistent"]),
        2,
        &["/nonexistent", "does not exist"],
    );
    assert_error(
        &fmnist(&["data", "--data-dir", "/etc/hostname"]),
        2,
        &["is not a directory"],
    );
    let empty = TempDir::new("empty-data");
    assert_error(
        &fmnist(&["train", "--data-dir", empty.path().to_str().unwrap()]),
        2,
        &[
            "missing from the data directory",
            "train-images-idx3-ubyte.gz",
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fmnist"))
        .args(["data"])
        .env("FMNIST_DATA", "/nonexistent/env-data")
        .output()
        .unwrap();
    assert_error(&out, 2, &["/nonexistent/env-data", "FMNIST_DATA"]);
}

#[test]
fn bad_configuration_files_and_values() {
    let dir = TempDir::new("bad-config");
    let cases = [
        (
            "unknown.toml",
            "epochs = 2\n[model]\nwidth = 3\n",
            "unknown.toml:3:1",
        ),
        ("type.toml", "batch_size = \"big\"\n", "type.toml:1:"),
        ("batch.toml", "batch_size = 0\n", "batch_size = 0"),
        ("lr.toml", "[optimizer]\nlr = -0.5\n", "optimizer.lr = -0.5"),
        (
            "dropout.toml",
            "[model]\ndropout = 1.0\n",
            "model.dropout = 1",
        ),
        ("epochs.toml", "epochs = 0\n", "epochs = 0"),
        ("act.toml", "[model]\nactivation = \"swish\"\n", "swish"),
        ("tta.toml", "[data]\ntta_shift = 9\n", "data.tta_shift = 9"),
        (
            "whiten-mlp.toml",
            "[model]\narch = \"mlp\"\nwhiten = true\n",
            "model.whiten: only a convolutional network",
        ),
        (
            "whiten-narrow.toml",
            "[model]\narch = \"cnn\"\nchannels = [8, 16]\nwhiten = true\n",
            "model.whiten: the first convolution has 8 channels",
        ),
        ("mixup.toml", "[data]\nmixup = -0.2\n", "data.mixup = -0.2"),
        ("cutmix.toml", "[data]\ncutmix = nan\n", "data.cutmix = NaN"),
        (
            "progressive-cnn.toml",
            "epochs = 5\n[model]\narch = \"cnn\"\n[data]\nprogressive = [16, 16]\n",
            "only model.arch = \"resnet\" takes other image sizes",
        ),
        (
            "progressive-side.toml",
            "epochs = 5\n[model]\narch = \"resnet\"\n[data]\nprogressive = [16, 14]\n",
            "data.progressive = [16, 14]: side 14: sides are 8, 12, 16, 20 or 24",
        ),
        (
            "progressive-all.toml",
            "epochs = 4\n[model]\narch = \"resnet\"\n[data]\nprogressive = [16, 16, 24, 24]\n",
            "4 epochs resized of 4: leave at least the last epoch at 28x28",
        ),
        (
            "progressive-shape.toml",
            "[data]\nprogressive = [[16, 2]]\n",
            "progressive-shape.toml:2:",
        ),
    ];
    for (name, text, needle) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        assert_error(
            &fmnist(&["train", "--config", path.to_str().unwrap()]),
            2,
            &[needle],
        );
    }
    assert_error(
        &fmnist(&["train", "--config", "/nonexistent.toml"]),
        1,
        &["/nonexistent.toml"],
    );
    assert_error(
        &fmnist(&["train", "--batch-size", "0"]),
        2,
        &["batch_size = 0"],
    );
    assert_error(&fmnist(&["--threads", "0", "summary"]), 2, &["--threads 0"]);
    let study = dir.path().join("study.toml");
    std::fs::write(
        &study,
        "[[group]]\nname = \"g\"\n[[group.run]]\nlearning_rate = 0.1\n",
    )
    .unwrap();
    assert_error(
        &fmnist(&["study", study.to_str().unwrap()]),
        2,
        &["study.toml:4:1", "unknown key `learning_rate`"],
    );
}

#[test]
fn bad_run_directories_and_outputs() {
    assert_error(
        &fmnist(&["eval", "--run", "/tmp"]),
        2,
        &["not a run directory"],
    );
    assert_error(
        &fmnist(&["train", "--resume", "/tmp"]),
        2,
        &["not a run directory"],
    );
    assert_error(
        &fmnist(&["plot", "/nonexistent-run", "--out", "x.png"]),
        2,
        &["not a run directory"],
    );
    assert_error(
        &fmnist(&["train", "--name", "a/b"]),
        2,
        &["--name: run name \"a/b\" is not a plain name"],
    );
}

/// A checkpoint that says every epoch ran but records none (written by another tool, or edited)
/// is refused with the run's directory and the fix, not a panic when the run ends.
#[test]
fn a_checkpoint_without_epochs_is_refused() {
    use fmnist::training::checkpoint::Checkpoint;
    let data = TempDir::new("no-epoch-data");
    write_synthetic(data.path(), 256, 64);
    let runs = TempDir::new("no-epoch-runs");
    let run = runs.path().join("lin");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--preset",
            "seed-linear",
            "--epochs",
            "1",
            "--no-verify",
        ];
        args.extend(["--data-dir", data.path().to_str().unwrap()]);
        args.extend(["--runs-dir", runs.path().to_str().unwrap(), "--name", "lin"]);
        args.extend(extra);
        fmnist(&args)
    };
    let out = train(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut checkpoint = Checkpoint::load(&run).unwrap();
    checkpoint.position.finished = false;
    checkpoint.position.history.epochs.clear();
    checkpoint.save(&run).unwrap();
    let resume = ["train", "--resume", run.to_str().unwrap(), "--no-verify"];
    let out = fmnist(&[&resume[..], &["--data-dir", data.path().to_str().unwrap()]].concat());
    assert_error(&out, 2, &["lin", "records no epoch", "--overwrite"]);
}
