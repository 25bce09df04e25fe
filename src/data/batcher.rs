//! Turns examples into tensors. Normalisation lives here, not in the model, as in Burn's guide.

use std::mem::MaybeUninit;

use burn::prelude::*;
use rand::{Rng, RngExt};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::mixing::Mixing;
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

/// How many rows ahead [`Batcher::batch`] prefetches.
const PREFETCH_ROWS: usize = 6;

/// Hints the CPU to start loading `bytes` into cache.
#[inline]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: prefetching is a hint; the pointer comes from a live slice.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Random training-time transformations of each image.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Augmentation {
    /// Mirror left-right with probability 0.5.
    pub flip: bool,
    /// Shift by up to this many pixels vertically and horizontally, filling with background.
    pub translate: usize,
    /// Probability of erasing a random rectangle (random erasing, Zhong et al. 2017).
    pub erase: f64,
    /// Mixup or cutmix of the batch's images in pairs, after the transformations above.
    pub mixing: Mixing,
    /// The side the images are downscaled to, last (progressive resizing); `None` keeps 28.
    pub resize: Option<usize>,
}

impl Augmentation {
    pub fn is_identity(&self) -> bool {
        !self.flip && self.only_mirrors()
    }

    /// Whether every image it makes is its source or the source's mirror (so that a model's
    /// scores of the augmented batch can be looked up rather than computed).
    pub fn only_mirrors(&self) -> bool {
        self.translate == 0 && self.erase == 0.0 && self.mixing.is_off() && self.resize.is_none()
    }
}

/// Sets a random rectangle of 2-33% of the image, aspect ratio 0.3-3.3, to background.
fn erase(row: &mut [u8; PIXELS], rng: &mut impl Rng) {
    let side = SIDE as f64;
    for _ in 0..10 {
        let area = rng.random_range(0.02..0.33) * side * side;
        let aspect = rng.random_range(0.3f64.ln()..3.3f64.ln()).exp();
        let h = (area * aspect).sqrt().round() as usize;
        let w = (area / aspect).sqrt().round() as usize;
        if h == 0 || w == 0 || h >= SIDE || w >= SIDE {
            continue;
        }
        let (y, x) = (rng.random_range(0..SIDE - h), rng.random_range(0..SIDE - w));
        for r in y..y + h {
            row[r * SIDE + x..r * SIDE + x + w].fill(0);
        }
        return;
    }
}

/// The class indices of `split` at `indices`.
fn targets(
    split: &Split,
    indices: impl ExactSizeIterator<Item = usize>,
    device: &Device,
) -> Tensor<1, Int> {
    let n = indices.len();
    let labels: Vec<i64> = indices.map(|i| split.labels[i] as i64).collect();
    Tensor::from_data(TensorData::new(labels, [n]), device)
}

/// A batch ready for the model.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, 1, 28, 28]` scaled pixels (smaller when the augmentation resizes them).
    pub images: Tensor<4>,
    /// `[batch]` class indices.
    pub targets: Tensor<1, Int>,
    /// Whether each image is mirrored left-right; empty for a batch made without augmentation.
    pub mirrored: Vec<bool>,
    /// With mixup or cutmix, the share `λ` of each image that is its own; the rest is its
    /// partner's, image `n - 1 - i`, and so is `1 - λ` of its label.
    pub mixed: Option<f32>,
}

impl Batch {
    /// The examples of `split` at `indices`, from their scaled pixels (`indices.len()` square
    /// images of side `side`).
    pub(super) fn new(
        pixels: Vec<f32>,
        side: usize,
        split: &Split,
        indices: &[usize],
        device: &Device,
    ) -> Self {
        let n = indices.len();
        Batch {
            images: Tensor::from_data(TensorData::new(pixels, [n, 1, side, side]), device),
            targets: targets(split, indices.iter().copied(), device),
            mirrored: Vec::new(),
            mixed: None,
        }
    }
}

/// Builds batches from a [`Split`] with a fixed pixel mapping.
#[derive(Debug, Clone)]
pub struct Batcher {
    /// Mean subtracted from `x / 255`.
    mean: f32,
    /// Deviation `x / 255 - mean` is divided by.
    std: f32,
}

impl Batcher {
    /// A batcher for `normalization`, with `(mean, std)` of the training pixels in [0, 1].
    pub fn new(normalization: Normalization, stats: (f64, f64)) -> Self {
        let (mean, std) = match normalization {
            Normalization::Scale => (0.0, 1.0),
            Normalization::Standardize => stats,
        };
        Batcher {
            mean: mean as f32,
            std: std as f32,
        }
    }

    /// `(scale, shift)` that turn this batcher's inputs into `other`'s: `x * scale + shift`.
    pub fn conversion_to(&self, other: &Batcher) -> (f32, f32) {
        // x = (p - mean) / std for both, so p = x * std + mean.
        (self.std / other.std, (self.mean - other.mean) / other.std)
    }

    /// Writes the scaled pixels of `bytes` into `out` (a plain loop the compiler vectorises).
    fn scale_into(&self, bytes: &[u8], out: &mut [MaybeUninit<f32>]) {
        let (mean, std) = (self.mean, self.std);
        if mean == 0.0 && std == 1.0 {
            for (o, &p) in out.iter_mut().zip(bytes) {
                o.write(p as f32 / 255.0);
            }
        } else {
            for (o, &p) in out.iter_mut().zip(bytes) {
                o.write((p as f32 / 255.0 - mean) / std);
            }
        }
    }

    /// The pixels of `bytes` as the network sees them.
    pub fn scaled(&self, bytes: &[u8]) -> Vec<f32> {
        // SAFETY: `scale_into` writes one value per byte.
        unsafe { crate::ops::written(bytes.len(), |out| self.scale_into(bytes, out)) }
    }

    /// `[rows, 1, 28, 28]` pixels, row `r` written by `fill(r, out)`, one block of rows per
    /// worker thread (as the dense kernels split them).
    fn assemble(
        &self,
        rows: usize,
        device: &Device,
        fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
    ) -> Tensor<4> {
        let per_task = crate::ops::rows_per_worker(rows);
        let mut values: Vec<f32> = Vec::with_capacity(rows * PIXELS);
        values.spare_capacity_mut()[..rows * PIXELS]
            .par_chunks_mut(per_task * PIXELS)
            .enumerate()
            .for_each(|(task, block)| {
                for (k, out) in block.chunks_mut(PIXELS).enumerate() {
                    fill(task * per_task + k, out);
                }
            });
        // SAFETY: every one of the `rows * PIXELS` values has been written by `fill`.
        unsafe { values.set_len(rows * PIXELS) };
        Tensor::from_data(TensorData::new(values, [rows, 1, SIDE, SIDE]), device)
    }

    /// Scales raw pixel bytes (`n * 784` of them) into a `[n, 1, 28, 28]` tensor.
    pub fn images(&self, pixels: &[u8], device: &Device) -> Tensor<4> {
        self.assemble(pixels.len() / PIXELS, device, |r, out| {
            self.scale_into(&pixels[r * PIXELS..(r + 1) * PIXELS], out)
        })
    }

    /// Writes row `r` of the batch of `split` at `indices` into `out`. Shuffled rows are
    /// scattered over 47 MB: a few rows ahead are fetched too, so that their cache misses overlap
    /// (random-order assembly 30 ms -> 14 ms per MLP epoch).
    pub(super) fn fill_row(
        &self,
        split: &Split,
        indices: &[usize],
        r: usize,
        out: &mut [MaybeUninit<f32>],
    ) {
        if let Some(&ahead) = indices.get(r + PREFETCH_ROWS) {
            prefetch(split.image(ahead));
        }
        self.scale_into(split.image(indices[r]), out)
    }

    /// The examples of `split` at `indices`, in that order.
    pub fn batch(&self, split: &Split, indices: &[usize], device: &Device) -> Batch {
        let images = self.assemble(indices.len(), device, |r, out| {
            self.fill_row(split, indices, r, out)
        });
        Batch {
            images,
            targets: targets(split, indices.iter().copied(), device),
            mirrored: Vec::new(),
            mixed: None,
        }
    }

    /// Like [`Batcher::batch`], with each image randomly transformed by `augmentation`.
    pub fn batch_augmented(
        &self,
        split: &Split,
        indices: &[usize],
        augmentation: Augmentation,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Batch {
        if augmentation.is_identity() {
            return self.batch(split, indices, device);
        }
        // One image after the other, so that the random draws keep their order.
        let t = augmentation.translate as i64;
        let mut values: Vec<f32> = Vec::with_capacity(indices.len() * PIXELS);
        let mut row = [0u8; PIXELS];
        let mut mirrored = Vec::with_capacity(indices.len());
        for (&i, out) in indices
            .iter()
            .zip(values.spare_capacity_mut().chunks_mut(PIXELS))
        {
            let flip = augmentation.flip && rng.random_bool(0.5);
            mirrored.push(flip);
            let (dy, dx) = if t > 0 {
                (rng.random_range(-t..=t), rng.random_range(-t..=t))
            } else {
                (0, 0)
            };
            let src = split.image(i);
            let side = SIDE as i64;
            for r in 0..side {
                for c in 0..side {
                    let (sr, sc) = (r - dy, c - dx);
                    let inside = (0..side).contains(&sr) && (0..side).contains(&sc);
                    let sc = if flip { side - 1 - sc } else { sc };
                    row[(r * side + c) as usize] = if inside {
                        src[(sr * side + sc) as usize]
                    } else {
                        0
                    };
                }
            }
            if augmentation.erase > 0.0 && rng.random_bool(augmentation.erase) {
                erase(&mut row, rng);
            }
            self.scale_into(&row, out);
        }
        // SAFETY: the loop above wrote all `indices.len() * PIXELS` values.
        unsafe { values.set_len(indices.len() * PIXELS) };
        let mixed = augmentation.mixing.apply(&mut values, rng);
        let (values, side) = match augmentation.resize {
            Some(side) => (super::resize::downscale(&values, SIDE, side), side),
            None => (values, SIDE),
        };
        Batch {
            mirrored,
            mixed,
            ..Batch::new(values, side, split, indices, device)
        }
    }

    /// Examples `start..end` of `split`, in order (evaluation).
    pub fn range(&self, split: &Split, start: usize, end: usize, device: &Device) -> Batch {
        Batch {
            images: self.images(&split.images[start * PIXELS..end * PIXELS], device),
            targets: targets(split, start..end, device),
            mirrored: Vec::new(),
            mixed: None,
        }
    }
}
