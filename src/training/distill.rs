//! Knowledge distillation (Hinton, Vinyals and Dean, 2015, "Distilling the Knowledge in a Neural
//! Network"): a finished run, the teacher, scores every training batch as the student sees it
//! (after augmentation), and the student learns from the teacher's softened probabilities as well
//! as from the labels:
//!
//! `loss = (1 - weight) * CE(labels, z) + weight * T^2 * CE(softmax(t / T), softmax(z / T))`
//!
//! with the student's logits `z`, the teacher's `t` and the temperature `T` (the `T^2` keeps the
//! soft part's gradients on the scale of the hard part's, as in the paper).
//!
//! When the student's augmentation only mirrors (or there is none), every batch image is a
//! training image or its mirror: the teacher scores each of those once, before the first epoch,
//! and the batches look their targets up.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use serde::{Deserialize, Serialize};

use super::run_dir::{RunDir, RunResult};
use crate::data::batcher::{Augmentation, Batch, Batcher};
use crate::data::{NUM_CLASSES, Split};
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
    /// The soft targets of every training image, when they are looked up (see
    /// [`Teacher::remembering`]).
    remembered: Option<Remembered>,
}

/// The teacher's softened probabilities of each training image and of its mirror.
struct Remembered {
    /// `[views, images, classes]` row-major; view 1, when there is one, is the mirror.
    probabilities: Vec<f32>,
    images: usize,
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
        Ok(Teacher::new(
            run,
            config,
            student_batcher,
            student_precision,
        ))
    }

    /// The trained model `run` as the teacher `config` describes, for a student whose batches
    /// come from `student_batcher` and whose products run at `student_precision`.
    pub fn new(
        run: Predictor,
        config: &DistillConfig,
        student_batcher: &Batcher,
        student_precision: MatmulPrecision,
    ) -> Self {
        set_matmul_precision(student_precision);
        let (scale, shift) = student_batcher.conversion_to(run.batcher());
        Teacher {
            run,
            scale,
            shift,
            student_precision,
            temperature: config.temperature,
            weight: config.weight,
            remembered: None,
        }
    }

    /// The teacher that scores every image of `split` (the student's training images) once, and
    /// their mirrors when `augmentation` mirrors, when the student's batches are nothing else;
    /// otherwise this teacher as it is. (The MLP student of `studies/frontier.toml`, AMD Zen 5:
    /// 6.67 s per epoch with a pass of the teacher on each batch, 5.71 s looked up.)
    pub fn remembering(mut self, split: &Split, augmentation: Augmentation) -> Self {
        if !augmentation.only_mirrors() {
            return self;
        }
        set_matmul_precision(self.run.config.matmul_precision);
        let mut probabilities = self.run.score(split, |images| self.softened(images));
        if augmentation.flip {
            let mirrored = self
                .run
                .score(split, |images| self.softened(images.flip([3])));
            probabilities.extend(mirrored);
        }
        set_matmul_precision(self.student_precision);
        self.remembered = Some(Remembered {
            probabilities,
            images: split.len(),
        });
        self
    }

    /// The teacher's probabilities at its temperature.
    ///
    /// # Shapes
    /// - `inputs`: `[batch, 1, 28, 28]`, scaled as the teacher's
    /// - output: `[batch, classes]`
    fn softened(&self, inputs: Tensor<4>) -> Tensor<2> {
        let logits = self.run.model().forward(inputs);
        softmax(logits.div_scalar(self.temperature), 1)
    }

    /// The teacher's softened probabilities for the student's `batch` of the training images at
    /// `indices`: looked up when the teacher remembers them, else from a forward pass.
    ///
    /// # Shapes
    /// - `batch.images`: `[batch, 1, 28, 28]`, scaled as the student's, on the autodiff device
    /// - output: `[batch, classes]`, on the same device, a constant
    pub fn soft_targets(&self, indices: &[usize], batch: &Batch) -> Tensor<2> {
        let device = batch.images.device();
        if let Some(remembered) = &self.remembered {
            let mut values = Vec::with_capacity(indices.len() * NUM_CLASSES);
            for (r, &i) in indices.iter().enumerate() {
                let view = usize::from(batch.mirrored.get(r).copied().unwrap_or(false));
                let row = (view * remembered.images + i) * NUM_CLASSES;
                values.extend_from_slice(&remembered.probabilities[row..row + NUM_CLASSES]);
            }
            let shape = [indices.len(), NUM_CLASSES];
            return Tensor::from_data(TensorData::new(values, shape), &device);
        }
        let images = batch.images.clone().inner();
        let inputs = if self.scale == 1.0 && self.shift == 0.0 {
            images
        } else {
            images.mul_scalar(self.scale).add_scalar(self.shift)
        };
        set_matmul_precision(self.run.config.matmul_precision);
        let targets = self.softened(inputs);
        set_matmul_precision(self.student_precision);
        Tensor::from_inner(targets)
    }

    /// The distillation loss of the student's `logits` (on the autodiff device) against the
    /// teacher's soft `targets` (from [`Teacher::soft_targets`]), beside the hard loss `hard`
    /// of the same logits: the mixture that is differentiated.
    ///
    /// # Shapes
    /// - `targets`, `logits`: `[batch, classes]`
    /// - `hard`, output: `[1]`
    pub fn loss(&self, targets: Tensor<2>, logits: Tensor<2>, hard: Tensor<1>) -> Tensor<1> {
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

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::data::PIXELS;
    use crate::data::batcher::Normalization;
    use crate::training::TrainConfig;

    /// Looked-up targets are the teacher's pass on the batch the student sees, mirrors included,
    /// for a teacher (the study's MLP, untrained) that standardises inputs the student scales.
    #[test]
    fn remembered_targets_are_the_teachers_pass_on_the_mirrored_batch() {
        let device = Device::flex();
        let split = Split {
            images: (0..300 * PIXELS).map(|i| (i * 7 % 251) as u8).collect(),
            labels: (0..300).map(|i| (i % 10) as u8).collect(),
        };
        let config = TrainConfig::default();
        let standardise = Batcher::new(Normalization::Standardize, split.pixel_stats());
        let run = Predictor::new(
            config.clone(),
            config.model.init(&device),
            standardise,
            &device,
        );
        let student = Batcher::new(Normalization::Scale, (0.0, 1.0));
        let distill = DistillConfig {
            temperature: 2.0,
            ..DistillConfig::default()
        };
        let teacher = Teacher::new(run, &distill, &student, MatmulPrecision::Highest);
        let indices: Vec<usize> = (0..300).rev().step_by(7).collect();
        let flip = Augmentation {
            flip: true,
            ..Augmentation::default()
        };
        let mut rng = StdRng::seed_from_u64(3);
        let train_device = device.clone().autodiff();
        let batch = student.batch_augmented(&split, &indices, flip, &mut rng, &train_device);
        let mirrors = batch.mirrored.iter().filter(|&&m| m).count();
        assert!(
            mirrors > 5 && mirrors < indices.len() - 5,
            "{mirrors} mirrored"
        );
        let values = |t: Tensor<2>| t.into_data().iter::<f32>().collect::<Vec<f32>>();
        let computed = values(teacher.soft_targets(&indices, &batch));
        let teacher = teacher.remembering(&split, flip);
        let looked_up = values(teacher.soft_targets(&indices, &batch));
        let unmirrored = Batch {
            mirrored: Vec::new(),
            ..batch.clone()
        };
        let wrong_view = values(teacher.soft_targets(&indices, &unmirrored));
        let largest = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        };
        assert!(largest(&computed, &looked_up) < 1e-5);
        assert!(largest(&computed, &wrong_view) > 1e-3);
    }
}
