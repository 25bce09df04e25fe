//! A model as an ONNX graph (opset 17), built from its [`Layer`]s with the `onnx-protobuf`
//! crate's messages. One input, `image` `[N, 1, 28, 28]` (float pixels in [0, 1]); the run's
//! normalisation is inside the graph; two outputs, `logits` and `probabilities` `[N, 10]`.
//! Batch normalisation is `BatchNormalization` with the running statistics; GELU is written
//! with `Erf` (exact, as Burn computes it), since `Gelu` needs opset 20.

use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, type_proto,
};

use crate::error::{Error, Result};
use crate::model::ActivationKind;
use crate::model::layers::{Array, Layer};

/// The opset the graph is written for.
pub const OPSET: i64 = 17;
/// ONNX IR version 8 goes with opset 17.
const IR_VERSION: i64 = 8;

/// The graph being built: nodes, weights, and a counter for fresh value names.
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    next: usize,
}

impl Graph {
    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    /// A constant tensor named after `hint`.
    fn constant(&mut self, hint: &str, array: &Array) -> String {
        let name = self.fresh(hint);
        let mut tensor = TensorProto::new();
        tensor.name = name.clone();
        tensor.data_type = DataType::FLOAT as i32;
        tensor.dims = array.shape.iter().map(|&d| d as i64).collect();
        tensor.raw_data = array.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(tensor);
        name
    }

    fn scalar(&mut self, hint: &str, value: f32) -> String {
        self.constant(
            hint,
            &Array {
                shape: vec![],
                values: vec![value],
            },
        )
    }

    /// Adds a node of `op` on `inputs` with `attributes`; returns its output's name.
    fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        let output = self.fresh(&op.to_lowercase());
        let mut node = NodeProto::new();
        node.op_type = op.to_string();
        node.name = output.clone();
        node.input = inputs.iter().map(|s| s.to_string()).collect();
        node.output = vec![output.clone()];
        node.attribute = attributes;
        self.nodes.push(node);
        output
    }

    fn layers(&mut self, layers: &[Layer], mut x: String) -> String {
        for layer in layers {
            x = self.layer(layer, x);
        }
        x
    }

    fn layer(&mut self, layer: &Layer, x: String) -> String {
        match layer {
            Layer::Flatten => self.node("Flatten", &[&x], vec![int("axis", 1)]),
            Layer::Dense { weight, bias, .. } => {
                let (w, b) = (self.constant("weight", weight), self.constant("bias", bias));
                self.node("Gemm", &[&x, &w, &b], vec![])
            }
            Layer::Conv {
                weight,
                bias,
                padding,
                ..
            } => {
                let k = weight.shape[2] as i64;
                let p = *padding as i64;
                let (w, b) = (self.constant("weight", weight), self.constant("bias", bias));
                let attributes = vec![
                    ints("kernel_shape", &[k, k]),
                    ints("pads", &[p, p, p, p]),
                    ints("strides", &[1, 1]),
                ];
                self.node("Conv", &[&x, &w, &b], attributes)
            }
            Layer::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                epsilon,
                ..
            } => {
                let g = self.constant("gamma", gamma);
                let b = self.constant("beta", beta);
                let m = self.constant("running_mean", mean);
                let v = self.constant("running_var", var);
                let attributes = vec![float("epsilon", *epsilon as f32)];
                self.node("BatchNormalization", &[&x, &g, &b, &m, &v], attributes)
            }
            Layer::Activation(kind) => self.activation(*kind, x),
            Layer::MaxPool2 => {
                let attributes = vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])];
                self.node("MaxPool", &[&x], attributes)
            }
            Layer::GlobalAveragePool => {
                let pooled = self.node("GlobalAveragePool", &[&x], vec![]);
                self.node("Flatten", &[&pooled], vec![int("axis", 1)])
            }
            Layer::Residual { body, projection } => {
                let shortcut = match projection {
                    Some(p) => self.layer(p, x.clone()),
                    None => x.clone(),
                };
                let y = self.layers(body, x);
                let sum = self.node("Add", &[&y, &shortcut], vec![]);
                self.node("Relu", &[&sum], vec![])
            }
        }
    }

    fn activation(&mut self, kind: ActivationKind, x: String) -> String {
        match kind {
            ActivationKind::Relu => self.node("Relu", &[&x], vec![]),
            ActivationKind::Tanh => self.node("Tanh", &[&x], vec![]),
            ActivationKind::Sigmoid => self.node("Sigmoid", &[&x], vec![]),
            ActivationKind::Elu => self.node("Elu", &[&x], vec![float("alpha", 1.0)]),
            // Burn's constants, the same as ONNX's defaults.
            ActivationKind::Selu => self.node("Selu", &[&x], vec![]),
            ActivationKind::LeakyRelu => self.node("LeakyRelu", &[&x], vec![float("alpha", 0.01)]),
            ActivationKind::Gelu => {
                // x * (1 + erf(x / sqrt 2)) / 2
                let root2 = self.scalar("sqrt2", std::f32::consts::SQRT_2);
                let (one, half) = (self.scalar("one", 1.0), self.scalar("half", 0.5));
                let scaled = self.node("Div", &[&x, &root2], vec![]);
                let erf = self.node("Erf", &[&scaled], vec![]);
                let shifted = self.node("Add", &[&erf, &one], vec![]);
                let product = self.node("Mul", &[&x, &shifted], vec![]);
                self.node("Mul", &[&product, &half], vec![])
            }
        }
    }

    /// Renames the value `from` to `to` by an `Identity` node (for the graph's outputs).
    fn rename(&mut self, from: &str, to: &str) {
        let mut node = NodeProto::new();
        node.op_type = "Identity".into();
        node.name = to.to_string();
        node.input = vec![from.to_string()];
        node.output = vec![to.to_string()];
        self.nodes.push(node);
    }
}

fn attribute(name: &str, kind: AttributeType) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = kind.into();
    a
}

fn int(name: &str, value: i64) -> AttributeProto {
    let mut a = attribute(name, AttributeType::INT);
    a.i = value;
    a
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    let mut a = attribute(name, AttributeType::INTS);
    a.ints = values.to_vec();
    a
}

fn float(name: &str, value: f32) -> AttributeProto {
    let mut a = attribute(name, AttributeType::FLOAT);
    a.f = value;
    a
}

/// A float tensor value of shape `[N, dims...]` with a dynamic first dimension named `N`.
fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    let mut batch = Dimension::new();
    batch.value = Some(dimension::Value::DimParam("N".into()));
    shape.dim.push(batch);
    for &d in dims {
        let mut dim = Dimension::new();
        dim.value = Some(dimension::Value::DimValue(d));
        shape.dim.push(dim);
    }
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = DataType::FLOAT as i32;
    tensor.shape = Some(shape).into();
    let mut kind = TypeProto::new();
    kind.value = Some(type_proto::Value::TensorType(tensor));
    let mut info = ValueInfoProto::new();
    info.name = name.to_string();
    info.type_ = Some(kind).into();
    info
}

/// The model's ONNX file: `layers` after the input normalisation `(x - mean) / std` (left out
/// when it is the identity), with `metadata` as the model's metadata properties.
pub fn model_bytes(
    layers: &[Layer],
    (mean, std): (f32, f32),
    metadata: &[(String, String)],
) -> Result<Vec<u8>> {
    let mut g = Graph {
        nodes: Vec::new(),
        initializers: Vec::new(),
        next: 0,
    };
    let mut x = "image".to_string();
    if (mean, std) != (0.0, 1.0) {
        let (m, s) = (g.scalar("pixel_mean", mean), g.scalar("pixel_std", std));
        let centred = g.node("Sub", &[&x, &m], vec![]);
        x = g.node("Div", &[&centred, &s], vec![]);
    }
    let logits = g.layers(layers, x);
    let probabilities = g.node("Softmax", &[&logits], vec![int("axis", 1)]);
    g.rename(&logits, "logits");
    g.rename(&probabilities, "probabilities");

    let mut graph = GraphProto::new();
    graph.name = "fmnist".into();
    graph.node = g.nodes;
    graph.initializer = g.initializers;
    graph.input = vec![value_info("image", &[1, 28, 28])];
    graph.output = vec![
        value_info("logits", &[10]),
        value_info("probabilities", &[10]),
    ];
    let mut opset = OperatorSetIdProto::new();
    opset.version = OPSET;
    let mut model = ModelProto::new();
    model.ir_version = IR_VERSION;
    model.opset_import = vec![opset];
    model.producer_name = "fmnist".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    model.graph = Some(graph).into();
    model.metadata_props = metadata
        .iter()
        .map(|(k, v)| {
            let mut entry = StringStringEntryProto::new();
            entry.key = k.clone();
            entry.value = v.clone();
            entry
        })
        .collect();
    model
        .write_to_bytes()
        .map_err(|e| Error::Usage(format!("cannot write the model as ONNX: {e}")))
}
