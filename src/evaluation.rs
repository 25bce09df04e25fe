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

/// Test-time augmentation: the views of each image whose predicted probabilities are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tta {
    /// Each view also mirrored left-right.
    pub flip: bool,
    /// The image also shifted by this many pixels up, down, left and right (0 for none),
    /// filled with background.
    pub shift: usize,
}

impl Tta {
    /// Plain predictions, one view per image.
    pub const NONE: Tta = Tta {
        flip: false,
        shift: 0,
    };

    /// `(rows down, columns right, mirrored)` of each view, the image itself first.
    fn views(&self) -> Vec<(i64, i64, bool)> {
        let s = self.shift as i64;
        let mut shifts = vec![(0, 0)];
        if s > 0 {
            shifts.extend([(0, s), (0, -s), (s, 0), (-s, 0)]);
        }
        let mirrors: &[bool] = if self.flip { &[false, true] } else { &[false] };
        shifts
            .into_iter()
            .flat_map(|(dy, dx)| mirrors.iter().map(move |&m| (dy, dx, m)))
            .collect()
    }
}

/// `images` `[batch, channels, h, w]` moved `dy` rows down and `dx` columns right, the uncovered
/// border set to 0 (background).
pub fn shifted(images: Tensor<4>, dy: i64, dx: i64) -> Tensor<4> {
    let [n, c, h, w] = images.dims();
    let (dy, dx) = (
        dy.clamp(-(h as i64), h as i64),
        dx.clamp(-(w as i64), w as i64),
    );
    let device = images.device();
    let mut x = images;
    if dx != 0 {
        let k = dx.unsigned_abs() as usize;
        let zeros = Tensor::<4>::zeros([n, c, h, k], &device);
        x = if dx > 0 {
            Tensor::cat(vec![zeros, x.slice([0..n, 0..c, 0..h, 0..w - k])], 3)
        } else {
            Tensor::cat(vec![x.slice([0..n, 0..c, 0..h, k..w]), zeros], 3)
        };
    }
    if dy != 0 {
        let k = dy.unsigned_abs() as usize;
        let zeros = Tensor::<4>::zeros([n, c, k, w], &device);
        x = if dy > 0 {
            Tensor::cat(vec![zeros, x.slice([0..n, 0..c, 0..h - k, 0..w])], 2)
        } else {
            Tensor::cat(vec![x.slice([0..n, 0..c, k..h, 0..w]), zeros], 2)
        };
    }
    x
}

/// Class probabilities for a batch of images, `[batch, 10]`: the mean over the views of `tta`.
pub fn probabilities(model: &Model, images: Tensor<4>, tta: Tta) -> Tensor<2> {
    let view = |(dy, dx, mirrored): (i64, i64, bool)| {
        let x = if mirrored {
            images.clone().flip([3])
        } else {
            images.clone()
        };
        softmax(model.forward(shifted(x, dy, dx)), 1)
    };
    // The first view is the image itself.
    let views = tta.views();
    let plain = view(views[0]);
    if views.len() == 1 {
        return plain;
    }
    let sum = views[1..].iter().fold(plain, |sum, &v| sum + view(v));
    sum / views.len() as f64
}

/// Runs `model` (without autodiff) over `split` in batches of `batch_size`.
pub fn evaluate(
    model: &Model,
    split: &Split,
    batcher: &Batcher,
    device: &Device,
    batch_size: usize,
) -> Evaluation {
    evaluate_with(model, split, batcher, device, batch_size, Tta::NONE)
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

/// [`evaluate`] with test-time augmentation `tta`.
pub fn evaluate_with(
    model: &Model,
    split: &Split,
    batcher: &Batcher,
    device: &Device,
    batch_size: usize,
    tta: Tta,
) -> Evaluation {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut loss_sum = 0.0f64;
    let mut predictions = Vec::with_capacity(split.len());
    let mut start = 0;
    while start < split.len() {
        let end = (start + batch_size).min(split.len());
        let batch = batcher.range(split, start, end, device);
        let n = (end - start) as f64;
        let scores = if tta != Tta::NONE {
            let probs = probabilities(model, batch.images, tta);
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

/// Loss (cross-entropy) and accuracy of predicted `probabilities` (`[n, 10]` row-major) for
/// `labels`.
pub fn probability_scores(probabilities: &[f32], labels: &[u8]) -> (f64, f64) {
    let mut loss = 0.0;
    let mut correct = 0;
    for (row, &label) in probabilities.chunks(NUM_CLASSES).zip(labels) {
        loss -= (row[label as usize] as f64).max(1e-12).ln();
        let best = (0..NUM_CLASSES).fold(0, |b, c| if row[c] > row[b] { c } else { b });
        correct += usize::from(best == label as usize);
    }
    let n = labels.len().max(1) as f64;
    (loss / n, correct as f64 / n)
}

/// The ensemble of several models' probabilities: their mean, image by image.
pub fn average(members: &[Vec<f32>]) -> Vec<f32> {
    let n = members.len().max(1) as f32;
    let mut mean = vec![0.0f32; members.first().map_or(0, Vec::len)];
    for member in members {
        for (m, &p) in mean.iter_mut().zip(member) {
            *m += p;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    mean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(values: Vec<f32>, h: usize, w: usize) -> Tensor<4> {
        Tensor::from_data(TensorData::new(values, [1, 1, h, w]), &Device::flex())
    }

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap_or_default()
    }

    #[test]
    fn shifts_move_pixels_and_fill_with_background() {
        let x = || image((1..=6).map(|v| v as f32).collect(), 2, 3);
        assert_eq!(values(shifted(x(), 0, 0)), vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(values(shifted(x(), 0, 1)), vec![0., 1., 2., 0., 4., 5.]);
        assert_eq!(values(shifted(x(), 0, -1)), vec![2., 3., 0., 5., 6., 0.]);
        assert_eq!(values(shifted(x(), 1, 0)), vec![0., 0., 0., 1., 2., 3.]);
        assert_eq!(values(shifted(x(), -1, -2)), vec![6., 0., 0., 0., 0., 0.]);
        assert_eq!(values(shifted(x(), 5, 0)), vec![0.; 6]);
    }

    #[test]
    fn views_cover_the_image_its_shifts_and_their_mirrors() {
        assert_eq!(Tta::NONE.views(), vec![(0, 0, false)]);
        let flip = Tta {
            flip: true,
            shift: 0,
        };
        assert_eq!(flip.views(), vec![(0, 0, false), (0, 0, true)]);
        let all = Tta {
            flip: true,
            shift: 2,
        }
        .views();
        assert_eq!(all.len(), 10);
        for (dy, dx) in [(0, 0), (0, 2), (0, -2), (2, 0), (-2, 0)] {
            assert!(all.contains(&(dy, dx, false)) && all.contains(&(dy, dx, true)));
        }
        assert_eq!(
            Tta {
                flip: false,
                shift: 1
            }
            .views()
            .len(),
            5
        );
    }
}
