//! Golden histories: the first 2 epochs of the study's two recipes (seed 42, 2 threads) against
//! reference values, so that a change of arithmetic is caught by a machine, not by reading.
//!
//! The references were measured on an Intel Xeon (AVX-512, AMX) with this project's kernels.
//! The project's machines alternate between that and AMD Zen 5 (AVX-512, no AMX), where the
//! `gemm` crate may block its products differently and so add sums in another order. Another
//! order of sums (measured by training on 1 thread instead of 2) moved these values by less
//! than 1e-7. The tolerances, 1e-3 in a loss and 0.002 in an accuracy (20 of 10,000 test
//! images), leave room for that and still catch a change of recipe or kernel: a learning rate
//! 10% lower moves the MLP's second test loss by 0.0097 and its test accuracy by 0.0078.

mod common;

/// `(loss, acc, val_loss, val_acc)` of epochs 1 and 2.
type Reference = [(f64, f64, f64, f64); 2];

const SEED_LINEAR: Reference = [
    (0.8558943043073018, 0.7058, 0.6144477725028992, 0.7944),
    (
        0.5284319366614024,
        0.8207666666666666,
        0.5205892622470856,
        0.8212,
    ),
];

const SEED_MLP: Reference = [
    (1.0659273142496746, 0.63495, 0.6368448495864868, 0.7552),
    (
        0.5289041898409526,
        0.8108666666666666,
        0.49371768832206725,
        0.8281,
    ),
];

const LOSS_TOLERANCE: f64 = 1e-3;
const ACCURACY_TOLERANCE: f64 = 0.002;

fn check(preset: &str, reference: &Reference) {
    let runs = common::TempDir::new(&format!("golden-{preset}"));
    let args = ["--epochs", "2", "--seed", "42"];
    let history = common::train_history(runs.path(), "run", preset, &args);
    assert_eq!(history.epochs.len(), 2);
    for (record, &(loss, acc, val_loss, val_acc)) in history.epochs.iter().zip(reference) {
        let close = (record.loss - loss).abs() < LOSS_TOLERANCE
            && (record.val_loss - val_loss).abs() < LOSS_TOLERANCE
            && (record.acc - acc).abs() < ACCURACY_TOLERANCE
            && (record.val_acc - val_acc).abs() < ACCURACY_TOLERANCE;
        assert!(
            close,
            "{preset} epoch {}: {record:?}, expected loss {loss}, acc {acc}, val_loss {val_loss}, val_acc {val_acc}",
            record.epoch
        );
    }
}

#[test]
fn seed_linear_first_two_epochs_match_the_reference() {
    check("seed-linear", &SEED_LINEAR);
}

#[test]
fn seed_mlp_first_two_epochs_match_the_reference() {
    check("seed-mlp", &SEED_MLP);
}
