//! Scoring a model on a split: loss, accuracy, per-class accuracy and the confusion matrix.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use serde::Serialize;

use crate::data::batcher::Batcher;
use crate::data::{CLASS_NAMES, NUM_CLASSES, Split};
use crate::model::Model;

/// Predictions and their scores on a split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    pub accuracy: f64,
    /// Predicted class per example, in split order.
    #[serde(skip)]
    pub predictions: Vec<u8>,
    /// `confusion[true][predicted]` counts.
    pub confusion: [[usize; NUM_CLASSES]; NUM_CLASSES],
}

/// One class's accuracy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScore {
    pub class: usize,
    pub name: &'static str,
    pub correct: usize,
    pub total: usize,
    pub accuracy: f64,
}

/// Class probabilities for a batch of images, `[batch, 10]`; with `tta_flip`, the mean of the
/// probabilities for the images and their mirror images.
pub fn probabilities(model: &Model, images: Tensor<4>, tta_flip: bool) -> Tensor<2> {
    let probs = softmax(model.forward(images.clone()), 1);
    if !tta_flip {
        return probs;
    }
    (probs + softmax(model.forward(images.flip([3])), 1)) / 2.0
}

/// Runs `model` (without autodiff) over `split` in batches of `batch_size`.
pub fn evaluate(
    model: &Model,
    split: &Split,
    batcher: &Batcher,
    device: &Device,
    batch_size: usize,
) -> Evaluation {
    evaluate_with(model, split, batcher, device, batch_size, false)
}

/// The class with the highest score in each row of `scores` (`[rows, classes]`), the first on
/// ties; read on the host, which for a batch of 1,024 costs less than Burn's five operations.
pub fn predicted_classes(scores: Tensor<2>) -> Vec<u8> {
    let [_, classes] = scores.dims();
    let values = scores
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    values
        .chunks(classes.max(1))
        .map(|row| {
            let mut best = 0;
            for (c, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = c;
                }
            }
            best as u8
        })
        .collect()
}

/// [`evaluate`], optionally with flip test-time augmentation.
pub fn evaluate_with(
    model: &Model,
    split: &Split,
    batcher: &Batcher,
    device: &Device,
    batch_size: usize,
    tta_flip: bool,
) -> Evaluation {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut loss_sum = 0.0f64;
    let mut predictions = Vec::with_capacity(split.len());
    let mut start = 0;
    while start < split.len() {
        let end = (start + batch_size).min(split.len());
        let batch = batcher.range(split, start, end, device);
        let n = (end - start) as f64;
        let scores = if tta_flip {
            let probs = probabilities(model, batch.images, true);
            // Cross-entropy of the averaged probabilities.
            let picked = probs
                .clone()
                .gather(1, batch.targets.unsqueeze_dim::<2>(1))
                .clamp_min(1e-12)
                .log();
            loss_sum -= picked.sum().into_scalar::<f64>();
            probs
        } else {
            let logits = model.forward(batch.images);
            let loss = loss_fn.forward(logits.clone(), batch.targets);
            loss_sum += loss.into_scalar::<f64>() * n;
            logits
        };
        predictions.extend(predicted_classes(scores));
        start = end;
    }
    let mut confusion = [[0usize; NUM_CLASSES]; NUM_CLASSES];
    for (&truth, &pred) in split.labels.iter().zip(&predictions) {
        confusion[truth as usize][pred as usize] += 1;
    }
    let correct: usize = (0..NUM_CLASSES).map(|c| confusion[c][c]).sum();
    let n = split.len().max(1) as f64;
    Evaluation {
        loss: loss_sum / n,
        accuracy: correct as f64 / n,
        predictions,
        confusion,
    }
}

impl Evaluation {
    /// Accuracy per true class.
    pub fn per_class(&self) -> Vec<ClassScore> {
        (0..NUM_CLASSES)
            .map(|c| {
                let total: usize = self.confusion[c].iter().sum();
                let correct = self.confusion[c][c];
                ClassScore {
                    class: c,
                    name: CLASS_NAMES[c],
                    correct,
                    total,
                    accuracy: if total == 0 {
                        0.0
                    } else {
                        correct as f64 / total as f64
                    },
                }
            })
            .collect()
    }

    /// The confusion matrix as a text table, rows true classes, columns predictions.
    pub fn confusion_table(&self) -> String {
        let short: Vec<String> = CLASS_NAMES
            .iter()
            .map(|n| n.chars().take(7).collect())
            .collect();
        let mut out = format!("{:>12}", "true \\ pred");
        for s in &short {
            out.push_str(&format!("{s:>8}"));
        }
        out.push('\n');
        for (c, row) in self.confusion.iter().enumerate() {
            out.push_str(&format!("{:>12}", CLASS_NAMES[c]));
            for v in row {
                out.push_str(&format!("{v:>8}"));
            }
            out.push('\n');
        }
        out
    }
}

/// Writes `confusion.png` and `misclassified.png` (the first `max_examples` errors) into `dir`.
pub fn write_pictures(
    evaluation: &Evaluation,
    split: &Split,
    title: &str,
    dir: &std::path::Path,
    max_examples: usize,
) -> crate::Result<Vec<std::path::PathBuf>> {
    let confusion = dir.join("confusion.png");
    crate::report::plots::write_confusion(
        &evaluation.confusion,
        &format!(
            "{title}: confusion matrix (accuracy {:.4})",
            evaluation.accuracy
        ),
        &confusion,
    )?;
    let wrong: Vec<(&[u8], usize, usize)> = split
        .labels
        .iter()
        .zip(&evaluation.predictions)
        .enumerate()
        .filter(|(_, (t, p))| t != p)
        .take(max_examples)
        .map(|(i, (&t, &p))| (split.image(i), t as usize, p as usize))
        .collect();
    let misclassified = dir.join("misclassified.png");
    crate::report::plots::write_misclassified(
        &wrong,
        &format!("{title}: misclassified test images (true -> predicted)"),
        &misclassified,
    )?;
    Ok(vec![confusion, misclassified])
}
