//! Learning-rate schedules as training applies them: the rate moves every batch under one-cycle
//! (and cosine and warm-up), once per epoch under hold-decay, and the history records the first
//! and the last batch's rate of each epoch. Drives the real binary on the real data.

mod common;

use std::path::Path;

use fmnist::training::History;
use fmnist::training::schedule::{ScheduleConfig, ScheduleKind};

/// Batches per epoch of the seed-mlp recipe: 60,000 images in batches of 1024.
const BATCHES: usize = 59;

/// Trains `seed-mlp` for 2 epochs with `extra` flags into `runs/name` and returns its history.
fn train(runs: &Path, name: &str, extra: &[&str]) -> History {
    let mut args = vec!["--epochs", "2"];
    args.extend_from_slice(extra);
    common::train_history(runs, name, "seed-mlp", &args)
}

#[test]
fn one_cycle_moves_the_rate_every_batch_and_the_history_records_it() {
    let runs = common::TempDir::new("schedule");
    let cycle = train(runs.path(), "cycle", &["--schedule", "one-cycle"]);
    let schedule = ScheduleConfig {
        name: ScheduleKind::OneCycle,
        ..ScheduleConfig::default()
    };
    let rate = |epoch, batch| schedule.lr_at_batch(0.05, epoch, batch, BATCHES, 2);
    for (e, record) in cycle.epochs.iter().enumerate() {
        assert_eq!(record.lr, rate(e, 0), "epoch {} first rate", e + 1);
        assert_eq!(
            record.lr_last,
            Some(rate(e, BATCHES - 1)),
            "epoch {} last rate",
            e + 1
        );
    }
    // The rise of the first 30% of the run: 0.002 at the first batch, 0.05 at 0.6 epochs.
    assert!((cycle.epochs[0].lr - 0.002).abs() < 1e-15);
    assert!(cycle.epochs[0].last_lr() > 0.04, "{:?}", cycle.epochs[0]);

    // Were the rate set once per epoch, epoch 1 of the cycle would train at 0.002 throughout,
    // exactly as a constant rate of 0.002 does.
    let constant = train(
        runs.path(),
        "constant",
        &["--schedule", "constant", "--lr", "0.002"],
    );
    assert_eq!(constant.epochs[0].lr, 0.002);
    assert_eq!(constant.epochs[0].lr_last, Some(0.002));
    assert!(
        (cycle.epochs[0].val_loss - constant.epochs[0].val_loss).abs() > 0.05,
        "one-cycle {:?} against constant {:?}",
        cycle.epochs[0],
        constant.epochs[0]
    );
}

#[test]
fn hold_decay_keeps_one_rate_per_epoch() {
    let runs = common::TempDir::new("schedule-hold");
    let history = train(
        runs.path(),
        "hold",
        &["--hold-epochs", "1", "--factor", "0.5"],
    );
    let rates: Vec<(f64, Option<f64>)> = history.epochs.iter().map(|r| (r.lr, r.lr_last)).collect();
    assert_eq!(rates, [(0.05, Some(0.05)), (0.025, Some(0.025))]);
}
