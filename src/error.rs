//! Errors as values. Every variant renders as one line that names the file or option, says what is
//! wrong and what to do about it; [`Error::exit_code`] maps it to the process exit code.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file is missing, corrupt or of the wrong shape.
    #[error("{}: {reason}; {fix}", path.display())]
    Data {
        path: PathBuf,
        reason: String,
        fix: String,
    },
    /// No copy of the dataset could be found or fetched.
    #[error("{0}")]
    DataNotFound(String),
    /// A configuration value or file is invalid.
    #[error("{0}")]
    Config(String),
    /// A command-line usage error not caught by the argument parser.
    #[error("{0}")]
    Usage(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}{}", path.display(), io_hint(source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Fetching the dataset failed.
    #[error("{0}")]
    Download(String),
    /// Training stopped because the loss became NaN or infinite.
    #[error(
        "training diverged: the loss became {value} at epoch {epoch}, batch {batch}, learning rate {lr}; lower the learning rate (--lr)"
    )]
    Diverged {
        value: f64,
        epoch: usize,
        batch: usize,
        lr: f64,
    },
    /// Training stopped on SIGINT or SIGTERM after writing a checkpoint.
    #[error(
        "interrupted: checkpoint saved at epoch {epoch}, batch {batch}; continue with `fmnist train --resume {}`",
        run.display()
    )]
    Interrupted {
        run: PathBuf,
        epoch: usize,
        batch: usize,
    },
    /// A study's workers stopped on SIGINT or SIGTERM, each after checkpointing its run.
    #[error(
        "interrupted: every worker checkpointed its run in {}; run the same fmnist study command to go on",
        out.display()
    )]
    StudyInterrupted { out: PathBuf },
    /// A study worker stopped training a run because another worker took it over.
    #[error(
        "{}: another worker took this run over (this worker's lease went stale); it goes on there",
        run.display()
    )]
    LeaseLost { run: PathBuf },
    /// A GPU backend failed while running (out of memory, a lost device); Burn reports these by
    /// panicking, which [`crate::device::guard`] turns into this.
    #[error("the {device} device failed: {reason}; try a smaller --batch-size, or --device cpu")]
    Device { device: String, reason: String },
    /// A saved model, checkpoint or run directory cannot be used.
    #[error("{}: {reason}", path.display())]
    Run { path: PathBuf, reason: String },
}

fn io_hint(err: &std::io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(28) => " (the disk is full: free some space and run again)",
        Some(13) => " (permission denied: choose a directory you can write)",
        _ => "",
    }
}

impl Error {
    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Data`] with the default fix for a damaged dataset file.
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            reason: reason.into(),
            fix: "the file is damaged or not Fashion-MNIST: delete it and run `fmnist data download`, \
                  or reinstall the Debian package dataset-fashion-mnist"
                .into(),
        }
    }

    /// The process exit code: 2 for usage and input errors, 1 for failures while running.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Data { .. }
            | Error::DataNotFound(_)
            | Error::Config(_)
            | Error::Usage(_)
            | Error::Run { .. } => 2,
            Error::Io { .. }
            | Error::Download(_)
            | Error::Diverged { .. }
            | Error::LeaseLost { .. }
            | Error::Device { .. } => 1,
            Error::Interrupted { .. } | Error::StudyInterrupted { .. } => 130,
        }
    }
}
