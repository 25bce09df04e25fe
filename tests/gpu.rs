//! The GPU backend, through the binary: with `--features wgpu`, `fmnist --device wgpu` trains,
//! evaluates and predicts as `--device cpu` does, within the tolerances below, and checkpoints
//! move between the two backends in both directions. In CI the device is Mesa's llvmpipe (a
//! software Vulkan driver), so every workload here is a few batches.
//!
//! `cargo test --release --features wgpu --test gpu`; without the feature this file is empty.
//!
//! Why the tolerances hold: both backends compute in `f32` from the same initial weights (drawn
//! on the CPU from the seed, see `Learner::new`) and the same batches; only the order of the
//! sums inside products and reductions differs, about 1e-7 relative per operation. Measured on
//! llvmpipe (docs/gpu.md), largest differences in loss: the linear model 3e-8 after an epoch,
//! the MLP 4e-4, the CNN 6e-5 after 6 Adam steps, the narrow ResNet 1.7e-3 (Adam divides by the
//! gradients' size, so tiny differences in near-zero gradients become whole steps, and the batch
//! normalisations pass them on); in accuracy, up to 5 of 1,000 images for these barely trained
//! models, whose predictions are often near ties. The limits, several times those: 2e-3 in loss
//! (1e-2 for the ResNet), and 2e-3 of 10,000 images (linear, MLP) or 1e-2 of 1,000 (CNN; 2e-2
//! for the ResNet) in accuracy. A wrong operation moves the loss by 0.1 or more.
#![cfg(feature = "wgpu")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::TempDir;
use fmnist::device::Backend;
use fmnist::training::config::{MatmulPrecision, TrainConfig};
use fmnist::training::{self, History, RunDir, TrainOptions};

/// Whether a wgpu adapter opens here (else the test is skipped, or fails under `CI=true`).
fn wgpu_here() -> bool {
    common::require(
        "a Vulkan device",
        fmnist::device::open(Backend::Wgpu).is_ok(),
        "apt-get install mesa-vulkan-drivers",
    )
}

/// The real dataset, loaded once per test process.
fn real_data() -> &'static fmnist::data::FashionMnist {
    static DATA: std::sync::OnceLock<fmnist::data::FashionMnist> = std::sync::OnceLock::new();
    DATA.get_or_init(|| {
        fmnist::data::obtain(&fmnist::data::DataOptions {
            data_dir: Some(common::real_data_dir()),
            ..Default::default()
        })
        .unwrap()
    })
}

/// A data directory holding the first 3,000 training and 1,000 test images of the real data,
/// for the convolutional checks: evaluating 10,000 images takes llvmpipe half a minute.
fn real_subset(dir: &Path) -> PathBuf {
    use fmnist::data::idx::IdxArray;
    let data = real_data();
    let subset = dir.join("data");
    std::fs::create_dir_all(&subset).unwrap();
    for (split, n, images, labels) in [
        (
            &data.train,
            3000,
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
        ),
        (
            &data.test,
            1000,
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ),
    ] {
        let pixels = (0..n).flat_map(|i| split.image(i).to_vec()).collect();
        let images_array = IdxArray {
            dims: vec![n, 28, 28],
            data: pixels,
        };
        let labels_array = IdxArray {
            dims: vec![n],
            data: split.labels[..n].to_vec(),
        };
        std::fs::write(subset.join(images), images_array.to_bytes()).unwrap();
        std::fs::write(subset.join(labels), labels_array.to_bytes()).unwrap();
    }
    subset
}

/// `fmnist --threads 2 [--device DEVICE] ARGS` on the real data (unless `args` name a data
/// directory), with a private `XDG_RUNTIME_DIR` for Mesa; whatever its outcome.
fn run_fmnist(device: Option<&str>, args: &[&str]) -> Output {
    let runtime = std::env::temp_dir().join("fmnist-test-xdg");
    let _ = std::fs::create_dir_all(&runtime);
    let device = device.map(|d| vec!["--device", d]).unwrap_or_default();
    Command::new(env!("CARGO_BIN_EXE_fmnist"))
        .args(["--threads", "2"])
        .args(device)
        .args(args)
        .args(data_args(args))
        .env_remove("FMNIST_DATA")
        .env("XDG_RUNTIME_DIR", runtime)
        .output()
        .expect("fmnist runs")
}

/// [`run_fmnist`] on `device`, which must succeed.
fn fmnist(device: &str, args: &[&str]) -> Output {
    let out = run_fmnist(Some(device), args);
    assert!(
        out.status.success(),
        "{device} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `--data-dir` of the real data, unless `args` name their own.
fn data_args(args: &[&str]) -> Vec<String> {
    if args.contains(&"--data-dir") {
        return Vec::new();
    }
    vec![
        "--data-dir".into(),
        common::real_data_dir().display().to_string(),
    ]
}

fn train(device: &str, runs: &Path, name: &str, recipe: &[&str]) -> (String, History) {
    let mut args = vec![
        "train",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--name",
        name,
    ];
    args.extend_from_slice(recipe);
    let out = fmnist(device, &args);
    let history = History::read(&runs.join(name)).expect("a history");
    (String::from_utf8_lossy(&out.stdout).into_owned(), history)
}

/// Every epoch's training loss, validation loss and validation accuracy within the limits.
fn assert_agree(what: &str, a: &History, b: &History, loss_tol: f64, acc_tol: f64) {
    assert_eq!(a.epochs.len(), b.epochs.len(), "{what}: epochs");
    for (x, y) in a.epochs.iter().zip(&b.epochs) {
        let worst = [(x.loss - y.loss).abs(), (x.val_loss - y.val_loss).abs()];
        assert!(
            worst.iter().all(|d| *d <= loss_tol) && (x.val_acc - y.val_acc).abs() <= acc_tol,
            "{what}, epoch {}: loss {} / {}, val_loss {} / {}, val_acc {} / {}",
            x.epoch,
            x.loss,
            y.loss,
            x.val_loss,
            y.val_loss,
            x.val_acc,
            y.val_acc
        );
        eprintln!(
            "{what}, epoch {}: |d loss| {:.2e}, |d val_loss| {:.2e}, |d val_acc| {:.4}",
            x.epoch,
            worst[0],
            worst[1],
            (x.val_acc - y.val_acc).abs()
        );
    }
}

#[test]
fn linear_and_mlp_epochs_on_wgpu_agree_with_the_cpu() {
    if !wgpu_here() {
        return;
    }
    let runs = TempDir::new("gpu-dense");
    for preset in ["seed-linear", "seed-mlp"] {
        let recipe = ["--quiet", "--preset", preset, "--epochs", "1"];
        let (_, cpu) = train("cpu", runs.path(), &format!("{preset}-cpu"), &recipe);
        let (_, gpu) = train("wgpu", runs.path(), &format!("{preset}-wgpu"), &recipe);
        assert_agree(preset, &gpu, &cpu, 2e-3, 2e-3);
        let config = RunDir::open(&runs.path().join(format!("{preset}-wgpu")))
            .unwrap()
            .read_config()
            .unwrap();
        let backend = config.provenance.unwrap().backend;
        assert!(backend.starts_with("wgpu ("), "{backend}");
    }
}

/// A recipe file for a few batches of `preset`'s model, made narrow where the model is large,
/// without dropout (whose masks come from each backend's own generator), in `f32`.
fn few_steps_recipe(dir: &Path, preset: &str, channels: Option<Vec<usize>>) -> PathBuf {
    let mut config = TrainConfig::preset(preset).unwrap();
    config.model.dropout = 0.0;
    if let Some(channels) = channels {
        config.model.channels = channels;
    }
    config.matmul_precision = MatmulPrecision::Highest;
    config.steps_per_epoch = 3;
    config.epochs = 2;
    config.data.tta_flip = false;
    config.data.tta_shift = 0;
    config.eval_batch_size = 500;
    let path = dir.join(format!("{preset}-few.toml"));
    std::fs::write(&path, config.to_toml()).unwrap();
    path
}

#[test]
fn cnn_and_resnet_steps_on_wgpu_agree_with_the_cpu() {
    if !wgpu_here() {
        return;
    }
    let runs = TempDir::new("gpu-conv");
    let data = real_subset(runs.path());
    let limits = [
        ("cnn", None, 2e-3, 1e-2),
        ("best", Some(vec![8, 16, 32]), 1e-2, 2e-2),
    ];
    for (preset, channels, loss_limit, acc_limit) in limits {
        let file = few_steps_recipe(runs.path(), preset, channels);
        let recipe = [
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--no-verify",
        ];
        let (cpu_line, cpu) = train("cpu", runs.path(), &format!("{preset}-cpu"), &recipe);
        let (gpu_line, gpu) = train("wgpu", runs.path(), &format!("{preset}-wgpu"), &recipe);
        assert!(cpu_line.contains("on cpu (flex, 2 threads)"), "{cpu_line}");
        assert!(gpu_line.contains("on wgpu ("), "{gpu_line}");
        assert_agree(preset, &gpu, &cpu, loss_limit, acc_limit);
    }
}

#[test]
fn eval_and_predict_on_wgpu_agree_with_the_cpu() {
    if !wgpu_here() {
        return;
    }
    let runs = TempDir::new("gpu-eval");
    let recipe = ["--quiet", "--preset", "seed-linear", "--epochs", "1"];
    train("cpu", runs.path(), "linear", &recipe);
    let run = runs.path().join("linear");
    let run = run.to_str().unwrap();
    let json = |device: &str, args: &[&str]| -> serde_json::Value {
        let out = fmnist(device, args);
        serde_json::from_slice(&out.stdout).expect("one JSON line")
    };
    let (cpu, gpu) = (
        json("cpu", &["eval", "--run", run, "--json"]),
        json("wgpu", &["eval", "--run", run, "--json"]),
    );
    let (a, b) = (
        cpu["accuracy"].as_f64().unwrap(),
        gpu["accuracy"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 3e-4, "accuracy cpu {a}, wgpu {b}");
    let (a, b) = (cpu["loss"].as_f64().unwrap(), gpu["loss"].as_f64().unwrap());
    assert!((a - b).abs() <= 1e-4, "loss cpu {a}, wgpu {b}");

    // Test image 0 (an ankle boot) as a PNG.
    let data = real_data();
    let boot = image::GrayImage::from_raw(28, 28, data.test.image(0).to_vec()).unwrap();
    let picture = runs.path().join("boot.png");
    boot.save(&picture).unwrap();
    let picture = picture.to_str().unwrap();
    let predict = |device: &str| json(device, &["predict", "--run", run, "--json", picture]);
    let (cpu, gpu) = (predict("cpu"), predict("wgpu"));
    let guesses = |v: &serde_json::Value| v["predictions"].as_array().unwrap().clone();
    let (cpu, gpu) = (guesses(&cpu), guesses(&gpu));
    assert_eq!(cpu[0]["class"], gpu[0]["class"]);
    let (a, b) = (
        cpu[0]["probability"].as_f64().unwrap(),
        gpu[0]["probability"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 1e-4, "probability cpu {a}, wgpu {b}");
}

/// Stops a run after `batches` batches (as SIGINT does), leaving a checkpoint inside epoch 2.
struct StopAfter {
    batches: usize,
    seen: usize,
    stop: Arc<AtomicBool>,
}

impl training::Reporter for StopAfter {
    fn batch(&mut self, _done: usize, _total: usize, _loss: f64, _acc: f64) {
        self.seen += 1;
        if self.seen >= self.batches {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}

/// Trains `file` on `from` in this process until it stops after 4 batches (inside epoch 2).
fn checkpoint_on(from: Backend, file: &Path, data: &Path, dir: &Path) {
    let device = fmnist::device::open(from).unwrap().device;
    let config = TrainConfig::load(file).unwrap();
    let data = fmnist::data::obtain(&fmnist::data::DataOptions {
        data_dir: Some(data.to_path_buf()),
        no_verify: true,
        ..Default::default()
    })
    .unwrap();
    let run = RunDir::create(
        dir.parent().unwrap(),
        dir.file_name().unwrap().to_str(),
        "x",
        false,
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut reporter = StopAfter {
        batches: 4,
        seen: 0,
        stop: stop.clone(),
    };
    let options = TrainOptions {
        interrupt: Some(stop),
        ..Default::default()
    };
    let outcome = training::train_with(&config, &data, &run, &device, &mut reporter, &options);
    assert!(
        matches!(outcome, Err(fmnist::Error::Interrupted { .. })),
        "{outcome:?}"
    );
}

#[test]
fn checkpoints_move_between_wgpu_and_the_cpu() {
    if !wgpu_here() {
        return;
    }
    let runs = TempDir::new("gpu-resume");
    let data = real_subset(runs.path());
    let data_args = ["--data-dir", data.to_str().unwrap(), "--no-verify"];
    let file = few_steps_recipe(runs.path(), "cnn", Some(vec![8, 16]));
    let mut recipe = vec!["--quiet", "--config", file.to_str().unwrap()];
    recipe.extend_from_slice(&data_args);
    let (_, whole) = train("cpu", runs.path(), "whole", &recipe);
    for (from, to) in [(Backend::Wgpu, "cpu"), (Backend::Cpu, "wgpu")] {
        let cut = runs.path().join(format!("from-{}", from.name()));
        checkpoint_on(from, &file, &data, &cut);
        assert!(!cut.join("result.json").exists());
        let cut_dir = cut.to_str().unwrap();
        let mut resume = vec!["train", "--quiet", "--resume", cut_dir];
        resume.extend_from_slice(&data_args);
        fmnist(to, &resume);
        let resumed = History::read(&cut).unwrap();
        assert_agree(
            &format!("{} then {to}", from.name()),
            &resumed,
            &whole,
            2e-3,
            1e-2,
        );
        // And the finished run evaluates on the backend it started on.
        let mut eval = vec!["eval", "--run", cut_dir, "--json"];
        eval.extend_from_slice(&data_args);
        fmnist(from.name(), &eval);
    }
}

#[test]
fn a_batch_too_large_for_the_device_is_one_line_naming_the_fix() {
    if !wgpu_here() {
        return;
    }
    // 8,192 images make a 708 MB first activation in the CNN: more than wgpu lets one buffer be.
    let runs = TempDir::new("gpu-too-large");
    let runs = runs.path().to_str().unwrap();
    let out = run_fmnist(
        Some("wgpu"),
        &["train", "--quiet", "--preset", "cnn", "--runs-dir", runs]
            .into_iter()
            .chain([
                "--batch-size",
                "8192",
                "--steps-per-epoch",
                "1",
                "--epochs",
                "1",
            ])
            .collect::<Vec<_>>(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("error: the wgpu device failed: ")
            && lines[0].ends_with("try a smaller --batch-size, or --device cpu"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bench_study_and_export_run_on_wgpu() {
    if !wgpu_here() {
        return;
    }
    let dir = TempDir::new("gpu-commands");
    // bench: the same first steps on both devices, the device named in the JSON line.
    let steps = |device: &str| -> serde_json::Value {
        let out = fmnist(device, &["bench", "linear", "--batches", "3", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str(text.lines().last().expect("a JSON line")).expect("JSON")
    };
    let (cpu, gpu) = (steps("cpu"), steps("wgpu"));
    assert!(
        gpu["device"].as_str().unwrap().starts_with("wgpu ("),
        "{gpu}"
    );
    let losses = |v: &serde_json::Value| -> Vec<f64> {
        v["step_losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_f64().unwrap())
            .collect()
    };
    let (a, b) = (losses(&cpu), losses(&gpu));
    assert_eq!(a.len(), 3);
    assert!(
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-4),
        "{a:?} / {b:?}"
    );

    // study: one worker on the GPU, its report written.
    let file = dir.path().join("one.toml");
    std::fs::write(
        &file,
        "title = \"One\"\n[[group]]\nname = \"g\"\n[[group.run]]\nname = \"lin\"\npreset = \"seed-linear\"\nepochs = 1\n",
    )
    .unwrap();
    let out_dir = dir.path().join("study");
    let (file, out_dir_str) = (file.to_str().unwrap(), out_dir.to_str().unwrap());
    let out = fmnist("wgpu", &["study", file, "--out", out_dir_str, "--quiet"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("1 runs, 1 epochs in all, on wgpu ("),
        "{said}"
    );
    assert!(
        !said.contains("Starting"),
        "a GPU study trains in one process: {said}"
    );
    assert!(out_dir.join("report.md").is_file());

    // export: the same file from either device (the weights are data).
    let run = out_dir.join("runs/lin");
    let export = |device: &str| {
        let path = dir.path().join(format!("{device}.safetensors"));
        let (run, file) = (run.to_str().unwrap(), path.to_str().unwrap());
        fmnist(
            device,
            &[
                "export",
                "--run",
                run,
                "--format",
                "safetensors",
                "--out",
                file,
            ],
        );
        std::fs::read(&path).unwrap()
    };
    assert_eq!(export("cpu"), export("wgpu"));
}

#[test]
fn without_device_a_gpu_build_trains_on_a_card_and_never_on_a_software_rasteriser() {
    if !wgpu_here() {
        return;
    }
    let card = fmnist::device::open(Backend::Wgpu).unwrap().card;
    let runs = TempDir::new("gpu-default");
    let runs = runs.path().to_str().unwrap();
    let out = run_fmnist(
        None,
        &[
            "train",
            "--preset",
            "seed-linear",
            "--epochs",
            "1",
            "--runs-dir",
            runs,
        ],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = if card {
        "on wgpu ("
    } else {
        "on cpu (flex, 2 threads)"
    };
    assert!(said.contains(expected), "card: {card}: {said}");
}
