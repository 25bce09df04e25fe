//! Using a trained run on new pictures: load its configuration and weights, turn any PNG or JPEG
//! into a Fashion-MNIST-like 28x28 grey image, and predict the top classes.

use std::path::Path;

use burn::prelude::*;
use image::imageops::FilterType;
use image::{GrayImage, Luma};
use serde::Serialize;

use crate::data::batcher::{Batcher, Normalization};
use crate::data::{CLASS_NAMES, PIXELS, SIDE, Split};
use crate::error::{Error, Result};
use crate::evaluation::probabilities;
use crate::model::Model;
use crate::training::{RunDir, TrainConfig, Weights};

/// Files larger than this are refused before decoding.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Pictures wider or taller than this are refused.
pub const MAX_SIDE: u32 = 12_000;

/// A trained model ready to predict.
pub struct Predictor {
    pub config: TrainConfig,
    model: Model,
    batcher: Batcher,
    device: Device,
}

/// One class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guess {
    pub class: usize,
    pub name: &'static str,
    pub probability: f64,
}

impl Predictor {
    /// Loads `which` weights of the run in `dir`. `train` is the training set, needed only when the
    /// run standardises its inputs (for the mean and deviation it trained with).
    pub fn load(
        dir: &Path,
        which: Weights,
        train: Option<&Split>,
        device: &Device,
    ) -> Result<Self> {
        let run = RunDir::open(dir)?;
        let config = run.read_config()?;
        crate::ops::amx::set_matmul_precision(config.matmul_precision);
        let model = run.load_weights(config.model.init(device), which)?;
        let stats = input_stats(&config, train)?;
        let batcher = Batcher::new(config.data.normalization, stats);
        Ok(Predictor::new(config, model, batcher, device))
    }

    /// The `model` of a run trained with `config`, whose inputs `batcher` makes.
    pub fn new(config: TrainConfig, model: Model, batcher: Batcher, device: &Device) -> Self {
        Predictor {
            config,
            model,
            batcher,
            device: device.clone(),
        }
    }

    /// The trained model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// How the run turns pixels into its inputs.
    pub fn batcher(&self) -> &Batcher {
        &self.batcher
    }

    /// The single-view logits of every image of `split`, `[n, 10]` row-major, with every
    /// product in `f32` (bfloat16 convolutions are for training speed; an exported model is
    /// compared with these).
    pub fn logits(&self, split: &Split) -> Vec<f32> {
        let precision = crate::ops::amx::MatmulPrecision::Highest;
        crate::ops::amx::set_matmul_precision(precision);
        let out = self.score(split, |images| self.model.forward(images));
        crate::ops::amx::set_matmul_precision(self.config.matmul_precision);
        out
    }

    /// The probabilities of every image of `split`, `[n, 10]` row-major, averaged over the
    /// run's test-time views (as [`Predictor::evaluate`] scores them).
    pub fn probabilities(&self, split: &Split) -> Vec<f32> {
        let tta = self.config.data.tta();
        self.score(split, |images| probabilities(&self.model, images, tta))
    }

    /// `score` of every image of `split`, `[n, 10]` row-major, from batches of the run's
    /// evaluation size scaled as the run's inputs.
    ///
    /// # Shapes
    /// - `score`: `[batch, 1, 28, 28]` -> `[batch, 10]`
    pub fn score(&self, split: &Split, score: impl Fn(Tensor<4>) -> Tensor<2>) -> Vec<f32> {
        let batch_size = self.config.eval_batch_on(&self.device).max(1);
        let mut out = Vec::with_capacity(split.len() * CLASS_NAMES.len());
        for start in (0..split.len()).step_by(batch_size) {
            let end = (start + batch_size).min(split.len());
            let batch = self.batcher.range(split, start, end, &self.device);
            out.extend(score(batch.images).into_data().iter::<f32>());
        }
        out
    }

    /// Scores the model on a split (with the run's test-time augmentation).
    pub fn evaluate(&self, split: &Split) -> crate::evaluation::Evaluation {
        crate::evaluation::evaluate_with(
            &self.model,
            split,
            &self.batcher,
            &self.device,
            self.config.eval_batch_on(&self.device),
            self.config.data.tta(),
        )
    }

    /// The `top` most likely classes for each 28x28 image (`n * 784` pixel bytes).
    pub fn predict(&self, pixels: &[u8], top: usize) -> Vec<Vec<Guess>> {
        let images = self.batcher.images(pixels, &self.device);
        let probs = probabilities(&self.model, images, self.config.data.tta());
        let values = probs.into_data().iter::<f32>().collect::<Vec<f32>>();
        values
            .chunks(CLASS_NAMES.len())
            .map(|row| {
                let mut ranked: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
                ranked
                    .into_iter()
                    .take(top)
                    .map(|(class, p)| Guess {
                        class,
                        name: CLASS_NAMES[class],
                        probability: p as f64,
                    })
                    .collect()
            })
            .collect()
    }
}

/// The `(mean, std)` a run's inputs `x / 255` are normalised with: `(0, 1)` for scaled inputs,
/// the training pixels' (those it trained on) for standardised ones. `train` is the training set,
/// needed only in that case.
pub fn input_stats(config: &TrainConfig, train: Option<&Split>) -> Result<(f64, f64)> {
    match (config.data.normalization, train) {
        (Normalization::Standardize, Some(train)) if config.data.val_split > 0.0 => Ok(train
            .clone()
            .split_last(config.data.val_split)
            .0
            .pixel_stats()),
        (Normalization::Standardize, Some(train)) => Ok(train.pixel_stats()),
        (Normalization::Standardize, None) => Err(Error::Usage(
            "this run standardises its inputs: the training data is needed".into(),
        )),
        (Normalization::Scale, _) => Ok((0.0, 1.0)),
    }
}

/// Reads a picture and converts it to Fashion-MNIST's form: grey, light object on a dark
/// background (inverted when the picture is dark-on-light), cropped to the object, its longer side
/// scaled to 28 pixels and centred. Errors name the file.
pub fn load_picture(path: &Path) -> Result<[u8; PIXELS]> {
    let bad = |reason: String| Error::Data {
        path: path.to_path_buf(),
        reason,
        fix: "pass a PNG or JPEG picture".into(),
    };
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(bad("not a file".into()));
    }
    if meta.len() == 0 {
        return Err(bad("the file is empty".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(bad(format!(
            "the file is {} MiB, more than the {} MiB accepted",
            meta.len() >> 20,
            MAX_FILE_BYTES >> 20
        )));
    }
    let bytes = crate::fsio::read(path)?;
    decode_picture(&bytes).map_err(bad)
}

/// Decodes PNG or JPEG bytes (refusing declared sizes over [`MAX_SIDE`]) and converts the picture
/// with [`to_fashion_mnist`].
pub fn decode_picture(bytes: &[u8]) -> std::result::Result<[u8; PIXELS], String> {
    let mut reader = image::io::Reader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("not a readable image ({e})"))?;
    let mut limits = image::io::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    let picture = reader
        .decode()
        .map_err(|e| format!("not a readable image ({e})"))?;
    Ok(to_fashion_mnist(&picture.to_luma8()))
}

/// Converts a grey picture to a 28x28 Fashion-MNIST-like image (see [`load_picture`]).
pub fn to_fashion_mnist(grey: &GrayImage) -> [u8; PIXELS] {
    let (w, h) = grey.dimensions();
    if w == 0 || h == 0 {
        return [0; PIXELS];
    }
    let mut grey = grey.clone();
    // Fashion-MNIST shows light clothes on black: invert pictures whose border is light.
    let border: Vec<u8> = (0..w)
        .flat_map(|x| [grey.get_pixel(x, 0)[0], grey.get_pixel(x, h - 1)[0]])
        .chain((0..h).flat_map(|y| [grey.get_pixel(0, y)[0], grey.get_pixel(w - 1, y)[0]]))
        .collect();
    let border_mean = border.iter().map(|&v| v as f64).sum::<f64>() / border.len().max(1) as f64;
    if border_mean > 127.0 {
        image::imageops::invert(&mut grey);
    }
    // Crop to the object: pixels clearly brighter than the background.
    let threshold = (border_mean.min(255.0 - border_mean) + 40.0).min(250.0) as u8;
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (x, y, p) in grey.enumerate_pixels() {
        if p[0] > threshold {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    let cropped = if x1 >= x0 && y1 >= y0 && x0 < w {
        image::imageops::crop_imm(&grey, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image()
    } else {
        grey
    };
    let (cw, ch) = cropped.dimensions();
    let scale = SIDE as f64 / cw.max(ch) as f64;
    let (nw, nh) = (
        ((cw as f64 * scale).round() as u32).clamp(1, SIDE as u32),
        ((ch as f64 * scale).round() as u32).clamp(1, SIDE as u32),
    );
    let resized = image::imageops::resize(&cropped, nw, nh, FilterType::Triangle);
    let mut canvas = GrayImage::from_pixel(SIDE as u32, SIDE as u32, Luma([0]));
    image::imageops::overlay(
        &mut canvas,
        &resized,
        ((SIDE as u32 - nw) / 2) as i64,
        ((SIDE as u32 - nh) / 2) as i64,
    );
    let mut out = [0u8; PIXELS];
    out.copy_from_slice(canvas.as_raw());
    out
}
