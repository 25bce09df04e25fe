//! A run directory, `runs/<name>/`: the resolved configuration, the history, the weights of the
//! best and the last epoch, the model summary and the final result. Never silently overwritten.

use std::fs;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::history::EpochRecord;
use crate::error::{Error, Result};
use crate::fsio;
use crate::model::Model;

/// Which saved weights to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    /// The epoch with the lowest validation loss.
    Best,
    /// The final epoch.
    #[default]
    Last,
}

impl Weights {
    pub fn file_name(self) -> &'static str {
        match self {
            Weights::Best => "model-best.bpk",
            Weights::Last => "model-last.bpk",
        }
    }
}

/// The final outcome of a run, written as `result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub name: String,
    pub epochs: usize,
    pub best: EpochRecord,
    pub last: EpochRecord,
    /// Median training seconds per epoch over epochs 2..N.
    pub seconds_per_epoch: f64,
    /// Wall time of the whole run, data loading excluded.
    pub total_seconds: f64,
    pub parameters: usize,
    /// Test-set accuracy of the final weights (see `final_weights`).
    pub test_acc: f64,
    pub test_loss: f64,
    /// The epoch after which early stopping ended the run, if it did.
    #[serde(default)]
    pub stopped_epoch: Option<usize>,
    /// Which weights the run ends with: `last`, or `best` when early stopping restores them.
    #[serde(default)]
    pub final_weights: Weights,
    /// Batches skipped because their loss was not finite (`--on-nan skip`).
    #[serde(default)]
    pub skipped_batches: usize,
}

fn unwritable(path: &Path, err: std::io::Error) -> Error {
    Error::Run {
        path: path.to_path_buf(),
        reason: format!("cannot create the run directory ({err}); choose a writable --runs-dir"),
    }
}

/// A run directory on disk.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Creates `root/name`, or `root/<label>-<n>` with the first free `n` when no name is given.
    /// An existing directory is an error unless `overwrite` is set, in which case it is replaced.
    pub fn create(root: &Path, name: Option<&str>, label: &str, overwrite: bool) -> Result<Self> {
        fs::create_dir_all(root).map_err(|e| unwritable(root, e))?;
        if let Some(name) = name {
            fsio::check_plain_name("run name", name).map_err(Error::Usage)?;
            let path = root.join(name);
            if path.exists() {
                if !overwrite {
                    return Err(Error::Run {
                        path,
                        reason: "the run directory already exists; choose another --name, or pass \
                                 --overwrite to replace it"
                            .into(),
                    });
                }
                fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            }
            fs::create_dir(&path).map_err(|e| unwritable(&path, e))?;
            return Ok(RunDir { path });
        }
        for n in 1.. {
            let path = root.join(format!("{label}-{n}"));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(RunDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(unwritable(&path, e)),
            }
        }
        unreachable!("some run number is always free")
    }

    /// An existing run directory.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("config.toml").is_file() {
            return Err(Error::Run {
                path: path.to_path_buf(),
                reason:
                    "not a run directory (no config.toml); pass a directory made by `fmnist train`"
                        .into(),
            });
        }
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }

    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn write_config(&self, config: &TrainConfig) -> Result<()> {
        fsio::write_text(&self.file("config.toml"), &config.to_toml())
    }

    pub fn read_config(&self) -> Result<TrainConfig> {
        TrainConfig::load(&self.file("config.toml"))
    }

    /// Saves a model's weights atomically.
    pub fn save_weights(&self, model: &Model, which: Weights) -> Result<()> {
        let path = self.file(which.file_name());
        let bytes = model
            .valid()
            .into_record()
            .into_bytes()
            .map_err(|e| Error::io(&path, std::io::Error::other(e.to_string())))?;
        fsio::write_atomic(&path, &bytes)
    }

    /// Loads saved weights into `model` (built from this run's configuration).
    pub fn load_weights(&self, model: Model, which: Weights) -> Result<Model> {
        let path = self.file(which.file_name());
        if !path.is_file() {
            return Err(Error::Run {
                path,
                reason: "no weights: the run has not finished an epoch; train or resume it first \
                         (fmnist train --resume DIR)"
                    .into(),
            });
        }
        let bytes = fsio::read(&path)?;
        let corrupt = |e: String| Error::Run {
            path: path.clone(),
            reason: format!(
                "cannot load the weights ({e}); the file is damaged or belongs to another model"
            ),
        };
        let record =
            burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
                .map_err(|e| corrupt(e.to_string()))?;
        model
            .try_load_record(record)
            .map_err(|e| corrupt(e.to_string()))
    }

    pub fn write_result(&self, result: &RunResult) -> Result<()> {
        fsio::write_json(&self.file("result.json"), result)
    }

    pub fn read_result(&self) -> Result<RunResult> {
        let path = self.file("result.json");
        let text = fsio::read_text(&path)?;
        serde_json::from_str(&text).map_err(|e| Error::Run {
            path,
            reason: format!("not a valid result file ({e})"),
        })
    }
}
