//! Knowledge distillation (Hinton, Vinyals and Dean, 2015, "Distilling the Knowledge in a Neural
//! Network"): a finished run, the teacher, scores every training batch as the student sees it
//! (after augmentation), and the student learns from the teacher's softened probabilities as well
//! as from the labels:
//!
//! `loss = (1 - weight) * CE(labels, z) + weight * T^2 * CE(softmax(t / T), softmax(z / T))`
//!
//! with the student's logits `z`, the teacher's `t` and the temperature `T` (the `T^2` keeps the
//! soft part's gradients on the scale of the hard part's, as in the paper).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use serde::{Deserialize, Serialize};

use super::run_dir::{RunDir, RunResult};
use crate::data::Split;
use crate::data::batcher::Batcher;
use crate::error::{Error, Result};
use crate::fsio;
use crate::inference::Predictor;
use crate::ops::amx::{MatmulPrecision, set_matmul_precision};

/// The `[distill]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillConfig {
    /// The teacher: a finished run, named by its directory (relative to the working directory)
    /// or, by a plain name, a run beside the student's own (so a study's run can name another
    /// run of the study); empty for no distillation.
    pub teacher: String,
    /// The temperature `T` that softens both distributions.
    pub temperature: f64,
    /// The share of the loss that comes from the teacher; the labels' share is `1 - weight`.
    pub weight: f64,
}

impl Default for DistillConfig {
    /// Off; when on, a temperature of 4 and nine tenths of the loss from the teacher.
    fn default() -> Self {
        DistillConfig {
            teacher: String::new(),
            temperature: 4.0,
            weight: 0.9,
        }
    }
}

impl DistillConfig {
    /// Whether a teacher takes part in training.
    pub fn enabled(&self) -> bool {
        !self.teacher.is_empty()
    }

    /// The teacher's directory for a student whose run directory is in `runs_dir`: the run of
    /// that name beside the student's when the teacher is a plain name and one is there, else
    /// the path as written.
    pub fn teacher_dir(&self, runs_dir: &Path) -> PathBuf {
        let sibling = runs_dir.join(&self.teacher);
        if fsio::check_plain_name("run", &self.teacher).is_ok() && sibling.is_dir() {
            return sibling;
        }
        PathBuf::from(&self.teacher)
    }

    /// The teacher's run and result (see [`Self::teacher_dir`]); an error naming the key unless
    /// it is a finished run.
    pub fn finished_teacher(&self, runs_dir: &Path) -> Result<(RunDir, RunResult)> {
        let dir = self.teacher_dir(runs_dir);
        let unusable = |reason: &str| Error::Run {
            path: dir.clone(),
            reason: format!("distill.teacher: {reason}"),
        };
        let run = RunDir::open(&dir).map_err(|_| {
            unusable("not a run directory (no config.toml); pass a run made by `fmnist train`")
        })?;
        let result = run.read_result().map_err(|_| {
            unusable("the run has not finished (no result.json); train or resume it first")
        })?;
        Ok((run, result))
    }

    /// Checks the values; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::Config(format!(
                "distill.temperature = {}: must be above 0",
                self.temperature
            )));
        }
        if !(0.0..=1.0).contains(&self.weight) {
            return Err(Error::Config(format!(
                "distill.weight = {}: a share of the loss, from 0 to 1",
                self.weight
            )));
        }
        Ok(())
    }
}

/// A finished run's model, ready to score the student's batches.
pub struct Teacher {
    run: Predictor,
    /// The teacher's inputs from the student's: `x_teacher = x * scale + shift` (the two runs may
    /// scale pixels differently).
    scale: f32,
    shift: f32,
    /// The student's matrix precision, restored after each of the teacher's forward passes (the
    /// teacher's own is in `run.config`).
    student_precision: MatmulPrecision,
    temperature: f64,
    weight: f64,
}

impl Teacher {
    /// Loads the final weights of the finished run `config.teacher` on `device`, for a student
    /// whose run directory is in `runs_dir`, whose batches come from `student_batcher` and whose
    /// products run at `student_precision`; `train` gives the pixel statistics a standardising
    /// teacher needs.
    pub fn load(
        config: &DistillConfig,
        runs_dir: &Path,
        student_batcher: &Batcher,
        student_precision: MatmulPrecision,
        train: &Split,
        device: &Device,
    ) -> Result<Self> {
        let (run, result) = config.finished_teacher(runs_dir)?;
        let run = Predictor::load(&run.path, result.final_weights, Some(train), device)?;
        set_matmul_precision(student_precision);
        let (scale, shift) = student_batcher.conversion_to(run.batcher());
        Ok(Teacher {
            run,
            scale,
            shift,
            student_precision,
            temperature: config.temperature,
            weight: config.weight,
        })
    }

    /// The teacher's softened probabilities for a batch of the student's inputs.
    ///
    /// # Shapes
    /// - `images`: `[batch, 1, 28, 28]`, scaled as the student's
    /// - output: `[batch, classes]`
    fn soft_targets(&self, images: Tensor<4>) -> Tensor<2> {
        let inputs = if self.scale == 1.0 && self.shift == 0.0 {
            images
        } else {
            images.mul_scalar(self.scale).add_scalar(self.shift)
        };
        set_matmul_precision(self.run.config.matmul_precision);
        let logits = self.run.model().forward(inputs);
        let targets = softmax(logits.div_scalar(self.temperature), 1);
        set_matmul_precision(self.student_precision);
        targets
    }

    /// The distillation loss of the student's `logits` (on the autodiff device) for `images`
    /// (the batch the student saw), beside the hard loss `hard` of the same logits: the mixture
    /// that is differentiated.
    ///
    /// # Shapes
    /// - `images`: `[batch, 1, 28, 28]`, on the autodiff device
    /// - `logits`: `[batch, classes]`
    /// - `hard`, output: `[1]`
    pub fn loss(&self, images: Tensor<4>, logits: Tensor<2>, hard: Tensor<1>) -> Tensor<1> {
        let targets = Tensor::from_inner(self.soft_targets(images.inner()));
        let t = self.temperature;
        let log_probs = log_softmax(logits.div_scalar(t), 1);
        let soft = (targets * log_probs)
            .sum_dim(1)
            .mean()
            .neg()
            .mul_scalar(t * t);
        hard.mul_scalar(1.0 - self.weight) + soft.mul_scalar(self.weight)
    }
}
