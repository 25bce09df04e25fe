//! Training on the real data: accuracy gates on short runs of the study's recipes, determinism,
//! parameter counts, the loss at initialisation and saved weights.

mod common;

use std::sync::{Mutex, OnceLock};

use burn::prelude::*;
use fmnist::data::batcher::Batcher;
use fmnist::data::files::{Location, Origin};
use fmnist::data::{self, FashionMnist};
use fmnist::evaluation::{Tta, evaluate, evaluate_with};
use fmnist::model::{Model, ModelConfig};
use fmnist::training::trainer::Silent;
use fmnist::training::{self, History, RunDir, TrainConfig, Weights};

fn dataset() -> &'static FashionMnist {
    static DATA: OnceLock<FashionMnist> = OnceLock::new();
    DATA.get_or_init(|| {
        data::load(
            Location {
                dir: common::real_data_dir(),
                origin: Origin::Flag,
            },
            true,
        )
        .unwrap()
    })
}

/// Trains `config` into a fresh directory. One run at a time: Burn's device random generator is
/// process-wide (see `training::train`), and the tests of this file run on parallel threads, so
/// two runs at once would draw from each other's stream and a seed would not give its run.
fn run(config: &TrainConfig, tag: &str) -> (training::RunResult, History, common::TempDir) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = common::TempDir::new(tag);
    let dir = RunDir::create(root.path(), Some("run"), tag, false).unwrap();
    let result = training::train(config, dataset(), &dir, &Device::flex(), &mut Silent).unwrap();
    let history = History::read(&dir.path).unwrap();
    (result, history, root)
}

/// The `which` weights of the run trained by [`run`] in `root`, with a batcher for its inputs.
fn saved(root: &common::TempDir, config: &TrainConfig, which: Weights) -> (Model, Batcher, Device) {
    let device = Device::flex();
    let dir = RunDir::open(&root.path().join("run")).unwrap();
    let model = dir.load_weights(config.model.init(&device), which).unwrap();
    let batcher = Batcher::new(config.data.normalization, (0.0, 1.0));
    (model, batcher, device)
}

#[test]
fn linear_three_epochs_of_the_study_recipe_reach_081() {
    let mut config = TrainConfig::preset("seed-linear").unwrap();
    config.epochs = 3;
    let (result, history, _dir) = run(&config, "linear3");
    assert_eq!(history.epochs.len(), 3);
    assert!(
        result.test_acc >= 0.81,
        "linear test accuracy {}",
        result.test_acc
    );
}

#[test]
fn mlp_five_epochs_of_the_study_recipe_reach_084() {
    let mut config = TrainConfig::preset("seed-mlp").unwrap();
    config.epochs = 5;
    let (result, history, root) = run(&config, "mlp5");
    assert!(
        result.test_acc >= 0.84,
        "MLP test accuracy {}",
        result.test_acc
    );
    // Training loss falls epoch after epoch at this stage.
    for pair in history.epochs.windows(2) {
        assert!(pair[1].loss < pair[0].loss, "{history:?}");
    }
    // The saved best weights reproduce the best epoch's test metrics.
    let (model, batcher, device) = saved(&root, &config, Weights::Best);
    let dir = RunDir::open(&root.path().join("run")).unwrap();
    let scores = evaluate(&model, &dataset().test, &batcher, &device, 1000);
    let best = history.best().unwrap();
    assert!(
        (scores.accuracy - best.val_acc).abs() < 1e-9,
        "{} vs {}",
        scores.accuracy,
        best.val_acc
    );
    assert!(
        (scores.loss - best.val_loss).abs() < 1e-5,
        "{} vs {}",
        scores.loss,
        best.val_loss
    );
    let written = std::fs::read_to_string(dir.file("config.toml")).unwrap();
    assert!(written.contains("seed = 42"), "{written}");
}

#[test]
fn parameter_counts_match_keras() {
    let device = Device::flex();
    let linear = ModelConfig::linear();
    assert_eq!(linear.summary().total_params(), 7_850);
    assert_eq!(linear.init(&device).num_params(), 7_850);
    let mlp = ModelConfig::default();
    assert_eq!(mlp.summary().total_params(), 51_370);
    assert_eq!(mlp.init(&device).num_params(), 51_370);
}

#[test]
fn loss_at_initialisation_is_close_to_ln_10() {
    let device = Device::flex();
    device.seed(3);
    let model = ModelConfig::default().init(&device);
    let batcher = Batcher::new(Default::default(), (0.0, 1.0));
    let scores = evaluate(&model, &dataset().test, &batcher, &device, 2500);
    let ln10 = 10f64.ln();
    assert!(
        (scores.loss - ln10).abs() < 0.25,
        "initial loss {}",
        scores.loss
    );
    assert!(
        scores.accuracy < 0.3,
        "an untrained model is near chance: {}",
        scores.accuracy
    );
}

#[test]
fn small_cnn_two_epochs_reach_085() {
    // The benchmark's W3 network and recipe (Adam 1e-3, batch 128, dropout 0.5), on the custom
    // convolution kernels. (The cnn preset's one-cycle schedule and weight average need its full
    // 30 epochs: it reaches 0.9296.)
    let config = fmnist::bench::Workload::Cnn.config(Some(2)).unwrap();
    let (result, _, _dir) = run(&config, "cnn2");
    assert!(
        result.test_acc >= 0.85,
        "CNN test accuracy after two epochs {}",
        result.test_acc
    );
}

#[test]
fn convolutional_models_have_keras_parameter_counts_and_shapes() {
    use fmnist::model::Arch;
    let device = Device::flex();
    // The W3 network: 320 + 18,496 + 204,928 + 1,290 parameters, as Keras counts them.
    let cnn = TrainConfig::preset("cnn").unwrap().model;
    assert_eq!(cnn.summary().total_params(), 225_034);
    assert_eq!(cnn.init(&device).num_params(), 225_034);
    // `cnn` with batch normalisation adds 4 values per channel: 225,034 + 4 x (32 + 64).
    let cnn_bn = ModelConfig {
        batch_norm: true,
        ..cnn.clone()
    };
    assert_eq!(cnn_bn.summary().total_params(), 225_418);
    assert_eq!(cnn_bn.init(&device).num_params(), 225_418);
    for (arch, batch_norm) in [
        (Arch::CnnBn, false),
        (Arch::Resnet, false),
        (Arch::Cnn, true),
    ] {
        let config = ModelConfig {
            arch,
            channels: vec![8, 16],
            blocks: vec![1, 1],
            dense: 32,
            batch_norm,
            ..ModelConfig::default()
        };
        let model = config.init(&device);
        // Burn counts batch-norm running statistics too, as Keras's total does.
        assert_eq!(
            model.num_params(),
            config.summary().total_params(),
            "{arch:?}"
        );
        let out = model.forward(Tensor::zeros([3, 1, 28, 28], &device));
        assert_eq!(out.dims(), [3, 10], "{arch:?}");
    }
}

#[test]
fn final_score_uses_every_test_time_view_and_epochs_single_views() {
    let mut config = TrainConfig::preset("seed-linear").unwrap();
    config.epochs = 2;
    config.data.tta_flip = true;
    config.data.tta_shift = 1;
    let (result, history, root) = run(&config, "tta");
    let (model, batcher, device) = saved(&root, &config, Weights::Last);
    let score = |tta| evaluate_with(&model, &dataset().test, &batcher, &device, 1000, tta);
    let (all_views, single) = (score(config.data.tta()), score(Tta::NONE));
    let last = history.last().unwrap();
    assert_eq!(single.accuracy, last.val_acc);
    assert_eq!(all_views.accuracy, result.test_acc);
    assert_ne!(all_views.predictions, single.predictions);
}

#[test]
fn a_whitened_first_layer_learns_faster_from_the_first_steps() {
    // The 2-minute recipe's first 40 batches, with and without `model.whiten`: the whitened
    // filters decorrelate the first layer's outputs, so the same steps reach a higher test
    // accuracy.
    let mut config = TrainConfig::preset("speedrun-2min").unwrap();
    config.epochs = 1;
    config.steps_per_epoch = 40;
    config.data.tta_flip = false; // single views: the score of the steps alone
    config.data.tta_shift = 0;
    config.model.whiten = false;
    let (plain, _, _dir) = run(&config, "plain40");
    config.model.whiten = true;
    let (whitened, _, root) = run(&config, "whiten40");
    eprintln!(
        "after 40 steps: plain {}, whitened {}",
        plain.test_acc, whitened.test_acc
    );
    assert!(
        whitened.test_acc > plain.test_acc + 0.03,
        "whitened {} against plain {}",
        whitened.test_acc,
        plain.test_acc
    );
    let written = std::fs::read_to_string(root.path().join("run/config.toml")).unwrap();
    assert!(written.contains("whiten = true"), "{written}");
}

#[test]
fn mixup_and_cutmix_train_on_blended_labels_reproducibly() {
    // Two epochs of the study's MLP: with mixup (alpha 1, so lambda is uniform) the targets are
    // blends of two labels, whose cross-entropy cannot fall as low as one label's, and the model
    // still learns the test set; the same seed gives the same run; cutmix learns too.
    let mut config = TrainConfig::preset("seed-mlp").unwrap();
    config.epochs = 2;
    let (plain, plain_history, _a) = run(&config, "mix-none");
    config.data.mixup = 1.0;
    let (mixed, mixed_history, root) = run(&config, "mixup");
    let (_, again, _b) = run(&config, "mixup-again");
    config.data.mixup = 0.0;
    config.data.cutmix = 1.0;
    let (cut, cut_history, _c) = run(&config, "cutmix");
    let last_loss = |h: &History| h.epochs.last().unwrap().loss;
    eprintln!(
        "train loss / test acc: plain {} / {}, mixup {} / {}, cutmix {} / {}",
        last_loss(&plain_history),
        plain.test_acc,
        last_loss(&mixed_history),
        mixed.test_acc,
        last_loss(&cut_history),
        cut.test_acc
    );
    assert!(last_loss(&mixed_history) > last_loss(&plain_history) + 0.2);
    assert!(last_loss(&cut_history) > last_loss(&plain_history) + 0.2);
    assert!(mixed.test_acc > 0.8, "mixup: {}", mixed.test_acc);
    assert!(cut.test_acc > 0.7, "cutmix: {}", cut.test_acc);
    assert_eq!(last_loss(&mixed_history), last_loss(&again));
    let written = std::fs::read_to_string(root.path().join("run/config.toml")).unwrap();
    assert!(written.contains("mixup = 1.0"), "{written}");
}

/// A small ResNet (the family that takes any image size) for short runs.
fn small_resnet(epochs: usize, steps: usize) -> TrainConfig {
    let mut config = TrainConfig::preset("best").unwrap();
    config.epochs = epochs;
    config.steps_per_epoch = steps;
    config.model.channels = vec![16, 32];
    config.model.blocks = vec![1, 1];
    config.data.erase = 0.0;
    config.data.tta_flip = false;
    config.data.tta_shift = 0;
    config
}

#[test]
fn progressive_resizing_trains_the_first_epochs_on_smaller_images() {
    // Three epochs of 100 batches: 12x12, 20x20, then 28x28 images. Each epoch records its side
    // (28 in the CSV for the full-size one), the evaluation is at 28x28 throughout, the same seed
    // gives the same run, and the last epoch at full size brings the model to the accuracy of
    // the run that never resized, within a few points.
    let mut config = small_resnet(3, 100);
    let (plain, plain_history, _a) = run(&config, "full-size");
    config.data.progressive = vec![12, 20];
    let (resized, history, root) = run(&config, "progressive");
    let (_, again, _b) = run(&config, "progressive-again");
    let sides: Vec<_> = history.epochs.iter().map(|e| e.image_side).collect();
    assert_eq!(sides, [Some(12), Some(20), None]);
    let csv = std::fs::read_to_string(root.path().join("run/history.csv")).unwrap();
    let last_column: Vec<_> = csv.lines().map(|l| l.rsplit(',').next().unwrap()).collect();
    assert_eq!(last_column, ["image_side", "12", "20", "28"]);
    eprintln!(
        "test accuracy: full size {}, progressive {}; epoch 1 losses {} and {}",
        plain.test_acc, resized.test_acc, plain_history.epochs[0].loss, history.epochs[0].loss
    );
    assert_ne!(plain_history.epochs[0].loss, history.epochs[0].loss);
    let losses = |h: &History| {
        h.epochs
            .iter()
            .map(|e| (e.loss, e.val_loss))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&history), losses(&again));
    assert!(resized.test_acc > 0.7, "progressive: {}", resized.test_acc);
    assert!(
        resized.test_acc > plain.test_acc - 0.05,
        "{} against {}",
        resized.test_acc,
        plain.test_acc
    );
}
