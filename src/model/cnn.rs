//! Convolutional networks: the classic conv/pool stack (`cnn`), the same with batch normalisation
//! and "same" padding (`cnn-bn`), and a residual network (`resnet`).

use burn::module::Param;
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear};
use burn::prelude::*;

use super::layers::Layer;
use super::mlp::dense;
use super::summary::{LayerRow, Summary};
use crate::data::{NUM_CLASSES, SIDE};
use crate::ops;

/// A stride-1 convolution with a square kernel, Glorot-uniform weights and zero bias (Keras's
/// defaults). Runs on fmnist's own CPU kernel on flex.
#[derive(Module, Debug)]
pub struct Conv {
    weight: Param<Tensor<4>>,
    bias: Param<Tensor<1>>,
    #[module(skip)]
    padding: usize,
}

impl Conv {
    /// `same` keeps the spatial size (padding `kernel / 2`); otherwise no padding.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        same: bool,
        device: &Device,
    ) -> Self {
        let fan_in = in_channels * kernel * kernel;
        let fan_out = out_channels * kernel * kernel;
        let weight = burn::nn::Initializer::XavierUniform { gain: 1.0 }.init_with(
            [out_channels, in_channels, kernel, kernel],
            Some(fan_in),
            Some(fan_out),
            device,
        );
        Conv {
            weight,
            bias: Param::from_tensor(Tensor::zeros([out_channels], device)),
            padding: if same { kernel / 2 } else { 0 },
        }
    }

    /// The same convolution with the kernels of its first output channels replaced by
    /// `filters` (`[count, in, k, k]`, row-major), the others kept.
    fn with_first_filters(mut self, filters: &[f32]) -> Self {
        let dims = self.weight.dims();
        let device = self.weight.device();
        let mut weights = ops::into_host_values(self.weight.val());
        weights[..filters.len()].copy_from_slice(filters);
        self.weight =
            Param::from_tensor(Tensor::from_data(TensorData::new(weights, dims), &device));
        self
    }

    /// # Shapes
    ///   - x: `[batch, in, h, w]`
    ///   - output: `[batch, out, h', w']` (`h' = h` with same padding, `h - k + 1` without)
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        ops::conv2d(x, self.weight.val(), self.bias.val(), self.padding)
    }

    /// The convolution followed by 2x2 max pooling, fused.
    ///
    /// # Shapes
    ///   - x: `[batch, in, h, w]` -> `[batch, out, h'/2, w'/2]`
    pub fn forward_pooled(&self, x: Tensor<4>) -> Tensor<4> {
        ops::conv2d_pool(x, self.weight.val(), self.bias.val(), self.padding)
    }
}

/// Convolution, optional batch normalisation, ReLU.
#[derive(Module, Debug)]
pub struct ConvBlock {
    conv: Conv,
    norm: Option<BatchNorm>,
}

impl ConvBlock {
    fn new(c_in: usize, c_out: usize, same: bool, batch_norm: bool, device: &Device) -> Self {
        ConvBlock {
            conv: Conv::new(c_in, c_out, 3, same, device),
            norm: batch_norm.then(|| BatchNormConfig::new(c_out).init(device)),
        }
    }

    /// Without ReLU (residual blocks add first).
    fn linear(&self, x: Tensor<4>) -> Tensor<4> {
        self.apply(x, false)
    }

    /// # Shapes
    ///   - x: `[batch, in, h, w]` -> `[batch, out, h', w']`
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.apply(x, true)
    }

    /// Convolution, batch normalisation if any, then ReLU when `relu` (fused into the
    /// normalisation).
    fn apply(&self, x: Tensor<4>, relu: bool) -> Tensor<4> {
        let x = self.conv.forward(x);
        match &self.norm {
            Some(norm) => ops::batch_norm(norm, x, relu),
            None if relu => ops::relu(x),
            None => x,
        }
    }

    /// The block followed by 2x2 max pooling; ReLU commutes with max pooling, so it is applied to
    /// the pooled, 4x smaller tensor, and without batch normalisation convolution and pooling
    /// run as one fused kernel.
    ///
    /// # Shapes
    ///   - x: `[batch, in, h, w]` -> `[batch, out, h'/2, w'/2]`
    fn forward_pooled(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.norm {
            None => ops::relu(self.conv.forward_pooled(x)),
            Some(_) => ops::relu(ops::max_pool2x2(self.linear(x))),
        }
    }
}

impl Conv {
    fn layer(&self, name: String) -> Layer {
        Layer::conv(name, &self.weight, &self.bias, self.padding)
    }
}

impl ConvBlock {
    /// The convolution and batch normalisation (if any), named `prefix.conv`, `prefix.norm`.
    fn layers(&self, prefix: &str) -> Vec<Layer> {
        let mut layers = vec![self.conv.layer(format!("{prefix}.conv"))];
        if let Some(norm) = &self.norm {
            layers.push(Layer::batch_norm(format!("{prefix}.norm"), norm));
        }
        layers
    }
}

/// `cnn` and `cnn-bn`: stages of convolutions, each stage ending in 2x2 max pooling, then a dense
/// head with dropout.
#[derive(Module, Debug)]
pub struct ConvNet {
    /// Convolution blocks per stage.
    stages: Vec<Vec<ConvBlock>>,
    hidden: Option<Linear>,
    dropout: Dropout,
    output: Linear,
}

/// Per-stage plan shared by `new` and `summary`: `(channels, convolutions, same padding)`.
fn convnet_plan(channels: &[usize], stacked: bool) -> Vec<(usize, usize, bool)> {
    // cnn: one valid 3x3 convolution per stage (28 -> 26 -> 13 -> 11 -> 5);
    // cnn-bn: two same-padded convolutions per stage (28 -> 14 -> 7).
    channels
        .iter()
        .map(|&c| if stacked { (c, 2, true) } else { (c, 1, false) })
        .collect()
}

fn spatial_after(plan: &[(usize, usize, bool)]) -> usize {
    plan.iter().fold(SIDE, |side, &(_, convs, same)| {
        let side = if same { side } else { side - 2 * convs };
        side / 2
    })
}

impl ConvNet {
    /// `stacked`: two same-padded convolutions per stage (`cnn-bn`) instead of one valid one;
    /// `batch_norm`: batch normalisation after every convolution.
    pub fn new(
        channels: &[usize],
        dense_width: usize,
        dropout: f64,
        stacked: bool,
        batch_norm: bool,
        device: &Device,
    ) -> Self {
        let plan = convnet_plan(channels, stacked);
        let mut c_in = 1;
        let mut stages = Vec::new();
        for &(c, convs, same) in &plan {
            let mut blocks = Vec::new();
            for _ in 0..convs {
                blocks.push(ConvBlock::new(c_in, c, same, batch_norm, device));
                c_in = c;
            }
            stages.push(blocks);
        }
        let side = spatial_after(&plan);
        let flat = c_in * side * side;
        let (hidden, head_in) = if dense_width > 0 {
            (Some(dense(flat, dense_width, device)), dense_width)
        } else {
            (None, flat)
        };
        ConvNet {
            stages,
            hidden,
            dropout: DropoutConfig::new(dropout).init(),
            output: dense(head_in, NUM_CLASSES, device),
        }
    }

    /// # Shapes
    ///   - images: `[batch, 1, 28, 28]`
    ///   - output: `[batch, 10]` logits
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = images;
        for stage in &self.stages {
            // The stage's last convolution pools: [batch, c, h/2, w/2] after it.
            for (i, block) in stage.iter().enumerate() {
                x = if i + 1 == stage.len() {
                    block.forward_pooled(x)
                } else {
                    block.forward(x)
                };
            }
        }
        let mut x: Tensor<2> = x.flatten(1, 3); // [batch, c * h * w]
        if let Some(hidden) = &self.hidden {
            x = ops::relu(hidden.forward(x));
        }
        self.output.forward(self.dropout.forward(x)) // [batch, 10]
    }
}

impl ConvNet {
    /// The network with its first convolution's leading kernels replaced by `filters` (see
    /// [`super::whiten`]).
    pub fn with_first_filters(mut self, filters: &[f32]) -> Self {
        let first = &mut self.stages[0][0];
        first.conv = first.conv.clone().with_first_filters(filters);
        self
    }
}

/// Keras-style summary of a [`ConvNet`].
impl ConvNet {
    /// The layers at inference (see [`super::layers`]).
    pub fn layers(&self) -> Vec<Layer> {
        let relu = Layer::Activation(super::ActivationKind::Relu);
        let mut layers = Vec::new();
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                layers.extend(block.layers(&format!("stages.{s}.{b}")));
                if b + 1 == stage.len() {
                    layers.push(Layer::MaxPool2);
                }
                layers.push(relu.clone());
            }
        }
        layers.push(Layer::Flatten);
        if let Some(hidden) = &self.hidden {
            layers.push(Layer::dense("hidden", hidden));
            layers.push(relu);
        }
        layers.push(Layer::dense("output", &self.output));
        layers
    }
}

pub fn convnet_summary(
    channels: &[usize],
    dense_width: usize,
    dropout: f64,
    stacked: bool,
    batch_norm: bool,
) -> Summary {
    let plan = convnet_plan(channels, stacked);
    let mut s = Summary::new(if stacked { "cnn_bn" } else { "cnn" });
    let (mut c_in, mut side) = (1, SIDE);
    for &(c, convs, same) in &plan {
        for _ in 0..convs {
            if !same {
                side -= 2;
            }
            let row = LayerRow::new("Conv2D", vec![side, side, c], c_in * 9 * c + c);
            s.push(if batch_norm {
                row
            } else {
                row.with_note("relu")
            });
            if batch_norm {
                s.push(
                    LayerRow::new("BatchNormalization", vec![side, side, c], 2 * c)
                        .with_non_trainable(2 * c)
                        .with_note("relu"),
                );
            }
            c_in = c;
        }
        side /= 2;
        s.push(LayerRow::new("MaxPooling2D", vec![side, side, c], 0));
    }
    let flat = c_in * side * side;
    s.push(LayerRow::new("Flatten", vec![flat], 0));
    let mut width = flat;
    if dense_width > 0 {
        s.push(
            LayerRow::new("Dense", vec![dense_width], flat * dense_width + dense_width)
                .with_note("relu"),
        );
        width = dense_width;
    }
    if dropout > 0.0 {
        s.push(LayerRow::new("Dropout", vec![width], 0).with_note(&format!("rate {dropout}")));
    }
    s.push(
        LayerRow::new(
            "Dense",
            vec![NUM_CLASSES],
            width * NUM_CLASSES + NUM_CLASSES,
        )
        .with_note("softmax"),
    );
    s
}

/// Two 3x3 convolutions with batch normalisation and a shortcut (a 1x1 projection when the
/// channel count changes).
#[derive(Module, Debug)]
pub struct Residual {
    first: ConvBlock,
    second: ConvBlock,
    projection: Option<Conv>,
}

impl Residual {
    fn new(c_in: usize, c_out: usize, device: &Device) -> Self {
        Residual {
            first: ConvBlock::new(c_in, c_out, true, true, device),
            second: ConvBlock::new(c_out, c_out, true, true, device),
            projection: (c_in != c_out).then(|| Conv::new(c_in, c_out, 1, false, device)),
        }
    }

    /// # Shapes
    ///   - x: `[batch, in, h, w]` -> `[batch, out, h, w]`
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.projection {
            Some(p) => p.forward(x.clone()),
            None => x.clone(),
        };
        ops::add_relu(self.second.linear(self.first.forward(x)), shortcut)
    }
}

/// `resnet`: a stem convolution, stages of residual blocks (2x2 max pooling between stages),
/// global average pooling, dropout, and a dense classifier.
#[derive(Module, Debug)]
pub struct ResNet {
    stem: ConvBlock,
    stages: Vec<Vec<Residual>>,
    dropout: Dropout,
    output: Linear,
}

impl ResNet {
    pub fn new(channels: &[usize], blocks: &[usize], dropout: f64, device: &Device) -> Self {
        let stem = ConvBlock::new(1, channels[0], true, true, device);
        let mut c_in = channels[0];
        let mut stages = Vec::new();
        for (&c, &n) in channels.iter().zip(blocks) {
            let mut stage = Vec::new();
            for _ in 0..n.max(1) {
                stage.push(Residual::new(c_in, c, device));
                c_in = c;
            }
            stages.push(stage);
        }
        ResNet {
            stem,
            stages,
            dropout: DropoutConfig::new(dropout).init(),
            output: dense(c_in, NUM_CLASSES, device),
        }
    }

    /// # Shapes
    ///   - images: `[batch, 1, 28, 28]`
    ///   - output: `[batch, 10]` logits
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward(images); // [batch, c0, 28, 28]
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 {
                x = ops::max_pool2x2(x); // 28 -> 14 -> 7
            }
            for block in stage {
                x = block.forward(x);
            }
        }
        let x: Tensor<2> = x.mean_dim(3).mean_dim(2).flatten(1, 3); // [batch, c]
        self.output.forward(self.dropout.forward(x)) // [batch, 10]
    }
}

impl ResNet {
    /// The network with its stem convolution's leading kernels replaced by `filters` (see
    /// [`super::whiten`]).
    pub fn with_first_filters(mut self, filters: &[f32]) -> Self {
        self.stem.conv = self.stem.conv.clone().with_first_filters(filters);
        self
    }

    /// The layers at inference (see [`super::layers`]).
    pub fn layers(&self) -> Vec<Layer> {
        let relu = Layer::Activation(super::ActivationKind::Relu);
        let mut layers = self.stem.layers("stem");
        layers.push(relu.clone());
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 {
                layers.push(Layer::MaxPool2);
            }
            for (j, block) in stage.iter().enumerate() {
                let prefix = format!("stages.{i}.{j}");
                let mut body = block.first.layers(&format!("{prefix}.first"));
                body.push(relu.clone());
                body.extend(block.second.layers(&format!("{prefix}.second")));
                let projection = block
                    .projection
                    .as_ref()
                    .map(|p| Box::new(p.layer(format!("{prefix}.projection"))));
                layers.push(Layer::Residual { body, projection });
            }
        }
        layers.push(Layer::GlobalAveragePool);
        layers.push(Layer::dense("output", &self.output));
        layers
    }
}

/// Keras-style summary of a [`ResNet`].
pub fn resnet_summary(channels: &[usize], blocks: &[usize], dropout: f64) -> Summary {
    let mut s = Summary::new("resnet");
    let mut side = SIDE;
    let conv_bn = |s: &mut Summary, c_in: usize, c: usize, side: usize, k: usize| {
        s.push(LayerRow::new(
            "Conv2D",
            vec![side, side, c],
            c_in * k * k * c + c,
        ));
        if k == 3 {
            s.push(
                LayerRow::new("BatchNormalization", vec![side, side, c], 2 * c)
                    .with_non_trainable(2 * c),
            );
        }
    };
    conv_bn(&mut s, 1, channels[0], side, 3);
    let mut c_in = channels[0];
    for (i, (&c, &n)) in channels.iter().zip(blocks).enumerate() {
        if i > 0 {
            side /= 2;
            s.push(LayerRow::new("MaxPooling2D", vec![side, side, c_in], 0));
        }
        for _ in 0..n.max(1) {
            conv_bn(&mut s, c_in, c, side, 3);
            conv_bn(&mut s, c, c, side, 3);
            if c_in != c {
                conv_bn(&mut s, c_in, c, side, 1);
            }
            s.push(LayerRow::new("Add", vec![side, side, c], 0).with_note("relu"));
            c_in = c;
        }
    }
    s.push(LayerRow::new("GlobalAveragePooling2D", vec![c_in], 0));
    if dropout > 0.0 {
        s.push(LayerRow::new("Dropout", vec![c_in], 0).with_note(&format!("rate {dropout}")));
    }
    s.push(
        LayerRow::new("Dense", vec![NUM_CLASSES], c_in * NUM_CLASSES + NUM_CLASSES)
            .with_note("softmax"),
    );
    s
}
