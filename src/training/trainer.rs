//! The training loop: shuffle, forward, cross-entropy, backward, optimiser step; evaluate on the
//! validation data after every epoch; keep the best and the last weights.

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::config::{EarlyStopping, TrainConfig};
use super::history::{EpochRecord, History};
use super::run_dir::{RunDir, RunResult, Weights};
use crate::data::batcher::Batcher;
use crate::data::{FashionMnist, Split};
use crate::error::{Error, Result};
use crate::evaluation::evaluate;

/// Receives progress events; the console, a study's progress view and tests implement it.
pub trait Reporter {
    /// Before the first epoch.
    fn start(&mut self, _config: &TrainConfig, _batches_per_epoch: usize) {}
    /// Before each epoch (`epoch` is 1-based).
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _lr: f64) {}
    /// After each batch, with the epoch's running mean loss and accuracy.
    fn batch(&mut self, _done: usize, _total: usize, _loss: f64, _acc: f64) {}
    /// After each epoch's evaluation.
    fn epoch_end(&mut self, _record: &EpochRecord, _epochs: usize) {}
}

/// A reporter that says nothing.
pub struct Silent;
impl Reporter for Silent {}

/// SplitMix64: derives independent seeds for each epoch and purpose from the run's one seed, so
/// that any epoch's randomness can be recreated without replaying the epochs before it.
pub fn derive_seed(seed: u64, epoch: usize, stream: u64) -> u64 {
    let mut z = seed
        ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random streams derived from the seed.
const STREAM_SHUFFLE: u64 = 1;
const STREAM_DEVICE: u64 = 2;
const STREAM_AUGMENT: u64 = 3;

/// Keras's `EarlyStopping` on the validation loss.
struct Stopper {
    patience: usize,
    min_delta: f64,
    best: f64,
    wait: usize,
}

impl Stopper {
    fn new(config: &EarlyStopping) -> Self {
        Stopper {
            patience: config.patience,
            min_delta: config.min_delta,
            best: f64::INFINITY,
            wait: 0,
        }
    }

    /// Records an epoch's validation loss; true when training should stop.
    fn should_stop(&mut self, val_loss: f64) -> bool {
        if self.patience == 0 {
            return false;
        }
        if val_loss < self.best - self.min_delta {
            self.best = val_loss;
            self.wait = 0;
            return false;
        }
        self.wait += 1;
        self.wait >= self.patience
    }
}

/// Trains `config` on `data`, writing the configuration, model summary, history, weights and
/// result into `run`.
///
/// The run is reproducible from `config.seed` for a given thread count. Burn's device random
/// generator is process-wide, so train one model at a time per process.
/// `device` is a plain (non-autodiff) device; training uses its autodiff form.
pub fn train(
    config: &TrainConfig,
    data: &FashionMnist,
    run: &RunDir,
    device: &Device,
    reporter: &mut dyn Reporter,
) -> Result<RunResult> {
    let started = Instant::now();
    run.write_config(config)?;
    crate::fsio::write_text(
        &run.file("summary.txt"),
        &format!("{}\n", config.model.summary()),
    )?;
    let (train_split, val_split): (Split, Split) = if config.data.val_split > 0.0 {
        data.train.clone().split_last(config.data.val_split)
    } else {
        (data.train.clone(), data.test.clone())
    };
    let batcher = Batcher::new(config.data.normalization, train_split.pixel_stats());
    let train_device = device.clone().autodiff();
    train_device.seed(config.seed);
    let mut model = config.model.init(&train_device);
    let mut optimizer = config.optimizer.init();
    let loss_fn = CrossEntropyLossConfig::new().init(&train_device);

    let n = train_split.len();
    let batches = n.div_ceil(config.batch_size);
    reporter.start(config, batches);
    let mut history = History::default();
    let mut order: Vec<usize> = (0..n).collect();
    let mut best_model = None;
    let mut stopper = Stopper::new(&config.early_stopping);
    let mut stopped_epoch = None;

    for epoch in 0..config.epochs {
        let lr = config
            .schedule
            .lr_at(config.optimizer.lr, epoch, config.epochs);
        reporter.epoch_start(epoch + 1, config.epochs, lr);
        train_device.seed(derive_seed(config.seed, epoch, STREAM_DEVICE));
        order.sort_unstable();
        order.shuffle(&mut StdRng::seed_from_u64(derive_seed(
            config.seed,
            epoch,
            STREAM_SHUFFLE,
        )));

        let mut augment_rng =
            StdRng::seed_from_u64(derive_seed(config.seed, epoch, STREAM_AUGMENT));
        let augmentation = config.data.augmentation();

        let epoch_start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0i64, 0usize);
        for (b, indices) in order.chunks(config.batch_size).enumerate() {
            let batch = batcher.batch_augmented(
                &train_split,
                indices,
                augmentation,
                &mut augment_rng,
                &train_device,
            );
            let logits = model.forward(batch.images);
            let loss = loss_fn.forward(logits.clone(), batch.targets.clone());
            let loss_value = loss.clone().into_scalar::<f64>();
            if !loss_value.is_finite() {
                return Err(Error::Diverged {
                    value: loss_value,
                    epoch: epoch + 1,
                    batch: b + 1,
                    lr,
                });
            }
            correct += logits
                .argmax(1)
                .squeeze_dim::<1>(1)
                .equal(batch.targets)
                .int()
                .sum()
                .into_scalar::<i64>();
            loss_sum += loss_value * indices.len() as f64;
            seen += indices.len();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(lr, model, grads);
            reporter.batch(
                b + 1,
                batches,
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
            );
        }
        let seconds = epoch_start.elapsed().as_secs_f64();

        let eval_start = Instant::now();
        let valid = model.valid();
        let scores = evaluate(&valid, &val_split, &batcher, device, config.eval_batch_size);
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / seen as f64,
            acc: correct as f64 / seen as f64,
            val_loss: scores.loss,
            val_acc: scores.accuracy,
            seconds,
            eval_seconds: eval_start.elapsed().as_secs_f64(),
        };
        let improved = history.best().is_none_or(|b| record.val_loss < b.val_loss);
        history.epochs.push(record.clone());
        if improved {
            run.save_weights(&valid, Weights::Best)?;
            best_model = Some(valid.clone());
        }
        run.save_weights(&valid, Weights::Last)?;
        history.write(&run.path)?;
        reporter.epoch_end(&record, config.epochs);
        if stopper.should_stop(record.val_loss) {
            stopped_epoch = Some(epoch + 1);
            break;
        }
    }

    let best = history.best().cloned().expect("at least one epoch ran");
    let last = history.last().cloned().expect("at least one epoch ran");
    let restore = config.early_stopping.patience > 0 && config.early_stopping.restore_best;
    let final_model = match (restore, best_model) {
        (true, Some(best_model)) => best_model,
        _ => model.valid(),
    };
    let (test_loss, test_acc) = if config.data.val_split > 0.0 {
        let scores = evaluate(
            &final_model,
            &data.test,
            &batcher,
            device,
            config.eval_batch_size,
        );
        (scores.loss, scores.accuracy)
    } else if restore {
        (best.val_loss, best.val_acc)
    } else {
        (last.val_loss, last.val_acc)
    };
    let result = RunResult {
        name: run.name(),
        epochs: history.epochs.len(),
        seconds_per_epoch: history.steady_seconds_per_epoch(),
        total_seconds: started.elapsed().as_secs_f64(),
        parameters: config.model.summary().total_params(),
        best,
        last,
        test_acc,
        test_loss,
        stopped_epoch,
        final_weights: if restore { "best" } else { "last" }.into(),
    };
    run.write_result(&result)?;
    Ok(result)
}
