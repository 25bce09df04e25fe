//! A model's weights as safetensors, in PyTorch's `state_dict` layout and names: a dense layer's
//! `weight` is `[outputs, inputs]` (Burn holds the transpose), a convolution's
//! `[out, in, k, k]`, batch normalisation's `weight`, `bias`, `running_mean`, `running_var` and
//! `num_batches_tracked`. `python/fmnist_torch.py` builds the matching `nn.Module` from the
//! architecture JSON written beside the file.

use std::collections::HashMap;

use safetensors::Dtype;
use safetensors::tensor::TensorView;

use crate::error::{Error, Result};
use crate::model::layers::{Array, Layer};

/// One named tensor: its dtype, shape and little-endian bytes.
struct Named {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn float(name: String, array: &Array) -> Named {
    Named {
        name,
        dtype: Dtype::F32,
        shape: array.shape.clone(),
        bytes: array.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// The state-dict entries of `layers`, in order.
fn entries(layers: &[Layer], out: &mut Vec<Named>) {
    for layer in layers {
        match layer {
            Layer::Dense { name, weight, bias } => {
                out.push(float(format!("{name}.weight"), &weight.transposed()));
                out.push(float(format!("{name}.bias"), bias));
            }
            Layer::Conv {
                name, weight, bias, ..
            } => {
                out.push(float(format!("{name}.weight"), weight));
                out.push(float(format!("{name}.bias"), bias));
            }
            Layer::BatchNorm {
                name,
                gamma,
                beta,
                mean,
                var,
                ..
            } => {
                out.push(float(format!("{name}.weight"), gamma));
                out.push(float(format!("{name}.bias"), beta));
                out.push(float(format!("{name}.running_mean"), mean));
                out.push(float(format!("{name}.running_var"), var));
                // Burn does not count batches; PyTorch's loader expects the entry.
                out.push(Named {
                    name: format!("{name}.num_batches_tracked"),
                    dtype: Dtype::I64,
                    shape: vec![],
                    bytes: 0i64.to_le_bytes().to_vec(),
                });
            }
            Layer::Residual { body, projection } => {
                entries(body, out);
                if let Some(p) = projection {
                    entries(std::slice::from_ref(p), out);
                }
            }
            Layer::Flatten | Layer::Activation(_) | Layer::MaxPool2 | Layer::GlobalAveragePool => {}
        }
    }
}

/// The safetensors file of `layers`, with `architecture` (JSON) under the metadata key
/// `fmnist`.
pub fn file_bytes(layers: &[Layer], architecture: &str) -> Result<Vec<u8>> {
    let mut named = Vec::new();
    entries(layers, &mut named);
    let views = named
        .iter()
        .map(|n| {
            TensorView::new(n.dtype, n.shape.clone(), &n.bytes).map(|view| (n.name.clone(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Usage(format!("cannot lay out the weights as safetensors: {e}")))?;
    let metadata = HashMap::from([("fmnist".to_string(), architecture.to_string())]);
    safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| Error::Usage(format!("cannot write the weights as safetensors: {e}")))
}
