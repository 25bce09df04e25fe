//! The Fashion-MNIST dataset: finding it ([`files`]), reading IDX files ([`idx`]), fetching it
//! ([`download`]) and turning examples into tensors, augmented ([`mixing`], [`resize`]) or not
//! ([`batcher`]), the next batch filled while the current one trains ([`prefetch`]).

pub mod batcher;
pub mod download;
pub mod files;
pub mod idx;
pub mod mixing;
pub mod prefetch;
pub mod resize;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use files::{FileSpec, Location, Verified};
use idx::IdxArray;

/// Image side in pixels.
pub const SIDE: usize = 28;
/// Pixels per image.
pub const PIXELS: usize = SIDE * SIDE;
/// Number of classes.
pub const NUM_CLASSES: usize = 10;
/// Class names, indexed by label.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// A set of images and their labels, kept as raw bytes; the batcher scales them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    /// `len * 784` pixel values, row-major, 0 (background) to 255.
    pub images: Vec<u8>,
    /// One label in `0..10` per image.
    pub labels: Vec<u8>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * PIXELS..(i + 1) * PIXELS]
    }

    /// Splits off the last `fraction` of the examples, as Keras's `validation_split` does.
    pub fn split_last(self, fraction: f64) -> (Split, Split) {
        let held = ((self.len() as f64) * fraction).round() as usize;
        let keep = self.len() - held;
        let Split {
            mut images,
            mut labels,
        } = self;
        let held_out = Split {
            images: images.split_off(keep * PIXELS),
            labels: labels.split_off(keep),
        };
        (Split { images, labels }, held_out)
    }

    /// Mean and standard deviation of the pixels scaled to [0, 1].
    pub fn pixel_stats(&self) -> (f64, f64) {
        let mut counts = [0u64; 256];
        for &p in &self.images {
            counts[p as usize] += 1;
        }
        let n = self.images.len().max(1) as f64;
        let mean = counts
            .iter()
            .enumerate()
            .map(|(v, &c)| v as f64 / 255.0 * c as f64)
            .sum::<f64>()
            / n;
        let var = counts
            .iter()
            .enumerate()
            .map(|(v, &c)| (v as f64 / 255.0 - mean).powi(2) * c as f64)
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }
}

/// The whole dataset and where it came from.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    pub train: Split,
    pub test: Split,
    pub location: Location,
    /// How each of the four files was verified, in [`files::FILES`] order.
    pub verified: [Verified; 4],
}

/// How to find and check the data.
#[derive(Debug, Clone, Default)]
pub struct DataOptions {
    /// `--data-dir`: use only this directory.
    pub data_dir: Option<PathBuf>,
    /// Never download.
    pub offline: bool,
    /// Skip checksum verification (structure is always checked).
    pub no_verify: bool,
    /// Base URL to download from instead of the official host.
    pub mirror: Option<String>,
    /// Show a progress bar while downloading.
    pub progress: bool,
}

/// Finds the data (downloading it into the cache when no copy exists and `offline` is not set),
/// verifies it and loads both splits.
pub fn obtain(options: &DataOptions) -> Result<FashionMnist> {
    if let Some(location) = files::locate(options.data_dir.as_deref())? {
        return load(location, !options.no_verify);
    }
    let cache = files::cache_dir();
    if options.offline {
        return Err(files::not_found(" and --offline forbids downloading"));
    }
    eprintln!(
        "Fashion-MNIST not found locally: downloading it into {}",
        cache.display()
    );
    let mirror = options
        .mirror
        .clone()
        .unwrap_or_else(download::default_mirror);
    if let Err(err) = download::download_all(&cache, &mirror, options.progress) {
        return Err(Error::DataNotFound(format!(
            "Fashion-MNIST not found locally and the download failed ({err}); {}",
            files::INSTALL_HINT
        )));
    }
    load(
        Location {
            dir: cache,
            origin: files::Origin::Cache,
        },
        !options.no_verify,
    )
}

/// Loads and checks the four files of `location`.
pub fn load(location: Location, verify: bool) -> Result<FashionMnist> {
    let dir = location.dir.clone();
    let read = |spec: FileSpec| files::read_verified(&dir, &spec, verify);
    // The two image files dominate: decompress them on two threads.
    let (train, test) = std::thread::scope(|s| {
        let train =
            s.spawn(|| Ok::<_, Error>((read(files::TRAIN_IMAGES)?, read(files::TRAIN_LABELS)?)));
        let test = (|| Ok::<_, Error>((read(files::TEST_IMAGES)?, read(files::TEST_LABELS)?)))();
        // A panic in the loader thread is a bug: it goes on unwinding here with its own message.
        let train = train
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (train, test)
    });
    let ((train_img_path, train_img, v0), (train_lbl_path, train_lbl, v1)) = train?;
    let ((test_img_path, test_img, v2), (test_lbl_path, test_lbl, v3)) = test?;
    Ok(FashionMnist {
        train: split_from(&train_img_path, &train_img, &train_lbl_path, &train_lbl)?,
        test: split_from(&test_img_path, &test_img, &test_lbl_path, &test_lbl)?,
        location,
        verified: [v0, v1, v2, v3],
    })
}

/// Builds a [`Split`] from decompressed IDX bytes, checking shapes, labels and counts.
pub fn split_from(
    images_path: &Path,
    images: &[u8],
    labels_path: &Path,
    labels: &[u8],
) -> Result<Split> {
    let images = IdxArray::parse(images).map_err(|e| Error::corrupt(images_path, e.to_string()))?;
    let labels = IdxArray::parse(labels).map_err(|e| Error::corrupt(labels_path, e.to_string()))?;
    if images.dims.len() != 3 || images.dims[1] != SIDE || images.dims[2] != SIDE {
        return Err(Error::corrupt(
            images_path,
            format!(
                "wrong dimensions {:?}, expected [N, 28, 28] images",
                images.dims
            ),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(Error::corrupt(
            labels_path,
            format!("wrong dimensions {:?}, expected [N] labels", labels.dims),
        ));
    }
    if let Some((i, &v)) = labels
        .data
        .iter()
        .enumerate()
        .find(|(_, v)| **v as usize >= NUM_CLASSES)
    {
        return Err(Error::corrupt(
            labels_path,
            format!("label {v} at index {i} is above 9 (Fashion-MNIST has 10 classes)"),
        ));
    }
    if labels.dims[0] != images.dims[0] {
        return Err(Error::corrupt(
            labels_path,
            format!(
                "holds {} labels but {} holds {} images",
                labels.dims[0],
                images_path.display(),
                images.dims[0]
            ),
        ));
    }
    Ok(Split {
        images: images.data,
        labels: labels.data,
    })
}
