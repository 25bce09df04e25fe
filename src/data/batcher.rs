//! Turns examples into tensors. Normalisation lives here, not in the model, as in Burn's guide.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::{PIXELS, SIDE, Split};

/// How pixel bytes become model inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// `x / 255`, in [0, 1], as the study does.
    #[default]
    Scale,
    /// `(x / 255 - mean) / std` with the training set's mean and standard deviation.
    Standardize,
}

/// A batch ready for the model.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, 1, 28, 28]` scaled pixels.
    pub images: Tensor<4>,
    /// `[batch]` class indices.
    pub targets: Tensor<1, Int>,
}

/// Builds batches from a [`Split`] with a fixed pixel mapping.
#[derive(Debug, Clone)]
pub struct Batcher {
    /// Pixel byte to model input.
    lut: [f32; 256],
}

impl Batcher {
    /// A batcher for `normalization`, with `(mean, std)` of the training pixels in [0, 1].
    pub fn new(normalization: Normalization, stats: (f64, f64)) -> Self {
        let (mean, std) = match normalization {
            Normalization::Scale => (0.0, 1.0),
            Normalization::Standardize => stats,
        };
        let mut lut = [0f32; 256];
        for (v, slot) in lut.iter_mut().enumerate() {
            *slot = ((v as f64 / 255.0 - mean) / std) as f32;
        }
        Batcher { lut }
    }

    /// Scales raw pixel bytes (`n * 784` of them) into a `[n, 1, 28, 28]` tensor.
    pub fn images(&self, pixels: &[u8], device: &Device) -> Tensor<4> {
        let n = pixels.len() / PIXELS;
        let values: Vec<f32> = pixels.iter().map(|&p| self.lut[p as usize]).collect();
        Tensor::from_data(TensorData::new(values, [n, 1, SIDE, SIDE]), device)
    }

    /// The examples of `split` at `indices`, in that order.
    pub fn batch(&self, split: &Split, indices: &[usize], device: &Device) -> Batch {
        let mut values = Vec::with_capacity(indices.len() * PIXELS);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            values.extend(split.image(i).iter().map(|&p| self.lut[p as usize]));
            labels.push(split.labels[i] as i64);
        }
        let n = indices.len();
        Batch {
            images: Tensor::from_data(TensorData::new(values, [n, 1, SIDE, SIDE]), device),
            targets: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }

    /// Examples `start..end` of `split`, in order (evaluation).
    pub fn range(&self, split: &Split, start: usize, end: usize, device: &Device) -> Batch {
        let labels: Vec<i64> = split.labels[start..end].iter().map(|&l| l as i64).collect();
        Batch {
            images: self.images(&split.images[start * PIXELS..end * PIXELS], device),
            targets: Tensor::from_data(TensorData::new(labels, [end - start]), device),
        }
    }
}
