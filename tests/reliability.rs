//! Reliability: exact resume after an interruption, kill -9 at random moments, the divergence
//! guard, damaged checkpoints, unwritable and full disks. Each test drives the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use burn::prelude::*;
use common::TempDir;
use fmnist::training::{RunDir, Weights};

fn fmnist() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fmnist"));
    cmd.env_remove("FMNIST_DATA");
    cmd
}

fn data_dir() -> String {
    common::real_data_dir().display().to_string()
}

fn run(args: &[&str]) -> Output {
    fmnist().args(args).output().expect("fmnist runs")
}

fn train_args<'a>(runs: &'a str, name: &'a str, data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--threads",
        "2",
        "train",
        "--quiet",
        "--runs-dir",
        runs,
        "--name",
        name,
        "--data-dir",
        data,
    ];
    args.extend_from_slice(extra);
    args
}

fn spawn(args: &[&str]) -> Child {
    fmnist()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fmnist starts")
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn history_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("history.csv"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// History without the timing columns.
fn metrics(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("history.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').take(6).collect::<Vec<_>>().join(","))
        .collect()
}

/// Every parameter value of a run's saved weights, in order.
fn weights(dir: &Path, which: Weights) -> Vec<f32> {
    let run = RunDir::open(dir).unwrap();
    let config = run.read_config().unwrap();
    let device = Device::flex();
    let model = run.load_weights(config.model.init(&device), which).unwrap();
    // Compare the parameter values, not the random parameter ids burnpack stores beside them.
    let mut values = Vec::new();
    struct Collect<'a>(&'a mut Vec<f32>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            self.0.extend(param.val().into_data().iter::<f32>());
        }
    }
    model.visit(&mut Collect(&mut values));
    values
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Trains with `recipe` (plus a checkpoint every 7 batches) whole, and again stopped by SIGINT
/// inside epoch 2 and resumed: the histories and weights must be identical. Returns the
/// whole run's metrics.
fn check_resume_is_exact(runs: &TempDir, recipe: &[&str]) -> Vec<String> {
    let r = runs.path().to_str().unwrap();
    let data = data_dir();
    let mut extra = recipe.to_vec();
    extra.extend_from_slice(&["--checkpoint-every", "7"]);
    let out = run(&train_args(r, "whole", &data, &extra));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let child = spawn(&train_args(r, "cut", &data, &extra));
    let cut = runs.path().join("cut");
    wait_for("the first epoch", || history_lines(&cut) >= 2);
    std::thread::sleep(Duration::from_millis(60)); // land inside epoch 2
    signal(&child, libc::SIGINT);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted: checkpoint saved at epoch"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("fmnist train --resume {}", cut.display())),
        "{stderr}"
    );
    assert!(!cut.join("result.json").exists());

    let out = run(&[
        "--threads",
        "2",
        "train",
        "--quiet",
        "--resume",
        cut.to_str().unwrap(),
        "--data-dir",
        &data,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whole = runs.path().join("whole");
    assert_eq!(metrics(&whole), metrics(&cut));
    assert_eq!(weights(&whole, Weights::Last), weights(&cut, Weights::Last));
    assert_eq!(weights(&whole, Weights::Best), weights(&cut, Weights::Best));
    // A finished run has nothing to resume.
    let out = run(&[
        "train",
        "--resume",
        cut.to_str().unwrap(),
        "--data-dir",
        &data,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already finished"));
    metrics(&whole)
}

#[test]
fn interrupted_then_resumed_run_equals_an_uninterrupted_one_bit_for_bit() {
    let runs = TempDir::new("resume-eq");
    // One-cycle moves the rate every batch: the resumed epoch must pick it up mid-way.
    let recipe = [
        "--preset",
        "seed-mlp",
        "--epochs",
        "4",
        "--dropout",
        "0.1",
        "--schedule",
        "one-cycle",
    ];
    check_resume_is_exact(&runs, &recipe);
}

/// The weight average and lookahead's slow weights and step count are in the checkpoint too.
#[test]
fn resuming_keeps_the_weight_average_and_lookahead_exact() {
    let runs = TempDir::new("resume-la");
    let mlp = "epochs = 4\nema_decay = 0.99\n[model]\narch = \"mlp\"\nhidden = [60, 60]\n\
               dropout = 0.1\n[optimizer]\nname = \"sgd\"\nlr = 0.05\nmomentum = 0.95\n";
    let (plain, lookahead) = (runs.path().join("plain.toml"), runs.path().join("la.toml"));
    std::fs::write(&plain, mlp).unwrap();
    std::fs::write(&lookahead, format!("{mlp}[lookahead]\nsteps = 5\n")).unwrap();
    let with = check_resume_is_exact(&runs, &["--config", lookahead.to_str().unwrap()]);
    // Lookahead takes part: without it the same recipe trains differently.
    let r = runs.path().to_str().unwrap();
    let data = data_dir();
    let out = run(&train_args(
        r,
        "plain",
        &data,
        &["--config", plain.to_str().unwrap()],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let without = metrics(&runs.path().join("plain"));
    assert_eq!(with[0], without[0]);
    assert_ne!(with[1..], without[1..]);
}

#[test]
fn kill_9_at_random_moments_always_leaves_a_resumable_checkpoint() {
    let runs = TempDir::new("kill9");
    let r = runs.path().to_str().unwrap();
    let data = data_dir();
    let extra = [
        "--preset",
        "seed-linear",
        "--epochs",
        "12",
        "--checkpoint-every",
        "5",
    ];
    let dir = runs.path().join("k");
    let dir_s = dir.to_str().unwrap().to_string();
    let resume_args = [
        "--threads",
        "2",
        "train",
        "--quiet",
        "--resume",
        &dir_s,
        "--data-dir",
        &data,
    ];
    // Deterministic "random" moments, in milliseconds after the checkpoint file exists.
    let mut state: u64 = 0x5eed;
    let mut killed = 0;
    let mut child = spawn(&train_args(r, "k", &data, &extra));
    wait_for("the first checkpoint", || {
        dir.join("checkpoint.ckpt").is_file()
    });
    for _ in 0..5 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Data loading takes ~0.3 s; most kills land while training or writing.
        let delay = 330 + (state >> 33) % 500;
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_some() {
            break; // it finished on its own
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        killed += 1;
        // Whatever instant the kill hit, the checkpoint on disk is complete and loadable.
        fmnist::training::checkpoint::Checkpoint::load(&dir).expect("a complete checkpoint");
        child = spawn(&resume_args);
    }
    let status = child.wait().unwrap();
    assert!(status.success() || killed > 0);
    if !dir.join("result.json").exists() {
        let out = run(&resume_args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(killed >= 3, "only {killed} kills landed");
    eprintln!("kill -9 landed {killed} times; the run resumed and finished each time");
    assert_eq!(history_lines(&dir), 13, "all 12 epochs recorded");
    // And the result is the one an uninterrupted run gives.
    let out = run(&train_args(r, "ref", &data, &extra));
    assert!(out.status.success());
    assert_eq!(metrics(&dir), metrics(&runs.path().join("ref")));
}

#[test]
fn divergence_stops_with_the_epoch_batch_and_rate_and_keeps_the_checkpoint() {
    let runs = TempDir::new("nan");
    let r = runs.path().to_str().unwrap();
    let data = data_dir();
    let out = run(&train_args(
        r,
        "nan",
        &data,
        &["--preset", "seed-mlp", "--epochs", "2", "--lr", "1e6"],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("training diverged: the loss became"),
        "{stderr}"
    );
    assert!(
        stderr.contains("at epoch 1, batch") && stderr.contains("learning rate 1000000"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    fmnist::training::checkpoint::Checkpoint::load(&runs.path().join("nan"))
        .expect("the last good checkpoint stays");

    let out = run(&train_args(
        r,
        "skip",
        &data,
        &[
            "--preset", "seed-mlp", "--epochs", "1", "--lr", "1e6", "--on-nan", "skip",
        ],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = std::fs::read_to_string(runs.path().join("skip/result.json")).unwrap();
    let skipped: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert!(skipped["skipped_batches"].as_u64().unwrap() > 0, "{result}");
}

#[test]
fn damaged_or_foreign_checkpoints_are_refused() {
    let runs = TempDir::new("ckpt");
    let r = runs.path().to_str().unwrap();
    let data = data_dir();
    for (name, preset) in [("lin", "seed-linear"), ("mlp", "seed-mlp")] {
        let child = spawn(&train_args(
            r,
            name,
            &data,
            &["--preset", preset, "--epochs", "3"],
        ));
        let dir = runs.path().join(name);
        wait_for("a checkpoint", || dir.join("checkpoint.ckpt").is_file());
        signal(&child, libc::SIGTERM);
        let out = child.wait_with_output().unwrap();
        assert!(
            matches!(out.status.code(), Some(130) | Some(0)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let resume = |dir: &PathBuf| {
        run(&[
            "train",
            "--resume",
            dir.to_str().unwrap(),
            "--data-dir",
            &data,
        ])
    };
    let lin = runs.path().join("lin");
    let mlp = runs.path().join("mlp");
    // Another model's checkpoint.
    std::fs::copy(mlp.join("checkpoint.ckpt"), lin.join("checkpoint.ckpt")).unwrap();
    let mut ck = fmnist::training::checkpoint::Checkpoint::load(&lin).unwrap();
    ck.position.finished = false;
    ck.save(&lin).unwrap();
    let out = resume(&lin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not fit this run's model"), "{stderr}");
    // A corrupt one.
    let path = mlp.join("checkpoint.ckpt");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let out = resume(&mlp);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("checkpoint is damaged (checksum mismatch)"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn unwritable_run_directory_is_a_clear_error() {
    let data = data_dir();
    let out = run(&[
        "train",
        "--runs-dir",
        "/etc/hostname/runs",
        "--epochs",
        "1",
        "--data-dir",
        &data,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot create the run directory") && stderr.contains("--runs-dir"),
        "{stderr}"
    );
}

/// A full disk: a 600 KiB tmpfs (needs root, as CI has) holds the run directory.
#[test]
fn a_full_disk_is_reported_and_leaves_no_torn_file() {
    let fix = "mounting a tmpfs needs root; CI runs as root";
    if !common::require("root", common::is_root(), fix) {
        return;
    }
    let mount = TempDir::new("fulldisk");
    let status = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=600k",
            "tmpfs",
            mount.path().to_str().unwrap(),
        ])
        .status()
        .expect("mount runs");
    assert!(
        status.success(),
        "mounting a tmpfs needs root (CI runs as root)"
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mount.path());
    let data = data_dir();
    let r = mount.path().to_str().unwrap();
    let out = run(&train_args(
        r,
        "full",
        &data,
        &[
            "--preset", "seed-mlp", "--hidden", "200,200", "--epochs", "2",
        ],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the disk is full"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    // Nothing half-written: no temporary files, and every file present parses.
    let dir = mount.path().join("full");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp-"), "temporary file left: {name}");
    }
    fmnist::training::TrainConfig::load(&dir.join("config.toml")).expect("config.toml is whole");
}
