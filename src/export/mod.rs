//! Models that leave fmnist: `fmnist export --run DIR --format onnx|safetensors --out FILE`
//! writes a trained run's weights as an ONNX graph ([`onnx`]) or as PyTorch-layout safetensors
//! with an architecture JSON beside them ([`safetensors`]). Both are built from the model's
//! [`layers`](crate::model::layers) at inference, with the run's input normalisation.

pub mod onnx;
pub mod safetensors;

use std::path::{Path, PathBuf};

use crate::data::{CLASS_NAMES, Split};
use crate::error::Result;
use crate::fsio;
use crate::training::{RunDir, Weights};

/// The file formats `fmnist export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An ONNX model (opset 17): input `image` `[N, 1, 28, 28]`, outputs `logits` and
    /// `probabilities` `[N, 10]`.
    Onnx,
    /// The weights in PyTorch's `state_dict` layout, and `<name>.json` with the architecture.
    Safetensors,
}

/// Writes `which` weights of the run in `run_dir` as `format` to `out`; returns the files
/// written. `train` is the training set, needed only by runs that standardise their inputs.
pub fn export(
    run_dir: &Path,
    which: Weights,
    format: Format,
    out: &Path,
    train: Option<&Split>,
) -> Result<Vec<PathBuf>> {
    let run = RunDir::open(run_dir)?;
    let config = run.read_config()?;
    let device = crate::device::current()?.device.clone();
    let model = run.load_weights(config.model.init(&device), which)?;
    let layers = model.layers();
    let (mean, std) = crate::inference::input_stats(&config, train)?;
    let stats = (mean as f32, std as f32);
    let weights = match which {
        Weights::Best => "best",
        Weights::Last => "last",
    };
    let architecture = serde_json::json!({
        "format": "fmnist-safetensors/1",
        "model": config.model,
        "input": {"name": "image", "shape": ["N", 1, 28, 28], "pixels": "stored byte / 255"},
        "normalization": {"mean": stats.0, "std": stats.1},
        "class_names": CLASS_NAMES,
        "weights": weights,
        "fmnist_version": env!("CARGO_PKG_VERSION"),
    });
    match format {
        Format::Onnx => {
            let result = run.read_result().ok();
            let mut metadata = vec![
                (
                    "class_names".to_string(),
                    serde_json::to_string(&CLASS_NAMES).unwrap_or_default(),
                ),
                (
                    "fmnist_version".to_string(),
                    env!("CARGO_PKG_VERSION").to_string(),
                ),
                ("recipe".to_string(), config.recipe().to_toml()),
                ("weights".to_string(), weights.to_string()),
                (
                    "normalization".to_string(),
                    architecture["normalization"].to_string(),
                ),
            ];
            if let Some(r) = result {
                let epoch = match which {
                    Weights::Best => &r.best,
                    Weights::Last => &r.last,
                };
                metadata.push(("test_accuracy".into(), r.test_acc.to_string()));
                metadata.push(("epoch".into(), epoch.epoch.to_string()));
                metadata.push(("epoch_test_accuracy".into(), epoch.val_acc.to_string()));
            }
            fsio::write_atomic(out, &onnx::model_bytes(&layers, stats, &metadata)?)?;
            Ok(vec![out.to_path_buf()])
        }
        Format::Safetensors => {
            let text = format!("{architecture:#}");
            fsio::write_atomic(out, &safetensors::file_bytes(&layers, &text)?)?;
            let beside = out.with_extension("json");
            fsio::write_text(&beside, &text)?;
            Ok(vec![out.to_path_buf(), beside])
        }
    }
}

/// A `.npy` file (NumPy's format, version 1.0) of little-endian `f32` values of `shape`.
pub fn npy_bytes(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let used = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - used % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let bytes = super::npy_bytes(&[2, 3], &[1.0; 6]);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).expect("ASCII");
        assert!(
            header.contains("'shape': (2, 3)") && header.ends_with('\n'),
            "{header}"
        );
        assert_eq!(bytes.len(), 10 + header_len + 24);
    }
}
