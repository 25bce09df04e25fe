//! Runs a study: trains each planned run in order, reuses runs already completed with the same
//! recipe, shows the study's progress, then writes the report.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::{PlannedRun, Study};
use crate::data::FashionMnist;
use crate::error::Result;
use crate::training::checkpoint::Checkpoint;
use crate::training::config::{Provenance, TrainConfig};
use crate::training::progress::epoch_line;
use crate::training::{self, EpochRecord, History, Reporter, RunDir, RunResult, TrainOptions};

/// A run of the study, trained or reused.
#[derive(Debug, Clone)]
pub struct CompletedRun {
    pub planned: PlannedRun,
    /// Where its files are (another run's directory when two runs share a recipe).
    pub dir: PathBuf,
    pub history: History,
    pub result: RunResult,
    /// True when it was not trained in this invocation.
    pub reused: bool,
}

/// Options for [`run`].
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// The study's output directory: `runs/`, `plots/`, `report.html`, `report.md`.
    pub out_dir: PathBuf,
    /// Retrain every run even when a completed one with the same recipe exists.
    pub force: bool,
    /// Print only the run summaries.
    pub quiet: bool,
    /// Provenance template recorded in each run's configuration.
    pub provenance: Provenance,
    /// Checkpointing and interruption, passed to every run.
    pub train: TrainOptions,
}

/// Trains (or reuses) every run of `study` and returns them group by group.
pub fn run(
    study: &Study,
    data: &FashionMnist,
    device: &Device,
    options: &StudyOptions,
) -> Result<Vec<Vec<CompletedRun>>> {
    let runs_root = options.out_dir.join("runs");
    std::fs::create_dir_all(&runs_root).map_err(|e| crate::Error::io(&runs_root, e))?;
    let total_runs = study.runs().count();
    let mut progress = StudyProgress::new(study.total_epochs(), options.quiet);
    let mut by_recipe: HashMap<String, CompletedRun> = HashMap::new();
    let mut groups = Vec::new();
    let mut k = 0;
    for group in &study.groups {
        let mut done = Vec::new();
        for planned in &group.runs {
            k += 1;
            let recipe = planned.config.recipe().to_toml();
            let dir = runs_root.join(&planned.name);
            let label = format!("[{k}/{total_runs}] {}/{}", group.name, planned.name);
            let completed = if let Some(same) = by_recipe.get(&recipe) {
                progress.skip(planned.config.epochs);
                progress.say(&format!(
                    "{label}: same recipe as {}, reusing it",
                    same.planned.name
                ));
                CompletedRun {
                    planned: planned.clone(),
                    reused: true,
                    ..same.clone()
                }
            } else if let Some(existing) = (!options.force)
                .then(|| completed_run(&dir, &planned.config))
                .flatten()
            {
                progress.skip(planned.config.epochs);
                progress.say(&format!(
                    "{label}: already complete, reusing {}",
                    dir.display()
                ));
                CompletedRun {
                    planned: planned.clone(),
                    dir,
                    history: existing.0,
                    result: existing.1,
                    reused: true,
                }
            } else {
                let resumable = !options.force && resumable(&dir, &planned.config);
                let run_dir = if resumable {
                    progress.say(&format!("{label}: resuming from its checkpoint"));
                    RunDir::open(&dir)?
                } else {
                    progress.say(&format!(
                        "{label}: training {} epochs",
                        planned.config.epochs
                    ));
                    RunDir::create(&runs_root, Some(&planned.name), &planned.name, true)?
                };
                let mut config = planned.config.clone();
                config.provenance = Some(Provenance {
                    preset: format!("study {}", study.source.display()),
                    ..options.provenance.clone()
                });
                progress.begin_run(&label, config.epochs);
                let result = if resumable {
                    training::resume(data, &run_dir, device, &mut progress, &options.train)?
                } else {
                    training::train_with(
                        &config,
                        data,
                        &run_dir,
                        device,
                        &mut progress,
                        &options.train,
                    )?
                };
                progress.end_run();
                progress.say(&format!(
                    "{label}: best epoch {} (test loss {:.4}, acc {:.4}), final acc {:.4}, {:.2}s/epoch",
                    result.best.epoch,
                    result.best.val_loss,
                    result.best.val_acc,
                    result.test_acc,
                    result.seconds_per_epoch
                ));
                CompletedRun {
                    planned: planned.clone(),
                    dir: run_dir.path.clone(),
                    history: History::read(&run_dir.path)?,
                    result,
                    reused: false,
                }
            };
            by_recipe.insert(recipe, completed.clone());
            done.push(completed);
        }
        groups.push(done);
    }
    progress.finish();
    Ok(groups)
}

/// Whether `dir` holds an unfinished run of `config`'s recipe with a usable checkpoint.
fn resumable(dir: &Path, config: &TrainConfig) -> bool {
    let Ok(run) = RunDir::open(dir) else {
        return false;
    };
    run.read_config()
        .is_ok_and(|saved| saved.recipe() == config.recipe())
        && Checkpoint::load(dir).is_ok_and(|c| !c.position.finished)
}

/// The history and result of a finished run in `dir` trained with `config`'s recipe, if any.
fn completed_run(dir: &Path, config: &TrainConfig) -> Option<(History, RunResult)> {
    let run = RunDir::open(dir).ok()?;
    let saved = run.read_config().ok()?;
    if saved.recipe() != config.recipe() {
        return None;
    }
    let result = run.read_result().ok()?;
    let history = History::read(dir).ok()?;
    (history.epochs.len() == result.epochs).then_some((history, result))
}

/// The whole study's progress: an overall bar with ETA and the current run's epoch bar on a
/// terminal; plain lines otherwise.
struct StudyProgress {
    interactive: bool,
    quiet: bool,
    bars: MultiProgress,
    overall: ProgressBar,
    epoch: Option<ProgressBar>,
    started: Instant,
    /// Epochs trained in this invocation and the seconds they took (for the ETA).
    trained_epochs: usize,
    trained_seconds: f64,
    label: String,
}

impl StudyProgress {
    fn new(total_epochs: usize, quiet: bool) -> Self {
        let interactive = std::io::stderr().is_terminal() && !quiet;
        let bars = MultiProgress::new();
        let overall = if interactive {
            let bar = bars.add(ProgressBar::new(total_epochs as u64));
            bar.set_style(
                ProgressStyle::with_template("Study [{bar:30}] {pos}/{len} epochs, ETA {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        StudyProgress {
            interactive,
            quiet,
            bars,
            overall,
            epoch: None,
            started: Instant::now(),
            trained_epochs: 0,
            trained_seconds: 0.0,
            label: String::new(),
        }
    }

    fn say(&self, line: &str) {
        if self.interactive {
            let _ = self.bars.println(line);
        } else {
            println!("{line}");
        }
    }

    fn skip(&mut self, epochs: usize) {
        self.overall.inc(epochs as u64);
    }

    fn begin_run(&mut self, label: &str, epochs: usize) {
        self.label = label.to_string();
        if self.interactive {
            let bar = self.bars.add(ProgressBar::new(epochs as u64));
            bar.set_style(
                ProgressStyle::with_template("{prefix} epoch {pos}/{len} [{bar:20}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            self.epoch = Some(bar);
        }
    }

    fn end_run(&mut self) {
        if let Some(bar) = self.epoch.take() {
            bar.finish_and_clear();
            self.bars.remove(&bar);
        }
    }

    fn finish(&self) {
        self.overall.finish_and_clear();
        if !self.quiet {
            println!(
                "Study finished in {:.1}s",
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

impl Reporter for StudyProgress {
    fn batch(&mut self, done: usize, total: usize, loss: f64, acc: f64) {
        if let Some(bar) = &self.epoch {
            bar.set_message(format!(
                "batch {done}/{total} - loss: {loss:.4} - acc: {acc:.4}"
            ));
        }
    }

    fn epoch_end(&mut self, record: &EpochRecord, epochs: usize) {
        self.trained_epochs += 1;
        self.trained_seconds += record.seconds + record.eval_seconds;
        self.overall.inc(1);
        let remaining = self.overall.length().unwrap_or(0) - self.overall.position();
        let eta = remaining as f64 * self.trained_seconds / self.trained_epochs as f64;
        self.overall.set_message(format!("{:.0}s", eta));
        if let Some(bar) = &self.epoch {
            bar.set_position(record.epoch as u64);
        } else if !self.quiet
            && (record.epoch == 1 || record.epoch.is_multiple_of(10) || record.epoch == epochs)
        {
            println!("  {} {}", self.label, epoch_line(record, epochs));
        }
    }
}
