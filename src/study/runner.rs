//! Runs a study: claims its runs one at a time ([`claims`](super::claims)) and trains them,
//! resuming a run from its checkpoint when one is there, until no run of this worker's share is
//! left; then gathers every run's results for the report ([`crate::report`]). One process, many
//! processes on one machine, and workers on many machines sharing the study directory all go
//! through the same claims, so each run is trained once.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::prelude::*;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::claims::{Claim, Claims, Holder, unix_now};
use super::{PlannedRun, Study};
use crate::data::FashionMnist;
use crate::error::{Error, Result};
use crate::fsio;
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

/// Which runs a worker takes: all of them, or every `count`-th from `index` (a static split for
/// schedulers that start one task per index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    fn takes(&self, unit: usize) -> bool {
        unit % self.count == self.index
    }
}

/// Options for [`run`].
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// The study's output directory: `runs/`, `claims/`, `plots/`, `report.html`, `report.md`.
    pub out_dir: PathBuf,
    /// Retrain every run even when a completed one with the same recipe exists.
    pub force: bool,
    /// Print only the run summaries.
    pub quiet: bool,
    /// Provenance template recorded in each run's configuration.
    pub provenance: Provenance,
    /// Checkpointing and interruption, passed to every run.
    pub train: TrainOptions,
    /// A lease whose heartbeat is older than this is taken over by another worker.
    pub lease_timeout: Duration,
    /// This worker's share of the runs.
    pub shard: Shard,
}

/// A unit of work: the first run of each distinct recipe (runs that share a recipe are trained
/// once), with the recipe's hash, which identifies the run together with its name.
pub struct Unit<'a> {
    pub run: &'a PlannedRun,
    pub hash: String,
}

/// The study's units in order.
pub fn units(study: &Study) -> Vec<Unit<'_>> {
    let mut seen = HashSet::new();
    study
        .runs()
        .filter_map(|run| {
            let hash = recipe_hash(&run.config);
            seen.insert(hash.clone()).then_some(Unit { run, hash })
        })
        .collect()
}

/// SHA-256 of the recipe (the configuration without its provenance), in hex.
pub fn recipe_hash(config: &TrainConfig) -> String {
    hex::encode(Sha256::digest(config.recipe().to_toml()))
}

/// `study.json` in the output directory: which study file made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StudyIdentity {
    file: String,
}

/// Checks that `out_dir` belongs to `study` (by its file name), marking it so if it is new.
pub fn check_study_dir(study: &Study, out_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let file = study
        .source
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = out_dir.join("study.json");
    let mine = StudyIdentity { file };
    if !path.exists() {
        let text =
            serde_json::to_string(&mine).map_err(|e| Error::io(&path, std::io::Error::other(e)))?;
        let tmp = fsio::temp_path(&path);
        fsio::write_atomic(&tmp, text.as_bytes())?;
        // Several workers may start at once: the first link wins, the others compare with it.
        let _ = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
    }
    let text = fsio::read_text(&path)?;
    let theirs: StudyIdentity = serde_json::from_str(&text).map_err(|e| Error::Run {
        path: path.clone(),
        reason: format!(
            "not a study directory's identity ({e}); delete it or choose another --out"
        ),
    })?;
    if theirs != mine {
        return Err(Error::Usage(format!(
            "{}: this study directory was made by the study file {:?}, not {:?}; choose another --out",
            out_dir.display(),
            theirs.file,
            mine.file
        )));
    }
    Ok(())
}

/// What [`run`] leaves: the complete runs, group by group, the names of the runs that are not
/// complete, and whether this worker completed the study's last run.
pub struct StudyRun {
    pub groups: Vec<Vec<CompletedRun>>,
    pub missing: Vec<String>,
    pub finished_last: bool,
}

/// Trains this worker's share of `study` (claiming each run, waiting for runs that other
/// workers hold until they are complete or their lease goes stale), then gathers every run
/// that is complete.
pub fn run(
    study: &Study,
    data: &FashionMnist,
    device: &Device,
    options: &StudyOptions,
) -> Result<StudyRun> {
    check_study_dir(study, &options.out_dir)?;
    let claims = Claims::open(&options.out_dir, options.lease_timeout)?;
    let units = units(study);
    // A done marker stands for a complete run only while the run's result is there: one
    // that lost it (deleted, or a directory copied in part) is trained again.
    let runs_root = options.out_dir.join("runs");
    for unit in &units {
        let name = &unit.run.name;
        if options.force || !runs_root.join(name).join("result.json").is_file() {
            claims.forget(name, &unit.hash);
        }
    }
    let mut worker = Worker {
        study,
        data,
        device,
        options,
        claims,
        holder: Holder::this_process(),
        progress: StudyProgress::new(study.total_epochs(), options.quiet),
        trained: HashSet::new(),
        finished_last: false,
    };
    worker.work(&units)?;
    worker.progress.finish();
    let (groups, missing) = collect(study, &options.out_dir, &worker.trained)?;
    Ok(StudyRun {
        groups,
        missing,
        finished_last: worker.finished_last,
    })
}

/// One worker process.
struct Worker<'a> {
    study: &'a Study,
    data: &'a FashionMnist,
    device: &'a Device,
    options: &'a StudyOptions,
    claims: Claims,
    holder: Holder,
    progress: StudyProgress,
    /// Names of the units this process trained.
    trained: HashSet<String>,
    /// Whether the unit this worker completed last was the study's last one.
    finished_last: bool,
}

impl Worker<'_> {
    /// Claims and trains units of this worker's share, and the teachers they need, until every
    /// one of them is done. A student waits until its teacher is done.
    fn work(&mut self, units: &[Unit]) -> Result<()> {
        let teachers = teacher_units(units);
        let mut wanted = vec![false; units.len()];
        for i in (0..units.len()).filter(|&i| self.options.shard.takes(i)) {
            let mut next = Some(i);
            while let Some(u) = next.filter(|&u| !wanted[u]) {
                wanted[u] = true;
                next = teachers[u];
            }
        }
        let mine: Vec<(usize, &Unit)> = units
            .iter()
            .enumerate()
            .filter(|(i, _)| wanted[*i])
            .collect();
        let poll =
            (self.claims.timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));
        let mut announced = HashSet::new();
        let mut trained = false;
        loop {
            let state = self.claims.list()?;
            if trained {
                // The listing after this worker's last completion: was it the study's last run?
                self.finished_last = units.iter().all(|u| is_done(&state, u));
            }
            let mut left = 0;
            trained = false;
            for &(i, unit) in &mine {
                if teachers[i].is_some_and(|t| !is_done(&state, &units[t])) {
                    left += 1;
                    continue;
                }
                match self.visit(&state, unit, &mut announced)? {
                    Visit::Done => continue,
                    Visit::HeldElsewhere => left += 1,
                    Visit::Claimed => {
                        left += 1;
                        let label = format!("[{}/{}] {}", i + 1, units.len(), unit.run.name);
                        match self.train_unit(unit, &label) {
                            Err(e @ Error::LeaseLost { .. }) => {
                                self.progress.say(&format!("{label}: {e}"))
                            }
                            other => other?,
                        }
                        announced.insert(unit.run.name.clone());
                        trained = true;
                        break;
                    }
                }
            }
            if left == 0 {
                return Ok(());
            }
            if !trained {
                std::thread::sleep(poll);
            }
        }
    }

    /// What `unit` is to this worker in `state`: done, held by a live lease elsewhere, or now
    /// claimed by this worker (breaking a stale lease first).
    fn visit(
        &mut self,
        state: &HashMap<String, Claim>,
        unit: &Unit,
        announced: &mut HashSet<String>,
    ) -> Result<Visit> {
        let name = &unit.run.name;
        if is_done(state, unit) {
            if announced.insert(name.clone()) {
                self.progress.skip(unit.run.config.epochs);
            }
            return Ok(Visit::Done);
        }
        match state.get(name) {
            Some(claim @ Claim::Leased { holder, .. }) if !self.claims.is_stale(claim) => {
                if holder.is_none() && announced.insert(format!("{name}.damaged")) {
                    let lease = self
                        .options
                        .out_dir
                        .join("claims")
                        .join(format!("{name}.lease"));
                    self.progress.say(&format!(
                        "{}: a damaged lease file (not written by fmnist); the run is taken over \
                         once it is older than --lease-timeout, or delete it",
                        lease.display()
                    ));
                }
                return Ok(Visit::HeldElsewhere);
            }
            Some(Claim::Leased { .. }) => {
                self.claims.break_stale(name, &self.holder)?;
            }
            _ => {}
        }
        Ok(if self.claims.claim(name, &self.holder)? {
            Visit::Claimed
        } else {
            Visit::HeldElsewhere
        })
    }

    /// Trains (or resumes) the unit whose lease this worker holds, keeping the lease alive,
    /// and marks it complete.
    fn train_unit(&mut self, unit: &Unit, label: &str) -> Result<()> {
        let planned = unit.run;
        let runs_root = self.options.out_dir.join("runs");
        let dir = runs_root.join(&planned.name);
        if !self.options.force && completed_run(&dir, &planned.config).is_some() {
            self.progress.skip(planned.config.epochs);
            self.progress.say(&format!(
                "{label}: already complete, reusing {}",
                dir.display()
            ));
            return self.claims.complete(&planned.name, &unit.hash);
        }
        let resumable = !self.options.force && resumable(&dir, &planned.config);
        let (run_dir, from) = if resumable {
            let position = Checkpoint::load(&dir)?.position;
            self.progress.say(&format!(
                "{label}: resuming from its checkpoint (epoch {}, batch {})",
                position.epoch + 1,
                position.batch
            ));
            (RunDir::open(&dir)?, (position.epoch, position.batch))
        } else {
            self.progress.say(&format!(
                "{label}: training {} epochs",
                planned.config.epochs
            ));
            let created = RunDir::create(&runs_root, Some(&planned.name), &planned.name, true)?;
            (created, (0, 0))
        };
        record_start(&run_dir, &self.holder, from)?;
        let mut config = planned.config.clone();
        config.provenance = Some(Provenance {
            preset: format!("study {}", self.study.source.display()),
            ..self.options.provenance.clone()
        });
        let lost = Arc::new(AtomicBool::new(false));
        let beating = Heartbeat::start(&self.claims, &planned.name, &self.holder, lost.clone());
        let mut train = self.options.train.clone();
        train.abandon = Some(lost);
        self.progress.begin_run(label, config.epochs);
        let result = if resumable {
            training::resume(self.data, &run_dir, self.device, &mut self.progress, &train)
        } else {
            training::train_with(
                &config,
                self.data,
                &run_dir,
                self.device,
                &mut self.progress,
                &train,
            )
        };
        beating.stop();
        self.progress.end_run();
        let result = match result {
            Ok(result) => result,
            Err(e) => {
                if !matches!(e, Error::LeaseLost { .. }) {
                    self.claims.release(&planned.name);
                }
                return Err(e);
            }
        };
        self.progress.say(&format!(
            "{label}: best epoch {} (test loss {:.4}, acc {:.4}), final acc {:.4}, {:.2}s/epoch",
            result.best.epoch,
            result.best.val_loss,
            result.best.val_acc,
            result.test_acc,
            result.seconds_per_epoch
        ));
        self.trained.insert(planned.name.clone());
        self.claims.complete(&planned.name, &unit.hash)
    }
}

/// For each unit, the unit that trains its teacher when the teacher is a run of the study
/// (checked when the study was parsed: never the unit itself, no cycles).
fn teacher_units(units: &[Unit]) -> Vec<Option<usize>> {
    super::teacher_positions(&units.iter().map(|u| u.run).collect::<Vec<_>>())
}

/// A unit's place in [`Worker::work`]'s round.
enum Visit {
    Done,
    HeldElsewhere,
    Claimed,
}

/// Whether `unit` is marked done for its recipe in `state`.
pub fn is_done(state: &HashMap<String, Claim>, unit: &Unit) -> bool {
    matches!(state.get(&unit.run.name), Some(Claim::Done { recipes }) if recipes.contains(&unit.hash))
}

/// Renews a lease from a thread of its own while the run trains; sets `lost` if the lease is
/// no longer this worker's.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(claims: &Claims, run: &str, holder: &Holder, lost: Arc<AtomicBool>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (claims, run, holder, stopped) = (
            claims.clone(),
            run.to_string(),
            holder.clone(),
            stop.clone(),
        );
        let every = claims.timeout / 4;
        let thread = std::thread::spawn(move || {
            let mut last = Instant::now();
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20).min(every));
                if last.elapsed() >= every {
                    last = Instant::now();
                    if !claims.heartbeat(&run, &holder) {
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
        });
        Heartbeat {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One start of a run: which worker, when, and where in the run it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    pub worker: String,
    pub host: String,
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The epoch and batch it started from (0, 0 for a fresh start).
    pub epoch: usize,
    pub batch: usize,
}

/// Appends this start to the run's `workers.json` (who trained it, how often it was started).
fn record_start(run: &RunDir, holder: &Holder, (epoch, batch): (usize, usize)) -> Result<()> {
    let mut starts = read_starts(&run.path);
    starts.push(Start {
        worker: holder.worker.clone(),
        host: holder.host.clone(),
        pid: holder.pid,
        at: unix_now(),
        epoch,
        batch,
    });
    fsio::write_json(&run.file("workers.json"), &starts)
}

/// The starts recorded for the run in `dir` (none when there is no record).
pub fn read_starts(dir: &Path) -> Vec<Start> {
    fsio::read_text(&dir.join("workers.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// Every complete run of `study` in `out_dir`, group by group (runs sharing a recipe share the
/// directory of the first), and the names of the runs that are not complete.
pub fn collect(
    study: &Study,
    out_dir: &Path,
    trained: &HashSet<String>,
) -> Result<(Vec<Vec<CompletedRun>>, Vec<String>)> {
    let runs_root = out_dir.join("runs");
    let mut unit_of: HashMap<String, String> = HashMap::new();
    for unit in units(study) {
        unit_of.insert(unit.hash, unit.run.name.clone());
    }
    let mut missing = Vec::new();
    let mut groups = Vec::new();
    for group in &study.groups {
        let mut done = Vec::new();
        for planned in &group.runs {
            let unit = &unit_of[&recipe_hash(&planned.config)];
            let dir = runs_root.join(unit);
            match completed_run(&dir, &planned.config) {
                Some((history, result)) => done.push(CompletedRun {
                    planned: planned.clone(),
                    dir,
                    history,
                    result,
                    reused: !trained.contains(&planned.name),
                }),
                None => missing.push(planned.name.clone()),
            }
        }
        groups.push(done);
    }
    Ok((groups, missing))
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
