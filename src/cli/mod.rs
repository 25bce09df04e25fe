//! The `fmnist` command line: argument definitions here, one handler per subcommand in
//! [`commands`].

mod commands;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::data::DataOptions;
use crate::error::{Error, Result};
use crate::model::{ActivationKind, Arch};
use crate::training::Weights;
use crate::training::config::TrainConfig;
use crate::training::optimizer::OptimizerKind;
use crate::training::schedule::ScheduleKind;
use crate::training::settings;

#[derive(Debug, Parser)]
#[command(
    name = "fmnist",
    version,
    about = "Train, compare and explain deep-learning models on Fashion-MNIST"
)]
pub struct Cli {
    /// Worker threads for tensor operations (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// Compute device (default: the first of cuda and wgpu built in whose adapter is a graphics
    /// card, else cpu).
    #[arg(long, global = true, value_enum, value_name = "DEVICE")]
    pub device: Option<crate::device::Backend>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show where the dataset is and verify it; `data download` fetches it.
    Data(DataCommand),
    /// Print a Keras-style summary of a model.
    Summary(SummaryArgs),
    /// Train a model and save the run in runs/<name>/.
    Train(TrainArgs),
    /// Evaluate a saved run on the test set.
    Eval(EvalArgs),
    /// Run every run of a study file and write its report (plots, report.html, report.md).
    Study(StudyArgs),
    /// Plot loss, accuracy, the zoom on the best epoch and the train/test gap of saved runs.
    Plot(PlotArgs),
    /// Classify pictures (PNG or JPEG, any size and colour) with a trained run.
    Predict(PredictArgs),
    /// Write a trained run's model as ONNX or safetensors (PyTorch's layout), for use outside
    /// fmnist.
    Export(ExportArgs),
    /// Time the benchmark workloads (the peers' W1-W3, the speedrun recipe; the ResNet on request).
    Bench(BenchArgs),
}

/// Where to find the data.
#[derive(Debug, Clone, Args, Default)]
pub struct DataArgs {
    /// Directory holding the four IDX files (.gz or decompressed); nothing else is searched.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Never download the dataset.
    #[arg(long)]
    pub offline: bool,
    /// Skip SHA-256 verification (the IDX structure is still checked).
    #[arg(long)]
    pub no_verify: bool,
    /// Base URL to download from (default: $FMNIST_MIRROR or the official host).
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
}

impl DataArgs {
    pub fn options(&self) -> DataOptions {
        DataOptions {
            data_dir: self.data_dir.clone(),
            offline: self.offline,
            no_verify: self.no_verify,
            mirror: self.mirror.clone(),
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

#[derive(Debug, Args)]
pub struct DataCommand {
    #[command(subcommand)]
    pub action: Option<DataAction>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DataAction {
    /// Download the four files over HTTPS, verify them and store them atomically.
    Download {
        /// Destination directory (default: the user cache, ~/.cache/fmnist/fashion-mnist).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Base URL to download from (default: $FMNIST_MIRROR or the official host).
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
    },
}

/// A training recipe: a preset or TOML file, then flag overrides.
#[derive(Debug, Clone, Args, Default, PartialEq)]
pub struct RecipeArgs {
    /// Start from a shipped preset (seed-linear, seed-mlp, mlp-frontier, cnn, speedrun, cnn-frontier, speedrun-2min, best, w1, w2, w3).
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    pub preset: Option<String>,
    /// Start from a TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Model family.
    #[arg(long, value_enum, value_name = "ARCH")]
    pub model: Option<Arch>,
    /// Hidden layer widths, comma-separated (for example 60,60).
    #[arg(long, value_delimiter = ',', value_name = "W,W,...")]
    pub hidden: Option<Vec<usize>>,
    /// Hidden-layer activation.
    #[arg(long, value_enum, value_name = "NAME")]
    pub activation: Option<ActivationKind>,
    /// Dropout rate after each hidden layer.
    #[arg(long, allow_negative_numbers = true, value_name = "RATE")]
    pub dropout: Option<f64>,
    /// Whiten the first convolution: 18 of its kernels set from the training images' 3x3
    /// patches before training (`model.whiten`).
    #[arg(long)]
    pub whiten: bool,
    /// Mixup with this alpha: each batch's images blended in pairs, the labels alike
    /// (`data.mixup`).
    #[arg(long, allow_negative_numbers = true, value_name = "ALPHA")]
    pub mixup: Option<f64>,
    /// Cutmix with this alpha: a rectangle swapped between the images of each pair, the labels
    /// blended by area (`data.cutmix`).
    #[arg(long, allow_negative_numbers = true, value_name = "ALPHA")]
    pub cutmix: Option<f64>,
    /// Progressive resizing: the image side of each of the first epochs, comma-separated (for
    /// example 16,16,20,24; `resnet` only; `data.progressive`).
    #[arg(long, value_delimiter = ',', value_name = "SIDE,SIDE,...")]
    pub progressive: Option<Vec<usize>>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Train each epoch on only this many batches of its shuffle (Keras's steps_per_epoch).
    #[arg(long, value_name = "N")]
    pub steps_per_epoch: Option<usize>,
    /// Seeds initialisation, shuffling and dropout.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Optimiser.
    #[arg(long, value_enum, value_name = "NAME")]
    pub optimizer: Option<OptimizerKind>,
    /// Base learning rate.
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    pub momentum: Option<f64>,
    /// Use Nesterov momentum (SGD).
    #[arg(long)]
    pub nesterov: bool,
    #[arg(long, allow_negative_numbers = true, value_name = "L2")]
    pub weight_decay: Option<f64>,
    /// Learning-rate schedule.
    #[arg(long, value_enum, value_name = "NAME")]
    pub schedule: Option<ScheduleKind>,
    /// Hold-decay schedule: epochs at the base rate.
    #[arg(long, value_name = "E")]
    pub hold_epochs: Option<usize>,
    /// Hold-decay schedule: per-epoch multiplier after the hold.
    #[arg(long, allow_negative_numbers = true)]
    pub factor: Option<f64>,
    /// Hold out this fraction of the training set for validation instead of the test set.
    #[arg(long, allow_negative_numbers = true, value_name = "F")]
    pub val_split: Option<f64>,
    /// Standardise pixels with the training mean and deviation instead of scaling to [0, 1].
    #[arg(long)]
    pub standardize: bool,
    /// Distil from this finished run: learn from its probabilities as well as from the labels
    /// (the `[distill]` table sets the temperature and the teacher's share of the loss).
    #[arg(long, value_name = "RUN_DIR")]
    pub teacher: Option<PathBuf>,
}

/// The flags given, as `(short name, TOML value)`.
struct Flags(Vec<(&'static str, toml::Value)>);

impl Flags {
    /// Adds flag `name` if it was given.
    fn give<T: serde::Serialize>(&mut self, name: &'static str, value: Option<T>) -> Result<()> {
        if let Some(v) = value {
            let v = toml::Value::try_from(v)
                .map_err(|e| Error::Usage(format!("--{}: {e}", name.replace('_', "-"))))?;
            self.0.push((name, v));
        }
        Ok(())
    }
}

impl RecipeArgs {
    /// The preset or file (default: `seed-mlp`), with every given flag applied (through the same
    /// table of short names as study files), validated.
    pub fn resolve(&self) -> Result<TrainConfig> {
        let base = match (&self.preset, &self.config) {
            (_, Some(path)) => TrainConfig::load(path)?,
            (Some(name), None) => TrainConfig::preset(name)?,
            (None, None) => TrainConfig::preset("seed-mlp")?,
        };
        let mut table = base.to_table();
        table.remove("provenance");
        for (name, value) in self.flags()? {
            let path = settings::key_path(name, &value);
            settings::set(&mut table, &path, &value)
                .map_err(|e| Error::Usage(format!("--{}: {e}", name.replace('_', "-"))))?;
        }
        let mut c: TrainConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Usage(e.message().trim().to_string()))?;
        // Choosing the linear model drops the preset's hidden layers, unless --hidden gives some.
        if self.model == Some(Arch::Linear) && self.hidden.is_none() {
            c.model.hidden.clear();
        }
        c.validate().map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("invalid option: {msg}")),
            other => other,
        })?;
        Ok(c)
    }

    /// The flags given, by their short names (see [`settings::SHORT_NAMES`]), as TOML values.
    fn flags(&self) -> Result<Vec<(&'static str, toml::Value)>> {
        let mut f = Flags(Vec::new());
        f.give("model", self.model)?;
        f.give("hidden", self.hidden.as_ref())?;
        f.give("activation", self.activation)?;
        f.give("dropout", self.dropout)?;
        f.give("whiten", self.whiten.then_some(true))?;
        f.give("mixup", self.mixup)?;
        f.give("cutmix", self.cutmix)?;
        f.give("progressive", self.progressive.as_ref())?;
        f.give("epochs", self.epochs)?;
        f.give("batch_size", self.batch_size)?;
        f.give("steps_per_epoch", self.steps_per_epoch)?;
        f.give("seed", self.seed)?;
        f.give("optimizer", self.optimizer)?;
        f.give("lr", self.lr)?;
        f.give("momentum", self.momentum)?;
        f.give("nesterov", self.nesterov.then_some(true))?;
        f.give("weight_decay", self.weight_decay)?;
        f.give("schedule", self.schedule)?;
        f.give("hold_epochs", self.hold_epochs)?;
        f.give("factor", self.factor)?;
        f.give("val_split", self.val_split)?;
        f.give("normalization", self.standardize.then_some("standardize"))?;
        f.give(
            "teacher",
            self.teacher.as_ref().map(|p| p.to_string_lossy()),
        )?;
        Ok(f.0)
    }

    /// A short label for generated run names.
    pub fn label(&self) -> String {
        if let Some(p) = &self.preset {
            return p.clone();
        }
        if let Some(path) = &self.config {
            return path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
        }
        "seed-mlp".into()
    }
}

#[derive(Debug, Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Print the table as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Run name: the results go to <runs-dir>/<name>/ (default: <preset>-<n>).
    #[arg(long)]
    pub name: Option<String>,
    /// Directory holding run directories.
    #[arg(long, default_value = "runs", value_name = "DIR")]
    pub runs_dir: PathBuf,
    /// Replace an existing run directory of the same name.
    #[arg(long)]
    pub overwrite: bool,
    /// Print only the final report.
    #[arg(long)]
    pub quiet: bool,
    /// Continue a stopped run from its checkpoint, with its saved configuration.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Also write a checkpoint every N batches (one is always written at the end of each epoch).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub checkpoint_every: usize,
    /// What to do when a batch's loss is NaN or infinite.
    #[arg(long, value_enum, default_value = "stop")]
    pub on_nan: crate::training::NanPolicy,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run directory to evaluate; several (`--run A --run B ...`) evaluate their ensemble:
    /// the average of the members' probabilities, each with its own test-time views.
    #[arg(long = "run", value_name = "RUN_DIR", required = true)]
    pub runs: Vec<PathBuf>,
    /// Which weights to evaluate.
    #[arg(long, value_enum, default_value = "best")]
    pub weights: Weights,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the single-view logits of the test images, in f32, as a NumPy `.npy` file
    /// `[10000, 10]` (to compare an exported model with, or to analyse in Python).
    #[arg(long, value_name = "FILE.npy")]
    pub logits: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The run directory whose model to export.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// Which weights to export.
    #[arg(long, value_enum, default_value = "best")]
    pub weights: Weights,
    /// The file format.
    #[arg(long, value_enum)]
    pub format: crate::export::Format,
    /// The file to write (for safetensors, the architecture goes beside it as .json).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Debug, Args)]
pub struct StudyArgs {
    /// The study file (TOML), for example studies/seed.toml.
    pub file: PathBuf,
    /// Output directory (default: runs/<study file name>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Retrain runs that are already complete.
    #[arg(long)]
    pub force: bool,
    /// Print only one line per run.
    #[arg(long)]
    pub quiet: bool,
    /// Worker processes to start on this machine (default: one per core, at most one per run,
    /// each with the cores shared out, 1 thread on 2 cores; 1: train in this process). Small
    /// models scale poorly across threads, so on the seed study two workers of 1 thread took 99 s
    /// where one of 2 threads took 126 s.
    #[arg(long, value_name = "N", conflicts_with_all = ["worker", "shard", "force"])]
    pub workers: Option<usize>,
    /// Be one of several workers on this study directory (on this machine or others sharing it):
    /// claim and train runs until none is left. The worker that finishes the last run writes the
    /// report.
    #[arg(long)]
    pub worker: bool,
    /// Take only every N-th run from I (0-based), as `I/N`; `auto` reads Slurm's
    /// SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, or Kubernetes' JOB_COMPLETION_INDEX with
    /// --shard-count. Shards still claim their runs, so they mix safely with workers.
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<String>,
    /// The number of shards, for `--shard auto` under Kubernetes (its Job's `completions`).
    #[arg(long, value_name = "N")]
    pub shard_count: Option<usize>,
    /// Seconds without a heartbeat after which a run's lease is stale and another worker takes
    /// the run over, resuming it from its checkpoint.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub lease_timeout: f64,
    /// Show each run's state (done, running, stale, pending), the epochs left and an estimate of
    /// the time left, then exit.
    #[arg(long, conflicts_with_all = ["report_only", "worker", "shard", "workers"])]
    pub status: bool,
    /// With --status: print JSON.
    #[arg(long, requires = "status")]
    pub json: bool,
    /// Only this group of the study (repeatable): train and report its runs alone. The runs
    /// done count for later invocations with other groups or none.
    #[arg(long = "group", value_name = "NAME")]
    pub groups: Vec<String>,
    /// Write the report from the runs that are complete, naming those that are missing; train
    /// nothing.
    #[arg(long, conflicts_with_all = ["worker", "shard", "workers"])]
    pub report_only: bool,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run directories made by `fmnist train` or `fmnist study`.
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Output file: .png, .svg, or a name without extension for both.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Figure title.
    #[arg(long)]
    pub title: Option<String>,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The run directory whose model to use.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// Pictures to classify.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Which weights to use.
    #[arg(long, value_enum, default_value = "best")]
    pub weights: Weights,
    /// How many classes to show per picture.
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    /// Print one JSON object per picture.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workloads to run (default: the first four; `resnet`, one epoch of the `best` preset, only
    /// when named).
    #[arg(value_enum)]
    pub workloads: Vec<crate::bench::Workload>,
    /// Epochs per workload (default: 10, 10 and 3, as the peers; 3 for speedrun, 1 for resnet).
    #[arg(long, conflicts_with = "batches")]
    pub epochs: Option<usize>,
    /// Time this many training steps instead of whole epochs (a ResNet check in a minute); the
    /// JSON line gives `sec_per_step_median` and the implied seconds per epoch.
    #[arg(long, value_name = "N")]
    pub batches: Option<usize>,
    /// Leave out the workload headers: epoch lines, then one JSON line per workload.
    #[arg(long)]
    pub json: bool,
    /// Run in this process instead of one child process per workload (whose peak memory is then
    /// the workload's own).
    #[arg(long)]
    pub in_process: bool,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Parses the command line, runs the command and returns the exit code. Errors are printed as
/// one line on stderr.
pub fn main() -> i32 {
    crate::fsio::tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if cli.threads == Some(0) {
        return Err(Error::Usage("--threads 0: give at least 1 thread".into()));
    }
    crate::device::choose(cli.device)?;
    crate::fsio::flush_denormals();
    let mut pool =
        rayon::ThreadPoolBuilder::new().start_handler(|_| crate::fsio::flush_denormals());
    if let Some(threads) = cli.threads {
        pool = pool.num_threads(threads);
    }
    pool.stack_size(COMMAND_STACK_BYTES)
        .build_global()
        .map_err(|e| Error::Usage(format!("--threads: {e}")))?;
    // Run the command on one of the pool's workers: a parallel operation started from a worker
    // shares the work with the other workers instead of handing all of it over and sleeping until
    // it is done, which saves a thread wake-up per operation (about 15 us, thousands per epoch).
    crate::device::guard(|| rayon::scope(|_| dispatch(cli)))
}

/// Stack of each worker thread, the command's included (as large as the main thread's).
const COMMAND_STACK_BYTES: usize = 8 << 20;

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(args) => commands::data(args),
        Command::Summary(args) => commands::summary(args),
        Command::Train(args) => commands::train(args),
        Command::Eval(args) => commands::eval(args),
        Command::Study(args) => commands::study(args, cli.threads),
        Command::Plot(args) => commands::plot(args),
        Command::Predict(args) => commands::predict(args),
        Command::Export(args) => commands::export(args),
        Command::Bench(args) => commands::bench(args, cli.threads),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(args: &[&str]) -> Result<TrainConfig, Box<dyn std::error::Error>> {
        let cli = Cli::try_parse_from(["fmnist", "train"].iter().chain(args))?;
        match cli.command {
            Command::Train(train) => Ok(train.recipe.resolve()?),
            other => Err(format!("parsed as {other:?}").into()),
        }
    }

    #[test]
    fn flags_override_the_preset() -> Result<(), Box<dyn std::error::Error>> {
        let c = recipe(&[
            "--preset",
            "cnn",
            "--epochs",
            "3",
            "--schedule",
            "one-cycle",
        ])?;
        let preset = TrainConfig::preset("cnn")?;
        assert_eq!(c.epochs, 3);
        assert_eq!(c.schedule.name, ScheduleKind::OneCycle);
        assert_eq!((c.model, c.optimizer), (preset.model, preset.optimizer));
        let c = recipe(&[
            "--model",
            "linear",
            "--lr",
            "0.1",
            "--nesterov",
            "--seed",
            "7",
        ])?;
        assert_eq!(c.model.arch, Arch::Linear);
        assert!(c.model.hidden.is_empty());
        assert_eq!(
            (c.optimizer.lr, c.optimizer.nesterov, c.seed),
            (0.1, true, 7)
        );
        assert!(recipe(&["--preset", "speedrun", "--whiten"])?.model.whiten);
        assert!(!recipe(&["--preset", "speedrun"])?.model.whiten);
        let mixed = recipe(&["--preset", "speedrun", "--mixup", "0.2", "--cutmix", "1"])?;
        assert_eq!((mixed.data.mixup, mixed.data.cutmix), (0.2, 1.0));
        let resized = recipe(&["--preset", "best", "--progressive", "16,16,24"])?;
        assert_eq!(resized.data.progressive, [16, 16, 24]);
        Ok(())
    }

    #[test]
    fn a_bad_flag_value_names_the_option() {
        let err = recipe(&["--dropout", "1.5"]).err().map(|e| e.to_string());
        let msg = err.unwrap_or_default();
        assert!(msg.starts_with("invalid option: model.dropout"), "{msg}");
        let err = recipe(&["--preset", "seed-mlp", "--whiten"]).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("invalid option: model.whiten"), "{msg}");
        let err = recipe(&["--preset", "speedrun", "--cutmix", "-1"]).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("invalid option: data.cutmix = -1"), "{msg}");
        let err = recipe(&["--preset", "speedrun", "--progressive", "16"]).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("only model.arch = \"resnet\""), "{msg}");
    }
}
