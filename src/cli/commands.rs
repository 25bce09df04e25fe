//! One function per subcommand.

use burn::prelude::*;
use serde_json::json;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::{
    BenchArgs, DataAction, DataCommand, EvalArgs, ExportArgs, PlotArgs, PredictArgs, RecipeArgs,
    StudyArgs, SummaryArgs, TrainArgs,
};
use crate::data::{self, download, files};
use crate::error::{Error, Result};
use crate::training::config::{MatmulPrecision, Provenance};
use crate::training::progress::{Console, final_report};
use crate::training::{self, RunDir, TrainOptions};

/// The Burn version fmnist is pinned to (Cargo.toml: `burn = "=0.22.1"`).
pub const BURN_VERSION: &str = "0.22.1";

/// The compute device `--device` chose, opened on first use.
fn device() -> Result<Device> {
    Ok(crate::device::current()?.device.clone())
}

pub fn data(args: DataCommand) -> Result<()> {
    if let Some(DataAction::Download { dir, mirror }) = args.action {
        let dir = dir.unwrap_or_else(files::cache_dir);
        let mirror = mirror
            .or(args.data.mirror)
            .unwrap_or_else(download::default_mirror);
        let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let outcomes = download::download_all(&dir, &mirror, progress)?;
        for (spec, outcome) in outcomes {
            let what = match outcome {
                download::Outcome::Present => "already present, verified",
                download::Outcome::Downloaded => "downloaded, verified",
            };
            println!("{}: {what}", dir.join(spec.gz_name()).display());
        }
        return Ok(());
    }
    let location =
        files::locate(args.data.data_dir.as_deref())?.ok_or_else(|| files::not_found(""))?;
    let started = std::time::Instant::now();
    let dataset = data::load(location, !args.data.no_verify)?;
    let seconds = started.elapsed().as_secs_f64();
    let verified: Vec<String> = dataset.verified.iter().map(|v| format!("{v:?}")).collect();
    if args.json {
        let out = json!({
            "dir": dataset.location.dir,
            "origin": dataset.location.origin.to_string(),
            "train": dataset.train.len(),
            "test": dataset.test.len(),
            "files": files::FILES.iter().zip(&verified).map(|(f, v)| json!({"name": f.name, "verified": v})).collect::<Vec<_>>(),
            "load_seconds": seconds,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "Fashion-MNIST in {} (from {})",
        dataset.location.dir.display(),
        dataset.location.origin
    );
    for (spec, v) in files::FILES.iter().zip(&dataset.verified) {
        let status = match v {
            files::Verified::OfficialGz => "SHA-256 matches the official file",
            files::Verified::Decompressed => "SHA-256 of the decompressed bytes matches",
            files::Verified::Unchecked => "not verified (--no-verify)",
        };
        println!("  {:<26} {status}", spec.name);
    }
    let (mean, std) = dataset.train.pixel_stats();
    println!(
        "  {} training and {} test images, 28x28, 10 classes; pixel mean {mean:.4}, std {std:.4}; loaded in {seconds:.2}s",
        dataset.train.len(),
        dataset.test.len()
    );
    Ok(())
}

pub fn summary(args: SummaryArgs) -> Result<()> {
    let config = args.recipe.resolve()?;
    let summary = config.model.summary();
    if args.json {
        let out = json!({
            "layers": summary.layers,
            "total_params": summary.total_params(),
            "trainable_params": summary.trainable_params(),
            "non_trainable_params": summary.non_trainable_params(),
        });
        println!("{out}");
    } else {
        println!("{summary}");
    }
    Ok(())
}

/// What every run records about how it was made.
fn provenance(label: String, dataset: &data::FashionMnist) -> Provenance {
    Provenance {
        fmnist_version: env!("CARGO_PKG_VERSION").into(),
        burn_version: BURN_VERSION.into(),
        backend: crate::device::current().map_or_else(|_| String::new(), |c| c.label.clone()),
        threads: rayon::current_num_threads(),
        preset: label,
        data_dir: dataset.location.dir.display().to_string(),
    }
}

pub fn study(args: StudyArgs, threads: Option<usize>) -> Result<()> {
    let study = only_groups(crate::study::Study::load(&args.file)?, &args.groups)?;
    let out_dir = args.out.clone().unwrap_or_else(|| {
        let stem = args
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "study".into());
        std::path::PathBuf::from("runs").join(stem)
    });
    if !(args.lease_timeout.is_finite() && args.lease_timeout > 0.0) {
        return Err(Error::Usage(format!(
            "--lease-timeout {}: give a positive number of seconds",
            args.lease_timeout
        )));
    }
    let lease_timeout = std::time::Duration::from_secs_f64(args.lease_timeout);
    if args.status {
        return study_status(&study, &out_dir, lease_timeout, args.json);
    }
    let shard = shard(args.shard.as_deref(), args.shard_count)?;
    let dataset = data::obtain(&args.data.options())?;
    let device = device()?;
    if args.report_only {
        let (groups, missing) =
            crate::study::runner::collect(&study, &out_dir, &Default::default())?;
        return study_report(&study, &out_dir, groups, &missing, &dataset, &device);
    }
    println!(
        "Study {:?}: {} groups, {} runs, {} epochs in all, on {}; results in {}{}",
        study.title,
        study.groups.len(),
        study.runs().count(),
        study.total_epochs(),
        crate::device::current()?.label,
        out_dir.display(),
        if shard.count > 1 {
            format!(" (shard {}/{})", shard.index, shard.count)
        } else {
            String::new()
        }
    );
    let units = crate::study::runner::units(&study).len();
    let workers = local_workers(&args, threads, units);
    if workers > 1 {
        crate::study::runner::check_study_dir(&study, &out_dir)?;
        run_local_workers(&args, &out_dir, workers, threads)?;
        let (groups, missing) =
            crate::study::runner::collect(&study, &out_dir, &Default::default())?;
        return study_report(&study, &out_dir, groups, &missing, &dataset, &device);
    }
    let options = crate::study::runner::StudyOptions {
        out_dir: out_dir.clone(),
        force: args.force,
        quiet: args.quiet,
        provenance: provenance(String::new(), &dataset),
        train: TrainOptions {
            interrupt: Some(interrupt_flag()?),
            ..Default::default()
        },
        lease_timeout,
        shard,
    };
    let crate::study::runner::StudyRun {
        groups,
        missing,
        finished_last,
    } = crate::study::runner::run(&study, &dataset, &device, &options)?;
    if !missing.is_empty() {
        println!(
            "{} of {} runs are still being trained by other workers; the worker that finishes the \
             last one writes the report (or run with --report-only)",
            missing.len(),
            study.runs().count()
        );
        return Ok(());
    }
    // Of several workers, the one that completed the last run writes the report; one process
    // alone always writes it.
    if (args.worker || shard.count > 1) && !finished_last {
        println!("Every run is complete; the worker that finished the last one writes the report");
        return Ok(());
    }
    study_report(&study, &out_dir, groups, &missing, &dataset, &device)
}

/// The study with only the groups `--group` names (all of them when it names none), and the
/// runs that teach theirs.
fn only_groups(mut study: crate::study::Study, names: &[String]) -> Result<crate::study::Study> {
    if names.is_empty() {
        return Ok(study);
    }
    if let Some(unknown) = names
        .iter()
        .find(|n| !study.groups.iter().any(|g| &g.name == *n))
    {
        let known: Vec<&str> = study.groups.iter().map(|g| g.name.as_str()).collect();
        return Err(Error::Usage(format!(
            "--group {unknown}: {} has no such group (it has {})",
            study.source.display(),
            known.join(", ")
        )));
    }
    study.keep_groups(names);
    Ok(study)
}

/// How many worker processes a plain `fmnist study` starts on this machine: `--workers`, or one
/// per core and at most one per unit; 1 (this process) for `--worker`, `--shard`, `--force`, or
/// when `--threads` already takes every core.
fn local_workers(args: &StudyArgs, threads: Option<usize>, units: usize) -> usize {
    if args.worker || args.shard.is_some() || args.force {
        return 1;
    }
    // One process per core on the CPU; one process for a GPU, whose operations are queued on
    // the device anyway.
    let cores = match crate::device::chosen() {
        crate::device::Backend::Cpu => std::thread::available_parallelism().map_or(1, |n| n.get()),
        _ => 1,
    };
    args.workers
        .unwrap_or_else(|| (cores / threads.unwrap_or(1).max(1)).min(units))
        .max(1)
}

/// Starts `workers` worker processes of this binary on the study and waits for them; each gets
/// `--threads` or an equal share of the cores. SIGINT reaches them too (one process group):
/// each checkpoints its run, and this process then reports the interruption.
fn run_local_workers(
    args: &StudyArgs,
    out_dir: &std::path::Path,
    workers: usize,
    threads: Option<usize>,
) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = threads.unwrap_or((cores / workers).max(1));
    let interrupt = interrupt_flag()?;
    let exe = std::env::current_exe().map_err(|e| Error::io("fmnist", e))?;
    println!(
        "Starting {workers} workers of {threads} thread(s) each on {}",
        out_dir.display()
    );
    let mut children = Vec::new();
    for _ in 0..workers {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--threads", &threads.to_string()])
            .args(["--device", crate::device::chosen().name(), "study"])
            .arg(&args.file)
            .arg("--out")
            .arg(out_dir)
            .args([
                "--worker",
                "--quiet",
                "--lease-timeout",
                &args.lease_timeout.to_string(),
            ]);
        if let Some(dir) = &args.data.data_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        if args.data.offline {
            cmd.arg("--offline");
        }
        if args.data.no_verify {
            cmd.arg("--no-verify");
        }
        if let Some(mirror) = &args.data.mirror {
            cmd.args(["--mirror", mirror]);
        }
        for group in &args.groups {
            cmd.args(["--group", group]);
        }
        children.push(cmd.spawn().map_err(|e| Error::io(&exe, e))?);
    }
    let mut failed = 0;
    for mut child in children {
        let status = child.wait().map_err(|e| Error::io(&exe, e))?;
        failed += usize::from(!status.success());
    }
    if interrupt.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::StudyInterrupted {
            out: out_dir.to_path_buf(),
        });
    }
    if failed > 0 {
        return Err(Error::Run {
            path: out_dir.to_path_buf(),
            reason: format!(
                "{failed} of {workers} workers failed (their errors are above); run the study again to go on"
            ),
        });
    }
    Ok(())
}

/// The shard `--shard` names: `I/N`, `auto` (from Slurm's or Kubernetes' environment), or all.
fn shard(arg: Option<&str>, count: Option<usize>) -> Result<crate::study::runner::Shard> {
    use crate::study::runner::Shard;
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    let (index, total) = match arg {
        None => return Ok(Shard::ALL),
        Some("auto") => match (env("SLURM_ARRAY_TASK_ID"), env("SLURM_ARRAY_TASK_COUNT")) {
            (Some(id), Some(n)) => (id - env("SLURM_ARRAY_TASK_MIN").unwrap_or(0).min(id), n),
            _ => match (env("JOB_COMPLETION_INDEX"), count) {
                (Some(i), Some(n)) => (i, n),
                (Some(_), None) => {
                    return Err(Error::Usage(
                        "--shard auto under Kubernetes needs --shard-count N (the Job's completions)".into(),
                    ));
                }
                _ => {
                    return Err(Error::Usage(
                        "--shard auto: neither SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT nor \
                         JOB_COMPLETION_INDEX is set; give --shard I/N"
                            .into(),
                    ));
                }
            },
        },
        Some(text) => {
            let parsed = text
                .split_once('/')
                .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
            parsed.ok_or_else(|| {
                Error::Usage(format!(
                    "--shard {text:?}: write I/N, for example 0/4, or auto"
                ))
            })?
        }
    };
    if total == 0 || index >= total {
        return Err(Error::Usage(format!(
            "--shard {index}/{total}: the index must be below the count (0 to {})",
            total.max(1) - 1
        )));
    }
    Ok(Shard {
        index,
        count: total,
    })
}

fn study_status(
    study: &crate::study::Study,
    out_dir: &std::path::Path,
    lease_timeout: std::time::Duration,
    json: bool,
) -> Result<()> {
    if !out_dir.is_dir() {
        return Err(Error::Usage(format!(
            "{}: no such study directory; start the study first, or give its --out",
            out_dir.display()
        )));
    }
    crate::study::runner::check_study_dir(study, out_dir)?;
    let claims = crate::study::claims::Claims::open(out_dir, lease_timeout)?;
    let status = crate::study::status::status(study, out_dir, &claims)?;
    if json {
        let line = serde_json::to_string(&status).map_err(|e| Error::Usage(e.to_string()))?;
        println!("{line}");
    } else {
        print!("{}", crate::study::status::table(&status));
    }
    Ok(())
}

/// Writes the report of the complete runs and prints each group's summary.
fn study_report(
    study: &crate::study::Study,
    out_dir: &std::path::Path,
    groups: Vec<Vec<crate::study::runner::CompletedRun>>,
    missing: &[String],
    dataset: &crate::data::FashionMnist,
    device: &Device,
) -> Result<()> {
    // A partial report shows the complete runs; groups without one are left out.
    let (mut kept_groups, mut kept_runs) = (Vec::new(), Vec::new());
    for (group, runs) in study.groups.iter().zip(groups) {
        if runs.is_empty() {
            continue;
        }
        let mut group = group.clone();
        group
            .runs
            .retain(|p| runs.iter().any(|r| r.planned.name == p.name));
        kept_groups.push(group);
        kept_runs.push(runs);
    }
    let (shown, groups) = (
        crate::study::Study {
            groups: kept_groups,
            ..study.clone()
        },
        kept_runs,
    );
    if shown.groups.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no run of the study is complete yet; nothing to report",
            out_dir.display()
        )));
    }
    let report =
        crate::report::write_study_report(out_dir, &shown, &groups, Some((dataset, device)))?;
    for (group, runs) in shown.groups.iter().zip(&groups) {
        println!("\n{}", group.title);
        for r in runs {
            println!(
                "  {:<24} best epoch {:>3}  best acc {:.4}  final acc {:.4}",
                r.planned.name, r.result.best.epoch, r.result.best.val_acc, r.result.test_acc
            );
        }
    }
    if !missing.is_empty() {
        println!(
            "\nMissing from the report ({} runs not complete): {}",
            missing.len(),
            missing.join(", ")
        );
    }
    println!("\nReport: {} (and report.md beside it)", report.display());
    Ok(())
}

pub fn plot(args: PlotArgs) -> Result<()> {
    let mut loaded = Vec::new();
    for dir in &args.runs {
        let run = RunDir::open(dir)?;
        loaded.push((run.name(), training::History::read(&run.path)?));
    }
    let series: Vec<crate::report::plots::Series> = loaded
        .iter()
        .map(|(label, history)| crate::report::plots::Series { label, history })
        .collect();
    let title = args.title.clone().unwrap_or_else(|| {
        loaded
            .iter()
            .map(|(l, _)| l.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    });
    let written = match args.out.extension().and_then(|e| e.to_str()) {
        Some("png") => {
            crate::report::plots::write_png(&series, &title, &args.out)?;
            vec![args.out.clone()]
        }
        Some("svg") => {
            crate::report::plots::write_svg(&series, &title, &args.out)?;
            vec![args.out.clone()]
        }
        Some(other) => {
            return Err(Error::Usage(format!(
                "--out {}: unknown image type .{other}; use .png, .svg, or no extension for both",
                args.out.display()
            )));
        }
        None => crate::report::plots::write_figure(&series, &title, &args.out)?,
    };
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// A flag set by the first SIGINT or SIGTERM; a second one exits at once with code 130 (every
/// file on disk is written atomically, so that is safe).
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, flag.clone())
            .and_then(|_| signal_hook::flag::register(signal, flag.clone()))
            .map_err(|e| Error::Usage(format!("cannot install the signal handler: {e}")))?;
    }
    Ok(flag)
}

pub fn train(args: TrainArgs) -> Result<()> {
    let options = TrainOptions {
        checkpoint_every: args.checkpoint_every,
        interrupt: Some(interrupt_flag()?),
        on_nan: args.on_nan,
        abandon: None,
    };
    let mut console = Console::new(args.quiet);
    if let Some(dir) = &args.resume {
        if args.recipe != RecipeArgs::default() || args.name.is_some() {
            return Err(Error::Usage(
                "--resume continues a run with its saved configuration: drop the recipe flags and --name"
                    .into(),
            ));
        }
        let run = RunDir::open(dir)?;
        let config = run.read_config()?;
        let dataset = data::obtain(&args.data.options())?;
        if !args.quiet {
            println!(
                "Resuming {} from its checkpoint, on {}",
                run.path.display(),
                crate::device::current()?.label
            );
        }
        let result = training::resume(&dataset, &run, &device()?, &mut console, &options)?;
        println!("{}", final_report(&config, &result, &run.path));
        return Ok(());
    }
    let mut config = args.recipe.resolve()?;
    if let Some(name) = &args.name {
        crate::fsio::check_plain_name("run name", name)
            .map_err(|e| Error::Usage(format!("--name: {e}")))?;
    }
    if config.distill.enabled() {
        config.distill.finished_teacher(&args.runs_dir)?;
    }
    let dataset = data::obtain(&args.data.options())?;
    let run = RunDir::create(
        &args.runs_dir,
        args.name.as_deref(),
        &args.recipe.label(),
        args.overwrite,
    )?;
    config.provenance = Some(provenance(args.recipe.label(), &dataset));
    if !args.quiet {
        println!("{}", config.model.summary());
        println!(
            "Training {} on {} images, validating on {}, on {}{} (seed {}); run directory {}",
            run.name(),
            dataset.train.len(),
            if config.data.val_split > 0.0 {
                format!("{:.0}% of the training set", config.data.val_split * 100.0)
            } else {
                "the test set".into()
            },
            crate::device::current()?.label,
            precision_note(config.matmul_precision),
            config.seed,
            run.path.display()
        );
    }
    let result = training::train_with(&config, &dataset, &run, &device()?, &mut console, &options)?;
    println!("{}", final_report(&config, &result, &run.path));
    Ok(())
}

/// What the training line says of the convolutions' precision.
fn precision_note(precision: MatmulPrecision) -> String {
    let on_cpu = crate::device::chosen() == crate::device::Backend::Cpu;
    match (precision, crate::ops::amx::kernel()) {
        (MatmulPrecision::Highest, _) => String::new(),
        _ if !on_cpu => String::new(),
        (MatmulPrecision::Medium, Some(kernel)) => {
            format!(", bfloat16 convolutions on {}", kernel.describe())
        }
        (MatmulPrecision::Medium, None) => {
            format!(", f32: {}", crate::ops::amx::f32_reason())
        }
    }
}

pub fn eval(args: EvalArgs) -> Result<()> {
    if args.runs.len() > 1 {
        return eval_ensemble(&args);
    }
    let run = RunDir::open(&args.runs[0])?;
    let dataset = data::obtain(&args.data.options())?;
    let predictor = crate::inference::Predictor::load(
        &run.path,
        args.weights,
        Some(&dataset.train),
        &device()?,
    )?;
    if let Some(path) = &args.logits {
        let logits = predictor.logits(&dataset.test);
        let shape = [dataset.test.len(), crate::data::NUM_CLASSES];
        crate::fsio::write_atomic(path, &crate::export::npy_bytes(&shape, &logits))?;
    }
    let scores = predictor.evaluate(&dataset.test);
    if args.json {
        let out = json!({
            "run": run.path,
            "weights": args.weights.file_name(),
            "loss": scores.loss,
            "accuracy": scores.accuracy,
            "per_class": scores.per_class(),
            "confusion": scores.confusion,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "{} ({}) on the {} test images: loss {:.4}, accuracy {:.4}",
        run.path.display(),
        args.weights.file_name(),
        dataset.test.len(),
        scores.loss,
        scores.accuracy
    );
    println!("\nPer-class accuracy:");
    for c in scores.per_class() {
        println!(
            "  {:>2} {:<12} {:>6.2}%  ({}/{})",
            c.class,
            c.name,
            c.accuracy * 100.0,
            c.correct,
            c.total
        );
    }
    println!("\nConfusion matrix (rows: true class, columns: predicted):");
    print!("{}", scores.confusion_table());
    let pictures =
        crate::evaluation::write_pictures(&scores, &dataset.test, &run.name(), &run.path, 48)?;
    for path in pictures {
        println!("Wrote {}", path.display());
    }
    Ok(())
}

/// `fmnist eval --run A --run B ...`: each member's score and their ensemble's (the mean of
/// their probabilities, each with its own test-time views).
fn eval_ensemble(args: &EvalArgs) -> Result<()> {
    if args.logits.is_some() {
        return Err(Error::Usage(
            "--logits writes one run's logits: give a single --run".into(),
        ));
    }
    let dataset = data::obtain(&args.data.options())?;
    let labels = &dataset.test.labels;
    let mut members = Vec::new();
    let mut rows = Vec::new();
    for dir in &args.runs {
        let predictor =
            crate::inference::Predictor::load(dir, args.weights, Some(&dataset.train), &device()?)?;
        let probabilities = predictor.probabilities(&dataset.test);
        let (loss, accuracy) = crate::evaluation::probability_scores(&probabilities, labels);
        rows.push(json!({"run": dir, "loss": loss, "accuracy": accuracy}));
        members.push(probabilities);
    }
    let mean = crate::evaluation::average(&members);
    let (loss, accuracy) = crate::evaluation::probability_scores(&mean, labels);
    if args.json {
        let out = json!({
            "weights": args.weights.file_name(),
            "members": rows,
            "ensemble": {"runs": args.runs.len(), "loss": loss, "accuracy": accuracy},
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "On the {} test images ({} weights, each run with its own test-time views):",
        labels.len(),
        args.weights.file_name()
    );
    for row in &rows {
        let (acc, l) = (
            row["accuracy"].as_f64().unwrap_or(0.0),
            row["loss"].as_f64().unwrap_or(0.0),
        );
        let run = row["run"].as_str().unwrap_or_default();
        println!("  {run:<40} accuracy {acc:.4}  loss {l:.4}");
    }
    let name = format!("ensemble of {} runs", args.runs.len());
    println!("  {name:<40} accuracy {accuracy:.4}  loss {loss:.4}");
    Ok(())
}

pub fn predict(args: PredictArgs) -> Result<()> {
    use crate::data::batcher::Normalization;
    use crate::inference::{Predictor, load_picture};
    let run = RunDir::open(&args.run)?;
    let dataset = match run.read_config()?.data.normalization {
        Normalization::Standardize => Some(data::obtain(&args.data.options())?),
        Normalization::Scale => None,
    };
    let device = device()?;
    let predictor = Predictor::load(
        &args.run,
        args.weights,
        dataset.as_ref().map(|d| &d.train),
        &device,
    )?;
    let mut failed = 0;
    for path in &args.images {
        let picture = match load_picture(path) {
            Ok(p) => p,
            Err(e) => {
                failed += 1;
                if args.json {
                    println!("{}", json!({"file": path, "error": e.to_string()}));
                } else {
                    eprintln!("error: {e}");
                }
                continue;
            }
        };
        let guesses = predictor.predict(&picture, args.top.max(1)).remove(0);
        if args.json {
            println!("{}", json!({"file": path, "predictions": guesses}));
        } else {
            let shown: Vec<String> = guesses
                .iter()
                .map(|g| format!("{} {:.1}%", g.name, g.probability * 100.0))
                .collect();
            println!("{}: {}", path.display(), shown.join(", "));
        }
    }
    if failed > 0 {
        return Err(Error::Usage(format!(
            "{failed} of {} pictures could not be read (see above)",
            args.images.len()
        )));
    }
    Ok(())
}

pub fn bench(args: BenchArgs, threads: Option<usize>) -> Result<()> {
    use crate::bench::Workload;
    if args.workloads.contains(&Workload::Claims) {
        let result = crate::bench::claims(10_000)?;
        let line = serde_json::to_string(&result).map_err(|e| Error::Usage(e.to_string()))?;
        println!("{line}");
        if args.workloads.len() == 1 {
            return Ok(());
        }
    }
    let workloads: Vec<Workload> = args
        .workloads
        .iter()
        .copied()
        .filter(|w| *w != Workload::Claims)
        .collect();
    let args = BenchArgs { workloads, ..args };
    let workloads = if args.workloads.is_empty() {
        vec![
            Workload::Linear,
            Workload::Mlp,
            Workload::Cnn,
            Workload::Speedrun,
        ]
    } else {
        args.workloads.clone()
    };
    if !args.in_process {
        // One child process per workload, so that each peak memory figure is its own.
        let exe = std::env::current_exe().map_err(|e| Error::io("fmnist", e))?;
        for w in workloads {
            let mut cmd = std::process::Command::new(&exe);
            if let Some(t) = threads {
                cmd.args(["--threads", &t.to_string()]);
            }
            cmd.args(["--device", crate::device::chosen().name()]);
            cmd.args(["bench", "--in-process", w.name()]);
            if let Some(e) = args.epochs {
                cmd.args(["--epochs", &e.to_string()]);
            }
            if let Some(n) = args.batches {
                cmd.args(["--batches", &n.to_string()]);
            }
            if args.json {
                cmd.arg("--json");
            }
            if let Some(dir) = &args.data.data_dir {
                cmd.arg("--data-dir").arg(dir);
            }
            if args.data.offline {
                cmd.arg("--offline");
            }
            let status = cmd.status().map_err(|e| Error::io(&exe, e))?;
            if !status.success() {
                return Err(Error::Usage(format!("the {} workload failed", w.name())));
            }
        }
        return Ok(());
    }
    let dataset = data::obtain(&args.data.options())?;
    let device = device()?;
    for w in workloads {
        if !args.json {
            println!("== {} on {}", w.name(), crate::device::current()?.label);
        }
        // A line per epoch (or step), then the JSON line, as the peer scripts print them.
        let line = match args.batches {
            Some(n) => serde_json::to_string(&crate::bench::run_steps(w, n, &dataset, &device)?),
            None => serde_json::to_string(&crate::bench::run(w, args.epochs, &dataset, &device)?),
        };
        println!("{}", line.map_err(|e| Error::Usage(e.to_string()))?);
    }
    Ok(())
}

pub fn export(args: ExportArgs) -> Result<()> {
    let config = RunDir::open(&args.run)?.read_config()?;
    // The training set only for runs that standardise their inputs (its mean and deviation).
    let standardized =
        config.data.normalization == crate::data::batcher::Normalization::Standardize;
    let dataset = standardized
        .then(|| data::obtain(&args.data.options()))
        .transpose()?;
    let train = dataset.as_ref().map(|d| &d.train);
    let written = crate::export::export(&args.run, args.weights, args.format, &args.out, train)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}
