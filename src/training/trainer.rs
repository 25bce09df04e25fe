//! The training loop: shuffle, forward, cross-entropy, backward, optimiser step at the schedule's
//! rate for that batch; evaluate on the
//! validation data after every epoch; keep the best and the last weights; checkpoint at the end of
//! every epoch (and every N batches on request) so that a stopped run continues exactly.
//!
//! The loop is fmnist's own rather than `burn-train`'s `Learner` because a run must resume bit for
//! bit from a checkpoint taken in the middle of an epoch: every batch's randomness is derived from
//! the seed, the epoch and the batch ([`derive_seed`]), and the checkpoint holds the running
//! metrics, the optimiser, the weight average and lookahead's state.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::checkpoint::{Checkpoint, Position};
use super::config::{EarlyStopping, TrainConfig};
use super::distill::Teacher;
use super::history::EpochRecord;
use super::learner::Learner;
use super::run_dir::{RunDir, RunResult, Weights};
use crate::data::batcher::{Augmentation, Batcher};
use crate::data::prefetch::Prefetcher;
use crate::data::{FashionMnist, Split};
use crate::error::{Error, Result};
use crate::evaluation::{Tta, evaluate_with, predicted_classes};
use crate::model::Model;
use crate::ops::{cross_entropy, mixed_cross_entropy};

/// Receives progress events; the console, a study's progress view and tests implement it.
pub trait Reporter {
    /// Before the first epoch (of this process).
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

/// What to do when a batch's loss is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NanPolicy {
    /// Stop with an error naming the epoch, batch and learning rate; the last checkpoint stays.
    #[default]
    Stop,
    /// Skip the batch (no optimiser step) and go on; skipped batches are counted.
    Skip,
}

/// How a run is carried out; none of it changes the results.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Also checkpoint every this many batches (0: only at the end of each epoch).
    pub checkpoint_every: usize,
    /// When set (by SIGINT or SIGTERM), checkpoint after the current batch and stop.
    pub interrupt: Option<Arc<AtomicBool>>,
    pub on_nan: NanPolicy,
    /// When set (a study worker lost the run's lease to another worker), stop before the next
    /// batch without writing anything more: the run is no longer this process's.
    pub abandon: Option<Arc<AtomicBool>>,
}

/// SplitMix64 over the run's seed, an epoch, a batch and a purpose: every batch's randomness can
/// be recreated without replaying what came before it, which makes resuming exact.
pub fn derive_seed(seed: u64, epoch: usize, batch: usize, stream: u64) -> u64 {
    let mut z = seed
        ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (batch as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random streams derived from the seed.
const STREAM_SHUFFLE: u64 = 1;
const STREAM_DEVICE: u64 = 2;
const STREAM_AUGMENT: u64 = 3;

/// Runs `f` on this thread while the pool's other workers poll for work instead of sleeping:
/// a training step alternates short parallel kernels with serial work, and waking a sleeping
/// worker for each kernel costs tens of microseconds on this machine.
/// (W1 0.042 -> 0.030 s per epoch, W2 0.095 -> 0.084 s.) The pollers stop when `f` returns or
/// panics. Between jobs they run `idle` (which returns whether it found something to do).
fn with_polling_workers<R>(idle: impl Fn() -> bool + Sync, f: impl FnOnce() -> R) -> R {
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    rayon::in_place_scope(|scope| {
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(|_| {
                while !stop.load(Ordering::Relaxed) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) && !idle() {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        f()
    })
}

/// Keras's `EarlyStopping` on the validation loss; returns true when training should stop.
fn should_stop(config: &EarlyStopping, position: &mut Position, val_loss: f64) -> bool {
    if config.patience == 0 {
        return false;
    }
    if val_loss < position.stop_best.unwrap_or(f64::INFINITY) - config.min_delta {
        position.stop_best = Some(val_loss);
        position.stop_wait = 0;
        return false;
    }
    position.stop_wait += 1;
    position.stop_wait >= config.patience
}

/// Trains `config` on `data` from scratch, writing the configuration, model summary, history,
/// weights, checkpoints and result into `run`.
///
/// The run is reproducible from `config.seed` for a given thread count. Burn's device random
/// generator is process-wide, so train one model at a time per process.
pub fn train(
    config: &TrainConfig,
    data: &FashionMnist,
    run: &RunDir,
    device: &Device,
    reporter: &mut dyn Reporter,
) -> Result<RunResult> {
    train_with(
        config,
        data,
        run,
        device,
        reporter,
        &TrainOptions::default(),
    )
}

/// [`train`] with options.
pub fn train_with(
    config: &TrainConfig,
    data: &FashionMnist,
    run: &RunDir,
    device: &Device,
    reporter: &mut dyn Reporter,
    options: &TrainOptions,
) -> Result<RunResult> {
    run.write_config(config)?;
    crate::fsio::write_text(
        &run.file("summary.txt"),
        &format!("{}\n", config.model.summary()),
    )?;
    let train_device = device.clone().autodiff();
    train_device.seed(config.seed);
    let filters = first_layer_filters(config, data);
    let learner = Learner::new(config, &train_device, filters.as_deref());
    let position = Position::default();
    learner.save_checkpoint(run, &position)?;
    Trainer::new(config, data, run, device, options)?.run(learner, position, reporter)
}

/// Continues the run in `run` from its checkpoint, with the configuration saved there.
pub fn resume(
    data: &FashionMnist,
    run: &RunDir,
    device: &Device,
    reporter: &mut dyn Reporter,
    options: &TrainOptions,
) -> Result<RunResult> {
    let config = run.read_config()?;
    let checkpoint = Checkpoint::load(&run.path)?;
    if checkpoint.position.finished {
        return Err(Error::Run {
            path: run.path.clone(),
            reason: "the run has already finished; nothing to resume".into(),
        });
    }
    clean_temporaries(&run.path);
    let position = checkpoint.position.clone();
    let learner = Learner::restore(&config, checkpoint, run, device)?;
    Trainer::new(&config, data, run, device, options)?.run(learner, position, reporter)
}

/// The run's training and validation splits: the training set and the test set, or the
/// training set with its last `val_split` held out.
fn splits<'a>(config: &TrainConfig, data: &'a FashionMnist) -> (Cow<'a, Split>, Cow<'a, Split>) {
    if config.data.val_split > 0.0 {
        let (train, held_out) = data.train.clone().split_last(config.data.val_split);
        (Cow::Owned(train), Cow::Owned(held_out))
    } else {
        (Cow::Borrowed(&data.train), Cow::Borrowed(&data.test))
    }
}

/// The whitened first layer's kernels when `config` asks for them, from the images the run
/// trains on, scaled as the network sees them ([`crate::model::whiten`]).
fn first_layer_filters(config: &TrainConfig, data: &FashionMnist) -> Option<Vec<f32>> {
    use crate::model::whiten;
    config.model.whiten.then(|| {
        let (train, _) = splits(config, data);
        let batcher = Batcher::new(config.data.normalization, train.pixel_stats());
        whiten::whitening_filters(&train, &batcher, whiten::KERNEL, whiten::EPS)
    })
}

/// Removes temporary files left by a process killed while writing.
fn clean_temporaries(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// The run's wall clock: this process's time plus what earlier processes recorded.
struct RunClock {
    started: Instant,
    before: f64,
}

impl RunClock {
    fn elapsed(&self) -> f64 {
        self.before + self.started.elapsed().as_secs_f64()
    }
}

/// One run's fixed inputs.
struct Trainer<'a> {
    config: &'a TrainConfig,
    data: &'a FashionMnist,
    run: &'a RunDir,
    device: &'a Device,
    options: &'a TrainOptions,
    /// Borrowed from the dataset unless part of it is held out for validation.
    train_split: Cow<'a, Split>,
    val_split: Cow<'a, Split>,
    batcher: Batcher,
    /// `device` with autodiff, where the model trains.
    train_device: Device,
    augmentation: Augmentation,
    /// The run distilled from, when there is one.
    teacher: Option<Teacher>,
}

impl<'a> Trainer<'a> {
    fn new(
        config: &'a TrainConfig,
        data: &'a FashionMnist,
        run: &'a RunDir,
        device: &'a Device,
        options: &'a TrainOptions,
    ) -> Result<Self> {
        crate::ops::amx::set_matmul_precision(config.matmul_precision);
        let (train_split, val_split) = splits(config, data);
        let batcher = Batcher::new(config.data.normalization, train_split.pixel_stats());
        let augmentation = config.data.augmentation();
        let teacher = config
            .distill
            .enabled()
            .then(|| {
                let precision = config.matmul_precision;
                let runs_dir = run.path.parent().unwrap_or(Path::new("."));
                Teacher::load(
                    &config.distill,
                    runs_dir,
                    &batcher,
                    precision,
                    &data.train,
                    device,
                )
            })
            .transpose()?
            .map(|teacher| teacher.remembering(&train_split, augmentation));
        Ok(Trainer {
            config,
            data,
            run,
            device,
            options,
            train_split,
            val_split,
            batcher,
            train_device: device.clone().autodiff(),
            augmentation,
            teacher,
        })
    }

    /// An error when the run has been abandoned (see [`TrainOptions::abandon`]).
    fn check_abandoned(&self) -> Result<()> {
        let lost = self.options.abandon.as_ref();
        if lost.is_some_and(|flag| flag.load(Ordering::SeqCst)) {
            return Err(Error::LeaseLost {
                run: self.run.path.clone(),
            });
        }
        Ok(())
    }

    fn interrupted(&self) -> bool {
        self.options
            .interrupt
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::SeqCst))
    }

    fn run(
        &self,
        learner: Learner,
        position: Position,
        reporter: &mut dyn Reporter,
    ) -> Result<RunResult> {
        let prefetcher = Prefetcher::new(&self.batcher, &self.train_split);
        with_polling_workers(
            || prefetcher.help(),
            || self.run_epochs(&prefetcher, learner, position, reporter),
        )
    }

    /// Trains the epochs left from `position`, one after another.
    fn run_epochs(
        &self,
        prefetcher: &Prefetcher,
        mut learner: Learner,
        mut position: Position,
        reporter: &mut dyn Reporter,
    ) -> Result<RunResult> {
        let config = self.config;
        let clock = RunClock {
            started: Instant::now(),
            before: position.elapsed_seconds,
        };
        reporter.start(config, self.batches());
        let mut order: Vec<usize> = (0..self.train_split.len()).collect();
        while position.epoch < config.epochs && !position.finished {
            let epoch = position.epoch;
            reporter.epoch_start(epoch + 1, config.epochs, self.lr_at(epoch, 0));
            self.shuffle(&mut order, epoch);
            let seconds;
            (learner, seconds) =
                self.train_epoch(prefetcher, learner, &mut position, &order, &clock, reporter)?;
            let record = self.end_epoch(&learner, &mut position, seconds, &clock)?;
            reporter.epoch_end(&record, config.epochs);
            if !position.finished && self.interrupted() {
                return Err(Error::Interrupted {
                    run: self.run.path.clone(),
                    epoch: epoch + 2,
                    batch: 0,
                });
            }
        }
        self.finish(&position, learner.evaluated())
    }

    fn batches(&self) -> usize {
        let all = self.train_split.len().div_ceil(self.config.batch_size);
        match self.config.steps_per_epoch {
            0 => all,
            steps => steps.min(all),
        }
    }

    /// The rate for batch `batch` of `epoch`: cosine, one-cycle and warm-up move it every
    /// batch, the other schedules every epoch.
    fn lr_at(&self, epoch: usize, batch: usize) -> f64 {
        let config = self.config;
        config.schedule.lr_at_batch(
            config.optimizer.lr,
            epoch,
            batch,
            self.batches(),
            config.epochs,
        )
    }

    /// Each epoch shuffles `0..n` afresh, so that its order depends on the seed alone.
    fn shuffle(&self, order: &mut [usize], epoch: usize) {
        order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
        let seed = derive_seed(self.config.seed, epoch, 0, STREAM_SHUFFLE);
        order.shuffle(&mut StdRng::seed_from_u64(seed));
    }

    /// Trains the batches of `position.epoch` from `position.batch` on, checkpointing every
    /// `checkpoint_every` batches and when interrupted. Returns the learner and the epoch's
    /// training seconds.
    fn train_epoch(
        &self,
        prefetcher: &Prefetcher,
        mut learner: Learner,
        position: &mut Position,
        order: &[usize],
        clock: &RunClock,
        reporter: &mut dyn Reporter,
    ) -> Result<(Learner, f64)> {
        let (epoch, batches) = (position.epoch, self.batches());
        let mut epoch_clock = Instant::now();
        let chunks = order.chunks(self.config.batch_size).take(batches);
        for (b, indices) in chunks.clone().enumerate().skip(position.batch) {
            self.check_abandoned()?;
            let next = chunks.clone().nth(b + 1);
            learner = self.train_batch(prefetcher, learner, position, b, indices, next)?;
            let seen = position.seen.max(1) as f64;
            let (loss, acc) = (position.loss_sum / seen, position.correct as f64 / seen);
            reporter.batch(b + 1, batches, loss, acc);
            let every = self.options.checkpoint_every;
            let interrupted = self.interrupted();
            if b + 1 < batches && (interrupted || (every > 0 && (b + 1) % every == 0)) {
                position.epoch_seconds += epoch_clock.elapsed().as_secs_f64();
                position.elapsed_seconds = clock.elapsed();
                learner.save_checkpoint(self.run, position)?;
                epoch_clock = Instant::now();
                if interrupted {
                    return Err(Error::Interrupted {
                        run: self.run.path.clone(),
                        epoch: epoch + 1,
                        batch: b + 1,
                    });
                }
            }
        }
        let seconds = position.epoch_seconds + epoch_clock.elapsed().as_secs_f64();
        Ok((learner, seconds))
    }

    /// One optimiser step on batch `b` (`indices`) of `position.epoch` at the schedule's rate for
    /// that batch; queues `next` for the prefetcher. A non-finite loss stops the run or skips the
    /// batch, as `on_nan` says.
    fn train_batch(
        &self,
        prefetcher: &Prefetcher,
        learner: Learner,
        position: &mut Position,
        b: usize,
        indices: &[usize],
        next: Option<&[usize]>,
    ) -> Result<Learner> {
        let (config, epoch) = (self.config, position.epoch);
        let train_device = &self.train_device;
        let augmentation = Augmentation {
            resize: config.data.side_at(epoch),
            ..self.augmentation
        };
        train_device.seed(derive_seed(config.seed, epoch, b, STREAM_DEVICE));
        let batch = if augmentation.is_identity() {
            // The next batch is filled while this one trains.
            let batch = prefetcher.take(indices, train_device);
            if let Some(next) = next {
                prefetcher.queue(next);
            }
            batch
        } else {
            let mut rng = StdRng::seed_from_u64(derive_seed(config.seed, epoch, b, STREAM_AUGMENT));
            let split = &self.train_split;
            self.batcher
                .batch_augmented(split, indices, augmentation, &mut rng, train_device)
        };
        // The teacher's targets before the student's pass, so that the first layer has the only
        // reference to the images and works in place.
        let soft_targets = self
            .teacher
            .as_ref()
            .map(|teacher| teacher.soft_targets(indices, &batch));
        let logits = learner.model.forward(batch.images);
        let smoothing = config.label_smoothing as f32;
        let hard = match batch.mixed {
            Some(own) => mixed_cross_entropy(logits.clone(), batch.targets, own, smoothing),
            None => cross_entropy(logits.clone(), batch.targets, smoothing),
        };
        // The history records the labels' cross-entropy; with a teacher the mixture is trained.
        let loss_value = hard.clone().into_scalar::<f64>();
        let loss = match (&self.teacher, soft_targets) {
            (Some(teacher), Some(targets)) => teacher.loss(targets, logits.clone(), hard),
            _ => hard,
        };
        let lr = self.lr_at(epoch, b);
        position.batch = b + 1;
        if !loss_value.is_finite() {
            if self.options.on_nan == NanPolicy::Skip {
                position.skipped_batches += 1;
                return Ok(learner);
            }
            return Err(Error::Diverged {
                value: loss_value,
                epoch: epoch + 1,
                batch: b + 1,
                lr,
            });
        }
        position.correct += predicted_classes(logits.inner())
            .iter()
            .zip(indices)
            .filter(|&(&p, &i)| p == self.train_split.labels[i])
            .count() as i64;
        position.loss_sum += loss_value * indices.len() as f64;
        position.seen += indices.len();
        let grads = GradientsParams::from_grads(loss.backward(), &learner.model);
        Ok(learner.step(lr, grads, position))
    }

    /// Ends `position.epoch`: evaluates, records the epoch, saves the weights, the history and a
    /// checkpoint, and moves `position` to the next epoch (or marks the run finished).
    fn end_epoch(
        &self,
        learner: &Learner,
        position: &mut Position,
        seconds: f64,
        clock: &RunClock,
    ) -> Result<EpochRecord> {
        self.check_abandoned()?;
        let (config, run, epoch) = (self.config, self.run, position.epoch);
        let eval_start = Instant::now();
        let valid = learner.evaluated();
        let scores = evaluate_with(
            &valid,
            &self.val_split,
            &self.batcher,
            self.device,
            config.eval_batch_on(self.device),
            Tta::NONE,
        );
        let seen = position.seen.max(1) as f64;
        let record = EpochRecord {
            epoch: epoch + 1,
            lr: self.lr_at(epoch, 0),
            lr_last: Some(self.lr_at(epoch, self.batches() - 1)),
            loss: position.loss_sum / seen,
            acc: position.correct as f64 / seen,
            val_loss: scores.loss,
            val_acc: scores.accuracy,
            seconds,
            eval_seconds: eval_start.elapsed().as_secs_f64(),
            image_side: config.data.side_at(epoch),
        };
        let improved = position
            .history
            .best()
            .is_none_or(|b| record.val_loss < b.val_loss);
        position.history.epochs.push(record.clone());
        if improved {
            run.save_weights(&valid, Weights::Best)?;
        }
        run.save_weights(&valid, Weights::Last)?;
        position.history.write(&run.path)?;
        let stop = should_stop(&config.early_stopping, position, record.val_loss);
        position.epoch += 1;
        position.batch = 0;
        position.loss_sum = 0.0;
        position.correct = 0;
        position.seen = 0;
        position.epoch_seconds = 0.0;
        position.finished = stop || position.epoch == config.epochs;
        position.elapsed_seconds = clock.elapsed();
        learner.save_checkpoint(run, position)?;
        Ok(record)
    }

    /// Writes `result.json` once the run has ended.
    fn finish(&self, position: &Position, model: Model) -> Result<RunResult> {
        let (config, run) = (self.config, self.run);
        let history = &position.history;
        // Only a checkpoint written elsewhere (or edited) ends a run before its first epoch.
        let no_epoch = || Error::Run {
            path: run.path.clone(),
            reason: "the checkpoint says the run ended but records no epoch; train it again with \
                     --overwrite"
                .into(),
        };
        let best = history.best().cloned().ok_or_else(no_epoch)?;
        let last = history.last().cloned().ok_or_else(no_epoch)?;
        let stopped_early = history.epochs.len() < config.epochs;
        let restore = config.early_stopping.patience > 0 && config.early_stopping.restore_best;
        let final_model = if restore {
            run.load_weights(config.model.init(self.device), Weights::Best)?
        } else {
            model
        };
        // The per-epoch scores are the test scores unless the run holds out a validation split
        // or scores its final weights with test-time augmentation.
        let (test_loss, test_acc) = if config.data.val_split > 0.0 || config.data.tta() != Tta::NONE
        {
            let scores = evaluate_with(
                &final_model,
                &self.data.test,
                &self.batcher,
                self.device,
                config.eval_batch_on(self.device),
                config.data.tta(),
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
            total_seconds: position.elapsed_seconds,
            parameters: config.model.summary().total_params(),
            best,
            last,
            test_acc,
            test_loss,
            stopped_epoch: stopped_early.then_some(history.epochs.len()),
            final_weights: if restore {
                Weights::Best
            } else {
                Weights::Last
            },
            skipped_batches: position.skipped_batches,
        };
        run.write_result(&result)?;
        Ok(result)
    }
}
