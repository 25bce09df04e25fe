//! The training configuration: one TOML document (see `presets/`), with defaults next to each
//! struct. Unknown keys and wrong types are errors that name the key and line.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::distill::DistillConfig;
use super::lookahead::LookaheadConfig;
use super::optimizer::OptimizerConfig;
use super::schedule::ScheduleConfig;
use crate::data::batcher::{Augmentation, Normalization};
use crate::data::mixing::Mixing;
use crate::data::resize::is_trainable_side;
use crate::error::{Error, Result};
use crate::evaluation::Tta;
use crate::model::{Arch, ModelConfig};
pub use crate::ops::amx::MatmulPrecision;

/// Presets shipped with fmnist, by name.
pub const PRESETS: [(&str, &str); 11] = [
    (
        "seed-linear",
        include_str!("../../presets/seed-linear.toml"),
    ),
    ("seed-mlp", include_str!("../../presets/seed-mlp.toml")),
    (
        "mlp-frontier",
        include_str!("../../presets/mlp-frontier.toml"),
    ),
    ("cnn", include_str!("../../presets/cnn.toml")),
    ("speedrun", include_str!("../../presets/speedrun.toml")),
    (
        "cnn-frontier",
        include_str!("../../presets/cnn-frontier.toml"),
    ),
    (
        "speedrun-2min",
        include_str!("../../presets/speedrun-2min.toml"),
    ),
    ("best", include_str!("../../presets/best.toml")),
    ("w1", include_str!("../../presets/w1.toml")),
    ("w2", include_str!("../../presets/w2.toml")),
    ("w3", include_str!("../../presets/w3.toml")),
];

/// The `[data]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Pixel scaling.
    pub normalization: Normalization,
    /// Fraction of the training set held out for validation (the last examples, as Keras's
    /// `validation_split`); 0 validates on the test set every epoch, as the study does.
    pub val_split: f64,
    /// Training-time augmentation: random horizontal flips (probability 0.5).
    pub flip: bool,
    /// Training-time augmentation: random shifts of up to this many pixels in each direction,
    /// filled with background.
    pub translate: usize,
    /// Training-time augmentation: probability of random erasing (a rectangle of 2-33% of the
    /// image, aspect 0.3-3.3, set to background).
    pub erase: f64,
    /// Training-time augmentation: mixup's `α` (each batch's images blended in pairs, `λ x_i +
    /// (1 - λ) x_j` with `λ ~ Beta(α, α)`, the labels blended alike); 0 for none.
    pub mixup: f64,
    /// Training-time augmentation: cutmix's `α` (a rectangle of about `1 - λ` of the image
    /// swapped between the pair, `λ ~ Beta(α, α)`); 0 for none. With mixup too, each batch gets
    /// one of the two, with even odds.
    pub cutmix: f64,
    /// Test-time augmentation at evaluation: average the predictions for the image and its mirror.
    pub tta_flip: bool,
    /// Test-time augmentation: also average the predictions for the image shifted by this many
    /// pixels up, down, left and right (each mirrored too with `tta_flip`). 0 for none.
    ///
    /// Test-time augmentation applies to the final score, `fmnist eval` and `fmnist predict`; the
    /// per-epoch validation scores single views, as Keras's `fit` does, so that epochs stay fast.
    pub tta_shift: usize,
    /// Progressive resizing: the image side of each of the first epochs, which train on images
    /// downscaled to it (area averaging; 8-24, a multiple of 4); the epochs after the list train
    /// at 28x28, the size the model is evaluated at. Empty for none; `resnet` only (its global
    /// pooling takes any size).
    pub progressive: Vec<usize>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            normalization: Normalization::Scale,
            val_split: 0.0,
            flip: false,
            translate: 0,
            erase: 0.0,
            mixup: 0.0,
            cutmix: 0.0,
            tta_flip: false,
            tta_shift: 0,
            progressive: Vec::new(),
        }
    }
}

impl DataConfig {
    /// The test-time augmentation of final evaluations and predictions.
    pub fn tta(&self) -> Tta {
        Tta {
            flip: self.tta_flip,
            shift: self.tta_shift,
        }
    }

    /// The augmentation these settings ask for.
    pub fn augmentation(&self) -> Augmentation {
        Augmentation {
            flip: self.flip,
            translate: self.translate,
            erase: self.erase,
            mixing: Mixing {
                mixup: self.mixup,
                cutmix: self.cutmix,
            },
            resize: None,
        }
    }

    /// The side that epoch `epoch` (0-based) trains at under progressive resizing; `None` for
    /// 28x28.
    pub fn side_at(&self, epoch: usize) -> Option<usize> {
        self.progressive.get(epoch).copied()
    }
}

/// The `[early_stopping]` table: Keras's `EarlyStopping(monitor="val_loss")`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping; 0 disables early stopping.
    pub patience: usize,
    /// An improvement must lower the validation loss by more than this.
    pub min_delta: f64,
    /// End with the weights of the best epoch rather than the last one.
    pub restore_best: bool,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        EarlyStopping {
            patience: 0,
            min_delta: 0.0,
            restore_best: true,
        }
    }
}

/// What produced a run, recorded in its `config.toml`; ignored when a configuration is read back
/// for training.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Provenance {
    pub fmnist_version: String,
    pub burn_version: String,
    pub backend: String,
    pub threads: usize,
    pub preset: String,
    pub data_dir: String,
}

/// Everything that defines a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Seeds weight initialisation, shuffling and dropout.
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Batches per epoch, as Keras's `steps_per_epoch`: each epoch trains on this many batches of
    /// its shuffle (a quick check of a large model); 0 takes the whole training set.
    #[serde(skip_serializing_if = "is_zero")]
    pub steps_per_epoch: usize,
    /// Batch size for evaluation (memory only; results do not depend on it).
    pub eval_batch_size: usize,
    pub model: ModelConfig,
    pub optimizer: OptimizerConfig,
    pub schedule: ScheduleConfig,
    pub data: DataConfig,
    pub early_stopping: EarlyStopping,
    /// Label smoothing of the cross-entropy targets (0 disables it).
    pub label_smoothing: f64,
    /// Decay of an exponential moving average of the weights, updated every batch and used for
    /// evaluation and the saved weights (0 disables it; 0.999 is typical).
    pub ema_decay: f64,
    /// Lookahead around the optimiser (off unless `steps` is set).
    pub lookahead: LookaheadConfig,
    /// Knowledge distillation from a finished run (off unless `teacher` is set).
    #[serde(skip_serializing_if = "distill_off")]
    pub distill: DistillConfig,
    /// Precision of the convolutions' matrix products, as PyTorch's
    /// `set_float32_matmul_precision`: `highest` (f32) or `medium` (bfloat16 operands with f32
    /// sums, on CPUs with AMX tiles; f32 elsewhere). Configurations saved before this key existed
    /// read as `highest`.
    pub matmul_precision: MatmulPrecision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

impl Default for TrainConfig {
    /// The study's MLP recipe (`seed-mlp`).
    fn default() -> Self {
        TrainConfig {
            seed: 42,
            epochs: 50,
            batch_size: 1024,
            steps_per_epoch: 0,
            eval_batch_size: 2000,
            model: ModelConfig::default(),
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig::default(),
            data: DataConfig::default(),
            early_stopping: EarlyStopping::default(),
            label_smoothing: 0.0,
            ema_decay: 0.0,
            lookahead: LookaheadConfig::default(),
            distill: DistillConfig::default(),
            matmul_precision: MatmulPrecision::Highest,
            provenance: None,
        }
    }
}

impl TrainConfig {
    /// Parses a TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let config: TrainConfig = toml::from_str(text).map_err(|e| toml_error(origin, text, &e))?;
        config
            .validate()
            .map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        Ok(config)
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::fsio::read_text(path)?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// A shipped preset by name.
    pub fn preset(name: &str) -> Result<Self> {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            Error::Config(format!(
                "unknown preset {name:?}: expected one of {}",
                names.join(", ")
            ))
        })?;
        Self::from_toml(text, &format!("preset {name}"))
    }

    /// Checks every value range; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::Config("epochs = 0: must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(Error::Config("batch_size = 0: must be at least 1".into()));
        }
        if self.eval_batch_size == 0 {
            return Err(Error::Config(
                "eval_batch_size = 0: must be at least 1".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.data.val_split) {
            return Err(Error::Config(format!(
                "data.val_split = {}: must be at least 0 and below 1",
                self.data.val_split
            )));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::Config(format!(
                "label_smoothing = {}: must be at least 0 and below 1",
                self.label_smoothing
            )));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(Error::Config(format!(
                "ema_decay = {}: must be at least 0 and below 1",
                self.ema_decay
            )));
        }
        if !(0.0..=1.0).contains(&self.data.erase) {
            return Err(Error::Config(format!(
                "data.erase = {}: a probability, from 0 to 1",
                self.data.erase
            )));
        }
        for (key, alpha) in [("mixup", self.data.mixup), ("cutmix", self.data.cutmix)] {
            if !(alpha.is_finite() && alpha >= 0.0) {
                return Err(Error::Config(format!(
                    "data.{key} = {alpha}: the Beta distribution's alpha, above 0 (0 for off)"
                )));
            }
        }
        if self.data.tta_shift > 4 {
            return Err(Error::Config(format!(
                "data.tta_shift = {}: test-time shifts are 1 to 4 pixels (0 for none)",
                self.data.tta_shift
            )));
        }
        if self.data.translate > 8 {
            return Err(Error::Config(format!(
                "data.translate = {}: shifts above 8 pixels leave little of a 28x28 image",
                self.data.translate
            )));
        }
        if !(self.early_stopping.min_delta.is_finite() && self.early_stopping.min_delta >= 0.0) {
            return Err(Error::Config(format!(
                "early_stopping.min_delta = {}: must be 0 or positive",
                self.early_stopping.min_delta
            )));
        }
        self.check_progressive()?;
        self.model.validate()?;
        self.optimizer.validate()?;
        self.lookahead.validate()?;
        self.distill.validate()?;
        self.schedule.validate()
    }

    /// Checks `data.progressive`: sides the network can pool, a last epoch at 28x28, and a model
    /// (and no teacher) that takes other sizes.
    fn check_progressive(&self) -> Result<()> {
        let sides = &self.data.progressive;
        if sides.is_empty() {
            return Ok(());
        }
        let bad = |why: String| {
            Err(Error::Config(format!(
                "data.progressive = {sides:?}: {why}"
            )))
        };
        if let Some(side) = sides.iter().find(|&&side| !is_trainable_side(side)) {
            return bad(format!(
                "side {side}: sides are 8, 12, 16, 20 or 24 (28 is the rest)"
            ));
        }
        if sides.len() >= self.epochs {
            return bad(format!(
                "{} epochs resized of {}: leave at least the last epoch at 28x28",
                sides.len(),
                self.epochs
            ));
        }
        if self.model.arch != Arch::Resnet {
            return bad(
                "only model.arch = \"resnet\" takes other image sizes (global average pooling); \
                 the other models have dense layers sized for 28x28"
                    .into(),
            );
        }
        if self.distill.enabled() {
            return bad("not with [distill]: the teacher scores 28x28 images".into());
        }
        Ok(())
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig always serialises to TOML")
    }

    /// The configuration as a TOML table, to set keys in by name ([`super::settings::set`]).
    pub fn to_table(&self) -> toml::Table {
        let mut table =
            toml::Table::try_from(self).expect("a TrainConfig always serialises to a TOML table");
        // Left out of files (and of a study run's hash) when 0, but settable by name.
        table
            .entry("steps_per_epoch")
            .or_insert(toml::Value::Integer(0));
        table.entry("distill").or_insert_with(|| {
            toml::Value::try_from(DistillConfig::default())
                .expect("a DistillConfig always serialises to TOML")
        });
        table
    }

    /// The evaluation batch on `device`: `eval_batch_size` on the CPU; off it no larger than the
    /// training batch, which is known to fit (a GPU driver caps each buffer: llvmpipe refused the
    /// 173 MB first activation of the CNN at 2000 images).
    pub fn eval_batch_on(&self, device: &burn::prelude::Device) -> usize {
        if crate::ops::is_flex(device) {
            self.eval_batch_size
        } else {
            self.eval_batch_size.min(self.batch_size)
        }
    }

    /// The configuration without its provenance, for comparing two runs' recipes.
    pub fn recipe(&self) -> TrainConfig {
        TrainConfig {
            provenance: None,
            ..self.clone()
        }
    }
}

/// One line naming the file, line and column, and what is wrong.
pub fn toml_error(origin: &str, input: &str, err: &toml::de::Error) -> Error {
    let message = err.message().trim().replace('\n', " ");
    let location = match err.span() {
        Some(span) => file_position(origin, input, span.start),
        None => origin.to_string(),
    };
    Error::Config(format!("{location}: {message}"))
}

/// `origin:line:column` of byte `offset` in `text` (both 1-based), as compilers print it.
pub fn file_position(origin: &str, text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{origin}:{line}:{column}")
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Left out of files when off, so that the configurations (and study hashes) of runs without a
/// teacher stay as they were.
fn distill_off(d: &DistillConfig) -> bool {
    *d == DistillConfig::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_match_the_study() -> Result<(), Box<dyn std::error::Error>> {
        let mlp = TrainConfig::preset("seed-mlp")?;
        assert_eq!(mlp.epochs, 50);
        assert_eq!(mlp.model.hidden, vec![60, 60]);
        assert_eq!(mlp.schedule.hold_epochs, 30);
        assert_eq!(mlp.schedule.factor, 0.98);
        let linear = TrainConfig::preset("seed-linear")?;
        assert_eq!(linear.epochs, 300);
        assert!(linear.model.hidden.is_empty());
        assert_eq!(linear.schedule.hold_epochs, 150);
        assert_eq!(linear.schedule.factor, 0.9875);
        assert_eq!(linear.optimizer.lr, 0.05);
        assert_eq!(linear.optimizer.momentum, 0.95);
        assert_eq!(linear.batch_size, 1024);
        let speedrun = TrainConfig::preset("speedrun")?;
        assert_eq!(speedrun.matmul_precision, MatmulPrecision::Medium);
        assert_eq!(mlp.matmul_precision, MatmulPrecision::Highest);
        assert_eq!(
            speedrun.data.tta(),
            Tta {
                flip: true,
                shift: 1
            }
        );
        Ok(())
    }

    #[test]
    fn unknown_key_and_wrong_type_name_the_line() -> Result<(), Box<dyn std::error::Error>> {
        let err =
            TrainConfig::from_toml("epochs = 3\n[model]\nhiden = [1]\n", "x.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("x.toml:3:"), "{msg}");
        assert!(msg.contains("hiden"), "{msg}");
        let err = TrainConfig::from_toml("epochs = \"ten\"\n", "y.toml").unwrap_err();
        assert!(err.to_string().starts_with("y.toml:1:"), "{err}");
        let err = TrainConfig::from_toml("[optimizer]\nlr = -1.0\n", "z.toml").unwrap_err();
        assert!(err.to_string().contains("optimizer.lr = -1"), "{err}");
        let err = TrainConfig::from_toml("[model]\ndropout = 1.0\n", "z.toml").unwrap_err();
        assert!(err.to_string().contains("model.dropout"), "{err}");
        let err = TrainConfig::from_toml("batch_size = 0\n", "z.toml").unwrap_err();
        assert!(err.to_string().contains("batch_size = 0"), "{err}");
        let err =
            TrainConfig::from_toml("[model]\nactivation = \"swish\"\n", "z.toml").unwrap_err();
        assert!(err.to_string().contains("swish"), "{err}");
        let err = TrainConfig::from_toml("[lookahead]\nalpha = 2.0\n", "z.toml").unwrap_err();
        assert!(err.to_string().contains("lookahead.alpha = 2"), "{err}");
        let err = TrainConfig::from_toml("[data]\ntta_shift = 9\n", "z.toml").unwrap_err();
        assert!(err.to_string().contains("data.tta_shift = 9"), "{err}");
        let err = TrainConfig::from_toml("matmul_precision = \"low\"\n", "p.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("p.toml:1:"), "{msg}");
        assert!(msg.contains("highest") && msg.contains("medium"), "{msg}");
        Ok(())
    }

    #[test]
    fn round_trip_through_toml() -> Result<(), Box<dyn std::error::Error>> {
        let mut c = TrainConfig::preset("seed-linear")?;
        c.provenance = Some(Provenance {
            threads: 2,
            ..Default::default()
        });
        let back = TrainConfig::from_toml(&c.to_toml(), "back")?;
        assert_eq!(back, c);
        assert_eq!(back.recipe(), TrainConfig::preset("seed-linear")?);
        // A configuration saved before the precision existed reads as `highest`: the same recipe.
        let older = c.to_toml().replace("matmul_precision = \"highest\"\n", "");
        assert!(!older.contains("matmul_precision"));
        assert_eq!(TrainConfig::from_toml(&older, "older")?, c);
        c.matmul_precision = MatmulPrecision::Medium;
        assert!(c.to_toml().contains("matmul_precision = \"medium\""));
        assert_eq!(TrainConfig::from_toml(&c.to_toml(), "back")?, c);
        Ok(())
    }
}
