//! Exported models checked by real consumers: for a short-trained run of every architecture
//! (and the MLP with every activation, dropout and batch normalisation), `fmnist export` writes
//! ONNX that `onnx.checker` (full check) accepts and onnxruntime runs on the 10,000 test images
//! with fmnist's predictions and logits (`fmnist eval --logits`); the safetensors of the linear
//! model and the MLPs, computed with numpy, give fmnist's logits too. Needs Python with onnx,
//! onnxruntime, safetensors and numpy: `FMNIST_PYTHON`, which `.ci/run` sets up; skipped without
//! it, except under `CI=true`. Bad input gets one line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TempDir;

fn fmnist(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fmnist"))
        .args(args)
        .env_remove("FMNIST_DATA")
        .output()
        .expect("fmnist runs")
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Python that has the consumers, if any.
fn python() -> Option<PathBuf> {
    let python = PathBuf::from(std::env::var_os("FMNIST_PYTHON")?);
    let probe = "import onnx, onnxruntime, safetensors, numpy";
    let works = Command::new(&python).args(["-c", probe]).status();
    works.is_ok_and(|s| s.success()).then_some(python)
}

/// Trains 1 epoch of `recipe` (a configuration file's text) as `runs/name`.
fn train(runs: &Path, name: &str, recipe: &str) -> PathBuf {
    let file = runs.join(format!("{name}.toml"));
    std::fs::write(&file, recipe).unwrap();
    let data = common::real_data_dir();
    let (r, d, f) = (
        runs.to_str().unwrap(),
        data.to_str().unwrap(),
        file.to_str().unwrap(),
    );
    ok(fmnist(&[
        "--threads",
        "2",
        "train",
        "--quiet",
        "--config",
        f,
        "--runs-dir",
        r,
        "--name",
        name,
        "--data-dir",
        d,
    ]));
    runs.join(name)
}

/// Exports the run's best weights as `format` and checks them with the consumer script.
fn check(python: &Path, run: &Path, format: &str, tolerance: f64) -> String {
    let data = common::real_data_dir();
    let ext = if format == "onnx" {
        "onnx"
    } else {
        "safetensors"
    };
    let model = run.with_extension(ext);
    let logits = run.with_extension("npy");
    let (r, d) = (run.to_str().unwrap(), data.to_str().unwrap());
    ok(fmnist(&[
        "eval",
        "--run",
        r,
        "--data-dir",
        d,
        "--logits",
        logits.to_str().unwrap(),
    ]));
    let out = model.to_str().unwrap();
    ok(fmnist(&[
        "export",
        "--run",
        r,
        "--format",
        format,
        "--out",
        out,
        "--data-dir",
        d,
    ]));
    let script = common::project_dir().join("tests/python/check_export.py");
    let result = Command::new(python)
        .arg(script)
        .args([ext, out, logits.to_str().unwrap(), &tolerance.to_string()])
        .env("FMNIST_DATA", &data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&result.stdout).into_owned();
    assert!(
        result.status.success(),
        "{} {format}: {text}{}",
        run.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    text
}

const MLP: &str = "epochs = 1\n[model]\narch = \"mlp\"\nhidden = [60, 60]\n";

#[test]
fn every_architecture_exports_to_onnx_and_safetensors_that_consumers_agree_with() {
    let Some(python) = python() else {
        let fix = "set FMNIST_PYTHON to a Python with onnx, onnxruntime, safetensors and numpy \
                   (.ci/run makes one)";
        common::require("Python with the ONNX consumers", false, fix);
        return;
    };
    let dir = TempDir::new("export");
    let runs = dir.path();
    let linear = train(
        runs,
        "linear",
        "epochs = 1\n[model]\narch = \"linear\"\nhidden = []\n",
    );
    check(&python, &linear, "onnx", 1e-4);
    check(&python, &linear, "safetensors", 1e-5);
    for activation in [
        "relu",
        "elu",
        "selu",
        "tanh",
        "sigmoid",
        "gelu",
        "leaky-relu",
    ] {
        let recipe = format!("{MLP}activation = \"{activation}\"\ndropout = 0.2\n");
        let run = train(runs, &format!("mlp-{activation}"), &recipe);
        check(&python, &run, "onnx", 1e-4);
        check(&python, &run, "safetensors", 1e-5);
    }
    let normalised = format!("{MLP}batch_norm = true\n[data]\nnormalization = \"standardize\"\n");
    let run = train(runs, "mlp-bn-std", &normalised);
    check(&python, &run, "onnx", 1e-4);
    check(&python, &run, "safetensors", 1e-5);
    let convolutional = [
        (
            "cnn",
            "arch = \"cnn\"\nchannels = [8, 16]\ndense = 32\ndropout = 0.3",
        ),
        (
            "cnn-bnflag",
            "arch = \"cnn\"\nchannels = [8, 16]\ndense = 32\nbatch_norm = true",
        ),
        (
            "cnn-bn",
            "arch = \"cnn-bn\"\nchannels = [8, 16]\ndense = 32",
        ),
        (
            "resnet",
            "arch = \"resnet\"\nchannels = [8, 16]\nblocks = [1, 1]\ndropout = 0.2",
        ),
    ];
    for (name, model) in convolutional {
        let recipe = format!("epochs = 1\nbatch_size = 256\n[model]\n{model}\n");
        let run = train(runs, name, &recipe);
        check(&python, &run, "onnx", 1e-4);
    }
    // Trained with bfloat16 convolutions, evaluated in f32 on both sides.
    let recipe = "epochs = 1\nbatch_size = 256\nmatmul_precision = \"medium\"\n[model]\n\
                  arch = \"cnn\"\nchannels = [8, 16]\ndense = 32\n";
    let run = train(runs, "cnn-bf16", recipe);
    check(&python, &run, "onnx", 1e-2);
}

#[test]
fn exports_of_bad_runs_formats_and_paths_are_refused() {
    let dir = TempDir::new("export-bad");
    let runs = dir.path();
    let run = train(runs, "mlp", MLP);
    let r = run.to_str().unwrap();
    let out = runs.join("m.onnx");
    let o = out.to_str().unwrap();
    // The argument parser's own message: it lists the formats.
    let bad = fmnist(&["export", "--run", r, "--format", "tflite", "--out", o]);
    let err = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid value 'tflite'") && err.contains("safetensors"),
        "{err}"
    );
    let empty = runs.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = empty.to_str().unwrap();
    common::refused(
        fmnist(&["export", "--run", e, "--format", "onnx", "--out", o]),
        "not a run directory",
    );
    std::fs::remove_file(run.join("model-best.bpk")).unwrap();
    common::refused(
        fmnist(&["export", "--run", r, "--format", "onnx", "--out", o]),
        "model-best.bpk",
    );
    let unwritable = "/proc/fmnist/model.onnx";
    let out = fmnist(&[
        "export",
        "--run",
        r,
        "--weights",
        "last",
        "--format",
        "onnx",
        "--out",
        unwritable,
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(unwritable), "{err}");
    assert!(!Path::new(unwritable).exists());
}
