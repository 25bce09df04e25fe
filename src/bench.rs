//! `fmnist bench`: the three workloads of `../shared/bench/WORKLOADS.md` (W1 linear, W2 the
//! study's MLP, W3 a 32/64-channel CNN), timed as the PyTorch and Keras peer scripts time them,
//! ending with the same JSON line so that the figures compare line by line; and fmnist's own
//! `speedrun` and `best` (`resnet`) recipes.

use std::time::Instant;

use burn::prelude::*;
use serde::Serialize;

use crate::data::FashionMnist;
use crate::data::batcher::Batcher;
use crate::error::Result;
use crate::evaluation::evaluate;
use crate::model::{Arch, ModelConfig};
use crate::training::config::TrainConfig;
use crate::training::history::steady_median;
use crate::training::optimizer::{OptimizerConfig, OptimizerKind};
use crate::training::schedule::ScheduleConfig;
use crate::training::trainer::Reporter;
use crate::training::{self, EpochRecord, RunDir};

/// The benchmark workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// W1: Flatten -> Dense(10); SGD 0.05, momentum 0.95; batch 1024; 10 epochs.
    Linear,
    /// W2: the 784-60-60-10 ReLU MLP; SGD 0.05, momentum 0.95; batch 1024; 10 epochs.
    Mlp,
    /// W3: Conv(32) -> pool -> Conv(64) -> pool -> Dense(128) -> Dropout(0.5) -> Dense(10); Adam
    /// 1e-3; batch 128; 3 epochs.
    Cnn,
    /// The `speedrun` preset's model and recipe (augmentation, EMA, flip TTA); 3 epochs; fmnist's
    /// own, no peer script runs it.
    Speedrun,
    /// The `best` preset's residual network and recipe (bfloat16 convolutions on AMX tiles where
    /// the CPU has them); 1 epoch, about 4-5 minutes on the 2-core machine, so only when asked for.
    Resnet,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Linear => "linear",
            Workload::Mlp => "mlp",
            Workload::Cnn => "cnn",
            Workload::Speedrun => "speedrun",
            Workload::Resnet => "resnet",
        }
    }

    /// The workload's training configuration, exactly as WORKLOADS.md defines it (W1-W3).
    pub fn config(self, epochs: Option<usize>) -> Result<TrainConfig> {
        let sgd = OptimizerConfig::default();
        let (model, optimizer, batch_size, default_epochs) = match self {
            Workload::Speedrun | Workload::Resnet => {
                let (preset, default_epochs) = match self {
                    Workload::Speedrun => ("speedrun", 3),
                    _ => ("best", 1),
                };
                let mut config = TrainConfig::preset(preset)?;
                config.epochs = epochs.unwrap_or(default_epochs);
                return Ok(config);
            }
            Workload::Linear => (ModelConfig::linear(), sgd, 1024, 10),
            Workload::Mlp => (ModelConfig::default(), sgd, 1024, 10),
            Workload::Cnn => (
                ModelConfig {
                    arch: Arch::Cnn,
                    channels: vec![32, 64],
                    dense: 128,
                    dropout: 0.5,
                    ..ModelConfig::default()
                },
                OptimizerConfig {
                    name: OptimizerKind::Adam,
                    lr: 1e-3,
                    epsilon: 1e-7,
                    ..OptimizerConfig::default()
                },
                128,
                3,
            ),
        };
        Ok(TrainConfig {
            epochs: epochs.unwrap_or(default_epochs),
            batch_size,
            eval_batch_size: batch_size,
            model,
            optimizer,
            schedule: ScheduleConfig::constant(),
            ..TrainConfig::default()
        })
    }
}

/// The final JSON line, with the peer scripts' keys first.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub framework: &'static str,
    pub workload: Workload,
    pub epochs: usize,
    pub batch_size: usize,
    pub sec_per_epoch_median: f64,
    pub images_per_sec: f64,
    pub eval_sec: f64,
    pub test_acc: f64,
    pub test_loss: f64,
    pub first_epoch_sec: f64,
    pub train_secs: Vec<f64>,
    /// Images per second through the trained model over the test set, batches of 1000.
    pub inference_images_per_sec: f64,
    /// Peak resident memory of this process, KiB.
    pub peak_rss_kb: u64,
    pub threads: usize,
    pub versions: serde_json::Value,
}

/// Prints a line per epoch in the peer scripts' format.
struct EpochLines;

impl Reporter for EpochLines {
    fn epoch_end(&mut self, r: &EpochRecord, _epochs: usize) {
        println!(
            "epoch {}: train {:.3}s eval {:.3}s loss {:.4} acc {:.4} test_loss {:.4} test_acc {:.4} lr {}",
            r.epoch, r.seconds, r.eval_seconds, r.loss, r.acc, r.val_loss, r.val_acc, r.lr
        );
    }
}

/// Peak resident set size of this process in KiB.
pub fn peak_rss_kb() -> u64 {
    #[cfg(unix)]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage fills the struct it is given.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0 {
            // SAFETY: initialised by the successful call above.
            return unsafe { usage.assume_init() }.ru_maxrss as u64;
        }
    }
    0
}

/// Runs one workload in this process.
pub fn run(
    workload: Workload,
    epochs: Option<usize>,
    data: &FashionMnist,
    device: &Device,
) -> Result<BenchResult> {
    let config = workload.config(epochs)?;
    let root = std::env::temp_dir().join(format!("fmnist-bench-{}", std::process::id()));
    let run = RunDir::create(&root, Some(workload.name()), workload.name(), true)?;
    let result = training::train(&config, data, &run, device, &mut EpochLines);
    let history = training::History::read(&run.path);
    let model = run.load_weights(config.model.init(device), training::Weights::Last);
    let _ = std::fs::remove_dir_all(&root);
    let (result, history, model) = (result?, history?, model?);
    let batcher = Batcher::new(config.data.normalization, (0.0, 1.0));
    let _ = evaluate(&model, &data.test, &batcher, device, 1000); // warm-up
    let started = Instant::now();
    let _ = evaluate(&model, &data.test, &batcher, device, 1000);
    let inference = data.test.len() as f64 / started.elapsed().as_secs_f64();
    let train_secs: Vec<f64> = history.epochs.iter().map(|r| r.seconds).collect();
    let sec_per_epoch = steady_median(train_secs.clone());
    Ok(BenchResult {
        framework: "fmnist-burn",
        workload,
        epochs: config.epochs,
        batch_size: config.batch_size,
        sec_per_epoch_median: sec_per_epoch,
        images_per_sec: data.train.len() as f64 / sec_per_epoch,
        eval_sec: steady_median(history.epochs.iter().map(|r| r.eval_seconds).collect()),
        test_acc: result.last.val_acc,
        test_loss: result.last.val_loss,
        first_epoch_sec: train_secs.first().copied().unwrap_or(0.0),
        train_secs,
        inference_images_per_sec: inference,
        peak_rss_kb: peak_rss_kb(),
        threads: rayon::current_num_threads(),
        versions: serde_json::json!({
            "fmnist": env!("CARGO_PKG_VERSION"),
            "burn": "0.22.1",
            "backend": if crate::ops::is_flex(device) { "flex" } else { "gpu" },
        }),
    })
}
