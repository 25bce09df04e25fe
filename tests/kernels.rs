//! The custom CPU kernels against Burn's reference operations, forward and backward, on random
//! shapes including odd sizes, 1x1 kernels and padding.

use burn::prelude::*;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Distribution, Gradients};
use fmnist::ops;

fn assert_close(name: &str, a: Tensor<4>, b: Tensor<4>, tol: f32) {
    let (a, b) = (
        a.into_data().try_to_vec::<f32>().unwrap(),
        b.into_data().try_to_vec::<f32>().unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{name}: lengths");
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{name}[{i}]: {x} vs {y} (scale {scale})"
        );
    }
}

fn grad4(t: &Tensor<4>, grads: &Gradients) -> Tensor<4> {
    t.grad(grads).expect("a gradient")
}

/// A `[n]` parameter's gradient, as a 4-D tensor for [`assert_close`].
fn grad1(t: &Tensor<1>, grads: &Gradients) -> Tensor<4> {
    let [n] = t.dims();
    t.grad(grads).expect("a gradient").reshape([1, 1, 1, n])
}

/// A gradient to compare, read from each backward pass.
type GradOf<'a> = (&'a str, &'a dyn Fn(&Gradients) -> Tensor<4>);

/// Checks `fast` against `reference` forward (tolerance `tol.0`), then each gradient of `grads`
/// (tolerance `tol.1`) after backward passes of `sum(output * probe)`, a random probe weighing
/// every output differently.
fn assert_layer_matches(
    tag: &str,
    fast: Tensor<4>,
    reference: Tensor<4>,
    tol: (f32, f32),
    grads: &[GradOf],
) {
    assert_close(
        &format!("{tag} forward"),
        fast.clone(),
        reference.clone(),
        tol.0,
    );
    let probe = Tensor::<4>::random(fast.dims(), Distribution::Normal(0.0, 1.0), &fast.device());
    let g_fast = (fast * probe.clone()).sum().backward();
    let g_ref = (reference * probe).sum().backward();
    for (name, grad) in grads {
        assert_close(&format!("{tag} {name}"), grad(&g_fast), grad(&g_ref), tol.1);
    }
}

#[test]
fn convolution_matches_burn_forward_and_backward() {
    let device = Device::flex().autodiff();
    device.seed(11);
    // (batch, in, out, height, width, kernel, padding)
    let cases = [
        (3, 2, 5, 7, 9, 3, 0),
        (2, 3, 4, 6, 5, 3, 1),
        (1, 1, 3, 28, 28, 5, 2),
        (4, 6, 8, 5, 5, 1, 0),
        (2, 32, 16, 11, 11, 3, 1),
        (2, 1, 32, 26, 26, 3, 1),
        (2, 1, 17, 5, 21, 3, 0),
    ];
    for (n, c, o, h, w, k, p) in cases {
        let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let weight = Tensor::<4>::random([o, c, k, k], Distribution::Normal(0.0, 0.3), &device)
            .require_grad();
        let bias = Tensor::<1>::random([o], Distribution::Normal(0.0, 0.3), &device).require_grad();
        let fast = ops::conv2d(x.clone(), weight.clone(), bias.clone(), p);
        let reference = conv2d(
            x.clone(),
            weight.clone(),
            Some(bias.clone()),
            ConvOptions::new([1, 1], [p, p], [1, 1], 1),
        );
        assert_eq!(fast.dims(), reference.dims());
        assert_layer_matches(
            &format!("conv {n}x{c}x{h}x{w} -> {o}, k{k} p{p}"),
            fast,
            reference,
            (1e-5, 1e-4),
            &[
                ("dx", &|g| grad4(&x, g)),
                ("dw", &|g| grad4(&weight, g)),
                ("db", &|g| grad1(&bias, g)),
            ],
        );
    }
}

#[test]
fn input_that_needs_no_gradient_gets_none() {
    let device = Device::flex().autodiff();
    let x = Tensor::<4>::ones([2, 1, 5, 5], &device);
    let weight = Tensor::<4>::ones([2, 1, 3, 3], &device).require_grad();
    let bias = Tensor::<1>::zeros([2], &device).require_grad();
    let grads = ops::conv2d(x.clone(), weight.clone(), bias, 0)
        .sum()
        .backward();
    assert!(x.grad(&grads).is_none());
    // Each weight sees 2 images x 9 output pixels of ones.
    let dw = weight
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(dw.iter().all(|&v| v == 18.0), "{dw:?}");
}

#[test]
fn max_pool_matches_burn_forward_and_backward() {
    let device = Device::flex().autodiff();
    device.seed(5);
    for (n, c, h, w) in [(2, 3, 8, 8), (1, 4, 7, 9), (3, 32, 26, 26), (2, 2, 11, 11)] {
        let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let fast = ops::max_pool2x2(x.clone());
        let reference = max_pool2d(x.clone(), MaxPoolOptions::new([2, 2]));
        assert_eq!(fast.dims(), [n, c, h / 2, w / 2]);
        assert_layer_matches(
            &format!("pool {n}x{c}x{h}x{w}"),
            fast,
            reference,
            (0.0, 0.0),
            &[("dx", &|g| grad4(&x, g))],
        );
    }
}

#[test]
fn works_without_autodiff_too() {
    let device = Device::flex();
    let x = Tensor::<4>::random([2, 3, 6, 6], Distribution::Default, &device);
    let weight = Tensor::<4>::random([4, 3, 3, 3], Distribution::Default, &device);
    let bias = Tensor::<1>::random([4], Distribution::Default, &device);
    let fast = ops::conv2d(x.clone(), weight.clone(), bias.clone(), 1);
    let reference = conv2d(
        x.clone(),
        weight,
        Some(bias),
        ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
    );
    assert_close("plain conv", fast, reference, 1e-5);
    assert_close(
        "plain pool",
        ops::max_pool2x2(x.clone()),
        max_pool2d(x, MaxPoolOptions::new([2, 2])),
        0.0,
    );
}

#[test]
fn fused_convolution_and_pooling_matches_burn() {
    let device = Device::flex().autodiff();
    device.seed(21);
    for (n, c, o, h, w, p) in [
        (3, 1, 4, 28, 28, 0),
        (2, 3, 5, 13, 13, 0),
        (2, 4, 6, 7, 9, 1),
    ] {
        let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let weight = Tensor::<4>::random([o, c, 3, 3], Distribution::Normal(0.0, 0.3), &device)
            .require_grad();
        let bias = Tensor::<1>::random([o], Distribution::Normal(0.0, 0.3), &device).require_grad();
        let fused = ops::conv2d_pool(x.clone(), weight.clone(), bias.clone(), p);
        let reference = max_pool2d(
            conv2d(
                x.clone(),
                weight.clone(),
                Some(bias.clone()),
                ConvOptions::new([1, 1], [p, p], [1, 1], 1),
            ),
            MaxPoolOptions::new([2, 2]),
        );
        assert_layer_matches(
            &format!("conv+pool {n}x{c}x{h}x{w} -> {o}, p{p}"),
            fused,
            reference,
            (1e-5, 1e-4),
            &[
                ("dx", &|g| grad4(&x, g)),
                ("dw", &|g| grad4(&weight, g)),
                ("db", &|g| grad1(&bias, g)),
            ],
        );
    }
}

fn as4(t: Tensor<2>) -> Tensor<4> {
    let [a, b] = t.dims();
    t.reshape([1, 1, a, b])
}

#[test]
fn dense_layer_matches_burn_forward_and_backward() {
    let device = Device::flex().autodiff();
    device.seed(17);
    // (rows, inputs, outputs): the narrow kernels (<= 16 outputs from >= 64 inputs, odd sizes
    // included) and the gemm path (the MLP's 784 -> 60 and 60 -> 60 layers).
    let cases = [
        (1024, 784, 10),
        (37, 100, 13),
        (5, 64, 1),
        (1024, 784, 60),
        (33, 60, 60),
        (7, 60, 10),
    ];
    for (rows, inputs, outputs) in cases {
        // No activation, ReLU, and each of the other activations fused into the layer (GELU as
        // a pass of its own after it).
        let activations = std::iter::once(None).chain(fmnist::model::ActivationKind::ALL.map(Some));
        for act in activations {
            let x = Tensor::<2>::random([rows, inputs], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let weight =
                Tensor::<2>::random([inputs, outputs], Distribution::Normal(0.0, 0.2), &device)
                    .require_grad();
            let bias = Tensor::<1>::random([outputs], Distribution::Normal(0.0, 0.2), &device)
                .require_grad();
            let fast = ops::dense(x.clone(), weight.clone(), bias.clone(), act);
            let linear = x.clone().matmul(weight.clone()) + bias.clone().unsqueeze();
            let reference = match act {
                Some(kind) => ops::burn_activation(linear, kind),
                None => linear,
            };
            assert_layer_matches(
                &format!("dense {rows}x{inputs} -> {outputs}, activation {act:?}"),
                as4(fast),
                as4(reference),
                // The product's rounding (about 1e-5 at outputs near 20) carried through an
                // activation whose outputs are at most 1 (tanh, sigmoid) is judged at scale 1.
                (
                    if act.is_some_and(|k| k != fmnist::model::ActivationKind::Relu) {
                        5e-5
                    } else {
                        1e-5
                    },
                    1e-4,
                ),
                &[
                    ("dx", &|g| as4(x.grad(g).expect("a gradient"))),
                    ("dw", &|g| as4(weight.grad(g).expect("a gradient"))),
                    ("db", &|g| grad1(&bias, g)),
                ],
            );
        }
    }
}

#[test]
fn dense_input_that_needs_no_gradient_gets_none() {
    let device = Device::flex().autodiff();
    let x = Tensor::<2>::ones([8, 100], &device);
    let weight = Tensor::<2>::ones([100, 3], &device).require_grad();
    let bias = Tensor::<1>::zeros([3], &device).require_grad();
    let grads = ops::dense(x.clone(), weight.clone(), bias, None)
        .sum()
        .backward();
    assert!(x.grad(&grads).is_none());
    let dw = weight
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(dw.iter().all(|&v| v == 8.0), "{dw:?}");
}

#[test]
fn cross_entropy_matches_burn_forward_and_backward() {
    let device = Device::flex().autodiff();
    device.seed(23);
    for (rows, classes, smoothing) in [(1024, 10, 0.0), (7, 10, 0.1), (33, 3, 0.25)] {
        let logits = Tensor::<2>::random([rows, classes], Distribution::Normal(0.0, 3.0), &device)
            .require_grad();
        let labels: Vec<i64> = (0..rows).map(|i| ((i * 7 + 3) % classes) as i64).collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [rows]), &device);
        let fast = ops::cross_entropy(logits.clone(), targets.clone(), smoothing);
        let reference = burn::nn::loss::CrossEntropyLossConfig::new()
            .with_smoothing((smoothing > 0.0).then_some(smoothing))
            .init(&device)
            .forward(logits.clone(), targets);
        let tag = format!("cross-entropy {rows}x{classes}, smoothing {smoothing}");
        assert_close(
            &format!("{tag} loss"),
            fast.clone().reshape([1, 1, 1, 1]),
            reference.clone().reshape([1, 1, 1, 1]),
            1e-5,
        );
        let (g_fast, g_ref) = ((fast * 3.0).backward(), (reference * 3.0).backward());
        assert_close(
            &format!("{tag} gradient"),
            as4(logits.grad(&g_fast).unwrap()),
            as4(logits.grad(&g_ref).unwrap()),
            1e-4,
        );
    }
}

#[test]
fn mixed_cross_entropy_is_the_cross_entropy_of_the_blended_labels() {
    // Mixup and cutmix train on `own` of each row's label and `1 - own` of row `n - 1 - i`'s:
    // the loss and its gradient are those of the blended (and smoothed) target distribution.
    let device = Device::flex().autodiff();
    device.seed(29);
    let (rows, classes, own, smoothing) = (9, 10, 0.7f32, 0.1f32);
    let logits = Tensor::<2>::random([rows, classes], Distribution::Normal(0.0, 2.0), &device)
        .require_grad();
    let labels: Vec<usize> = (0..rows).map(|i| (i * 3 + 1) % classes).collect();
    let as_int: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(as_int, [rows]), &device);
    let mixed = ops::mixed_cross_entropy(logits.clone(), targets, own, smoothing);
    let mut blended = vec![smoothing / classes as f32; rows * classes];
    for i in 0..rows {
        blended[i * classes + labels[i]] += own * (1.0 - smoothing);
        blended[i * classes + labels[rows - 1 - i]] += (1.0 - own) * (1.0 - smoothing);
    }
    let q = Tensor::<2>::from_data(TensorData::new(blended, [rows, classes]), &device);
    let log_p = burn::tensor::activation::log_softmax(logits.clone(), 1);
    let reference = (q * log_p).sum().neg().div_scalar(rows as f32);
    assert_close(
        "mixed cross-entropy loss",
        mixed.clone().reshape([1, 1, 1, 1]),
        reference.clone().reshape([1, 1, 1, 1]),
        1e-5,
    );
    let (g_mixed, g_ref) = (mixed.backward(), reference.backward());
    assert_close(
        "mixed cross-entropy gradient",
        as4(logits.grad(&g_mixed).unwrap()),
        as4(logits.grad(&g_ref).unwrap()),
        1e-5,
    );
}

#[test]
fn batch_norm_matches_burn_forward_backward_and_running_statistics() {
    let device = Device::flex().autodiff();
    device.seed(29);
    for (n, c, h, w) in [(8, 3, 5, 7), (16, 32, 13, 13), (2, 1, 28, 28)] {
        let mut fast_layer = burn::nn::BatchNormConfig::new(c).init(&device);
        let mut reference_layer = fast_layer.clone();
        // Distinct gamma and beta, so that their gradients are tested for real.
        let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.3), &device);
        let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.3), &device);
        for layer in [&mut fast_layer, &mut reference_layer] {
            layer.gamma = burn::module::Param::from_tensor(gamma.clone());
            layer.beta = burn::module::Param::from_tensor(beta.clone());
        }
        let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.5, 2.0), &device)
            .require_grad();
        // With ReLU fused in, and without; the statistics below are those of the second pass.
        for relu in [true, false] {
            let fast = ops::batch_norm(&fast_layer, x.clone(), relu);
            let mut reference = reference_layer.forward(x.clone());
            if relu {
                reference = burn::tensor::activation::relu(reference);
            }
            let tag = format!("batch norm {n}x{c}x{h}x{w}, relu {relu}");
            assert_layer_matches(
                &tag,
                fast,
                reference,
                (1e-5, 1e-4),
                &[
                    ("dx", &|g| grad4(&x, g)),
                    // Both layers hold the same gamma and beta tensors, so one read serves both.
                    ("dgamma", &|g| grad1(&fast_layer.gamma.val(), g)),
                    ("dbeta", &|g| grad1(&fast_layer.beta.val(), g)),
                ],
            );
        }
        let tag = format!("batch norm {n}x{c}x{h}x{w}");
        for (name, fast_state, ref_state) in [
            (
                "running mean",
                &fast_layer.running_mean,
                &reference_layer.running_mean,
            ),
            (
                "running var",
                &fast_layer.running_var,
                &reference_layer.running_var,
            ),
        ] {
            assert_close(
                &format!("{tag} {name}"),
                fast_state.value_sync().reshape([1, 1, 1, c]),
                ref_state.value_sync().reshape([1, 1, 1, c]),
                1e-5,
            );
        }
        // Inference with the running statistics, on a device without autodiff.
        let x = x.inner();
        assert_close(
            &format!("{tag} inference"),
            ops::batch_norm(&fast_layer.valid(), x.clone(), false),
            reference_layer.valid().forward(x.clone()),
            1e-5,
        );
        assert_close(
            &format!("{tag} inference with relu"),
            ops::batch_norm(&fast_layer.valid(), x.clone(), true),
            burn::tensor::activation::relu(reference_layer.valid().forward(x)),
            1e-5,
        );
    }
}

#[test]
fn relu_and_residual_relu_match_burn_bit_for_bit() {
    let device = Device::flex().autodiff();
    device.seed(31);
    // Large enough to be split over the threads.
    let shape = [16, 8, 28, 28];
    let a = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad();
    let b = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad();
    let relu = burn::tensor::activation::relu;
    assert_layer_matches(
        "relu",
        ops::relu(a.clone()),
        relu(a.clone()),
        (0.0, 0.0),
        &[("dx", &|g| grad4(&a, g))],
    );
    assert_layer_matches(
        "add_relu",
        ops::add_relu(a.clone(), b.clone()),
        relu(a.clone() + b.clone()),
        (0.0, 0.0),
        &[("da", &|g| grad4(&a, g)), ("db", &|g| grad4(&b, g))],
    );
    // Only one operand tracked (a shortcut without parameters before it, say).
    let frozen = b.clone().detach();
    assert_layer_matches(
        "add_relu, one operand tracked",
        ops::add_relu(a.clone(), frozen.clone()),
        relu(a.clone() + frozen),
        (0.0, 0.0),
        &[("da", &|g| grad4(&a, g))],
    );
}

/// Each MLP activation on the fast kernel against Burn's own function, forward and backward,
/// on a small odd shape and one large enough to be split over threads; values around 0 and far
/// on both sides (where the exponentials saturate). GELU's `erf` is libm's, hence its tolerance.
#[test]
fn mlp_activations_match_burn_forward_and_backward() {
    use fmnist::model::ActivationKind as A;
    let device = Device::flex().autodiff();
    device.seed(11);
    for kind in A::ALL {
        let tol = if kind == A::Gelu {
            (1e-6, 1e-5)
        } else {
            (1e-6, 1e-6)
        };
        for shape in [[3, 5, 7, 11], [2, 8, 64, 33]] {
            let x =
                Tensor::<4>::random(shape, Distribution::Normal(0.0, 4.0), &device).require_grad();
            assert_layer_matches(
                &format!("{} {shape:?}", kind.name()),
                ops::activation(x.clone(), kind),
                ops::burn_activation(x.clone(), kind),
                tol,
                &[("dx", &|g| grad4(&x, g))],
            );
        }
    }
}
