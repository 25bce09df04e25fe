//! `fmnist bench`: the three workloads of `bench/WORKLOADS.md` (W1 linear, W2 the study's MLP,
//! W3 a 32/64-channel CNN; presets `w1`-`w3`), timed as the PyTorch and Keras peer scripts time them,
//! ending with the same JSON line so that the figures compare line by line; and fmnist's own
//! `speedrun` and `best` (`resnet`) recipes.

use std::time::Instant;

use burn::prelude::*;
use serde::Serialize;

use crate::data::FashionMnist;
use crate::data::batcher::Batcher;
use crate::error::Result;
use crate::evaluation::evaluate;
use crate::training::config::TrainConfig;
use crate::training::history::steady_median;
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
    /// A study's claims: 10,000 runs claimed and completed one by one, and the study's state
    /// listed with all of them pending and all done. No training; only when asked for.
    Claims,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Linear => "linear",
            Workload::Mlp => "mlp",
            Workload::Cnn => "cnn",
            Workload::Speedrun => "speedrun",
            Workload::Resnet => "resnet",
            Workload::Claims => "claims",
        }
    }

    /// The preset that defines the workload (W1-W3 as `bench/WORKLOADS.md` defines them) and
    /// the epochs it runs by default; none for `claims`, which trains nothing.
    pub fn preset(self) -> Option<(&'static str, usize)> {
        match self {
            Workload::Linear => Some(("w1", 10)),
            Workload::Mlp => Some(("w2", 10)),
            Workload::Cnn => Some(("w3", 3)),
            Workload::Speedrun => Some(("speedrun", 3)),
            Workload::Resnet => Some(("best", 1)),
            Workload::Claims => None,
        }
    }

    /// The workload's training configuration: its preset, for `epochs` or its default.
    pub fn config(self, epochs: Option<usize>) -> Result<TrainConfig> {
        let (preset, default_epochs) = self.preset().ok_or_else(|| {
            crate::Error::Usage(format!("{}: not a training workload", self.name()))
        })?;
        let mut config = TrainConfig::preset(preset)?;
        config.epochs = epochs.unwrap_or(default_epochs);
        Ok(config)
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

/// What `fmnist bench WORKLOAD --batches N` measures: N training steps (batch assembly,
/// forward, loss, backward, optimiser step, weight average), timed one by one through the
/// training loop itself.
#[derive(Debug, Clone, Serialize)]
pub struct StepsResult {
    pub framework: &'static str,
    pub workload: Workload,
    pub steps: usize,
    pub batch_size: usize,
    /// The median of steps 2..N (the first includes warm-up).
    pub sec_per_step_median: f64,
    pub step_secs: Vec<f64>,
    /// The mean training loss of the epoch's batches so far, after each step (the same seed gives
    /// the same initial weights and batches on every backend, so these compare across devices).
    pub step_losses: Vec<f64>,
    /// The median step times the epoch's steps.
    pub sec_per_epoch_implied: f64,
    pub peak_rss_kb: u64,
    pub threads: usize,
    /// The device, as the training line names it.
    pub device: String,
}

/// Times each batch as the training loop reports it, and asks the loop to stop after `steps`
/// (through the interrupt flag, as SIGINT does).
struct StepTimer {
    steps: usize,
    last: Instant,
    secs: Vec<f64>,
    losses: Vec<f64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Reporter for StepTimer {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _lr: f64) {
        self.last = Instant::now();
    }

    fn batch(&mut self, _done: usize, _total: usize, loss: f64, _acc: f64) {
        self.secs.push(self.last.elapsed().as_secs_f64());
        self.losses.push(loss);
        println!(
            "step {}: {:.4}s, loss {loss:.4}",
            self.secs.len(),
            self.secs[self.secs.len() - 1]
        );
        if self.secs.len() >= self.steps {
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.last = Instant::now();
    }
}

/// Times `steps` training steps of a workload in this process.
pub fn run_steps(
    workload: Workload,
    steps: usize,
    data: &FashionMnist,
    device: &Device,
) -> Result<StepsResult> {
    let config = workload.config(None)?;
    let root = std::env::temp_dir().join(format!("fmnist-bench-{}", std::process::id()));
    let run = RunDir::create(&root, Some(workload.name()), workload.name(), true)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut timer = StepTimer {
        steps: steps.max(1),
        last: Instant::now(),
        secs: Vec::new(),
        losses: Vec::new(),
        stop: stop.clone(),
    };
    let options = training::TrainOptions {
        interrupt: Some(stop),
        ..Default::default()
    };
    let outcome = training::train_with(&config, data, &run, device, &mut timer, &options);
    let _ = std::fs::remove_dir_all(&root);
    match outcome {
        Ok(_) | Err(crate::Error::Interrupted { .. }) => {}
        Err(e) => return Err(e),
    }
    let median = steady_median(timer.secs.clone());
    Ok(StepsResult {
        framework: "fmnist-burn",
        workload,
        steps: timer.secs.len(),
        batch_size: config.batch_size,
        sec_per_step_median: median,
        step_secs: timer.secs,
        step_losses: timer.losses,
        sec_per_epoch_implied: median * data.train.len().div_ceil(config.batch_size) as f64,
        peak_rss_kb: peak_rss_kb(),
        threads: rayon::current_num_threads(),
        device: crate::device::current().map_or_else(|_| String::new(), |c| c.label.clone()),
    })
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
            "backend": crate::device::current().map_or_else(|_| String::new(), |c| c.label.clone()),
        }),
    })
}

/// What `fmnist bench claims` measures.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimsResult {
    pub workload: &'static str,
    pub runs: usize,
    /// Median and worst milliseconds of one claim (lease by hard link, then done marker).
    pub claim_ms_median: f64,
    pub claim_ms_max: f64,
    /// Milliseconds to list the claims directory, and to work out the whole study's status
    /// (every run's state, epochs and ETA), with every run pending and with every run done.
    pub list_ms_pending: f64,
    pub status_ms_pending: f64,
    pub list_ms_done: f64,
    pub status_ms_done: f64,
}

/// Claims and completes `runs` runs of a synthetic study (one run per seed) in a temporary
/// directory, timing each claim and the listing of the study's state.
pub fn claims(runs: usize) -> Result<ClaimsResult> {
    use crate::study::claims::{Claims, Holder};
    let seeds: Vec<String> = (0..runs).map(|s| s.to_string()).collect();
    let text = format!(
        "[[group]]\nname = \"seeds\"\n[[group.run]]\nname = \"r\"\nseed = [{}]\n",
        seeds.join(", ")
    );
    let study = crate::study::Study::parse(&text, std::path::Path::new("claims.toml"))?;
    let dir = std::env::temp_dir().join(format!("fmnist-bench-claims-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let claims = Claims::open(&dir, std::time::Duration::from_secs(60))?;
    let ms = |since: Instant| since.elapsed().as_secs_f64() * 1e3;
    let timed_state = || -> Result<(f64, f64)> {
        let started = Instant::now();
        claims.list()?;
        let list = ms(started);
        let started = Instant::now();
        crate::study::status::status(&study, &dir, &claims)?;
        Ok((list, ms(started)))
    };
    let (list_ms_pending, status_ms_pending) = timed_state()?;
    let holder = Holder::this_process();
    let mut times = Vec::with_capacity(runs);
    for unit in crate::study::runner::units(&study) {
        let started = Instant::now();
        if !claims.claim(&unit.run.name, &holder)? {
            return Err(crate::Error::Usage(format!(
                "{}: claimed twice",
                unit.run.name
            )));
        }
        claims.complete(&unit.run.name, &unit.hash)?;
        times.push(ms(started));
    }
    let (list_ms_done, status_ms_done) = timed_state()?;
    let _ = std::fs::remove_dir_all(&dir);
    let worst = times.iter().copied().fold(0.0, f64::max);
    Ok(ClaimsResult {
        workload: "claims",
        runs,
        claim_ms_median: steady_median(times),
        claim_ms_max: worst,
        list_ms_pending,
        status_ms_pending,
        list_ms_done,
        status_ms_done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Arch;
    use crate::training::optimizer::OptimizerKind;
    use crate::training::schedule::ScheduleKind;

    /// The presets hold the workloads as `bench/WORKLOADS.md` defines them.
    #[test]
    fn workload_presets_follow_their_definitions() -> Result<()> {
        let w1 = Workload::Linear.config(None)?;
        assert_eq!(
            (w1.model.arch, w1.epochs, w1.batch_size),
            (Arch::Linear, 10, 1024)
        );
        assert_eq!((w1.optimizer.lr, w1.optimizer.momentum), (0.05, 0.95));
        let w2 = Workload::Mlp.config(None)?;
        assert_eq!(
            (w2.model.arch, w2.model.hidden.as_slice()),
            (Arch::Mlp, &[60, 60][..])
        );
        let w3 = Workload::Cnn.config(Some(5))?;
        assert_eq!(
            (w3.model.arch, w3.epochs, w3.batch_size),
            (Arch::Cnn, 5, 128)
        );
        assert_eq!(
            (w3.model.channels.as_slice(), w3.model.dense),
            (&[32, 64][..], 128)
        );
        assert_eq!(
            (w3.model.dropout, w3.optimizer.name),
            (0.5, OptimizerKind::Adam)
        );
        assert_eq!((w3.optimizer.lr, w3.optimizer.epsilon), (1e-3, 1e-7));
        for w in [w1, w2, w3] {
            assert_eq!(w.schedule.name, ScheduleKind::Constant);
            assert_eq!((w.label_smoothing, w.ema_decay), (0.0, 0.0));
            assert!(w.data.augmentation().is_identity());
        }
        Ok(())
    }
}
