//! Keras-like console output: on a terminal a progress bar per epoch with ETA and running
//! loss/accuracy; otherwise one line per epoch.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use super::config::TrainConfig;
use super::history::EpochRecord;
use super::run_dir::RunResult;
use super::trainer::Reporter;

/// Prints progress to the console.
pub struct Console {
    bar: Option<ProgressBar>,
    interactive: bool,
    quiet: bool,
}

impl Console {
    /// A console reporter; bars only when stderr is a terminal, nothing per epoch when `quiet`.
    pub fn new(quiet: bool) -> Self {
        Console {
            bar: None,
            interactive: std::io::stderr().is_terminal(),
            quiet,
        }
    }
}

/// `Epoch 12/50 - 0.09s - loss: 0.3012 - acc: 0.8921 - val_loss: 0.3310 - val_acc: 0.8812 - lr: 0.050000`,
/// with `lr: first -> last` when the rate moved within the epoch.
pub fn epoch_line(r: &EpochRecord, epochs: usize) -> String {
    let lr = if r.last_lr() == r.lr {
        format!("{:.6}", r.lr)
    } else {
        format!("{:.6} -> {:.6}", r.lr, r.last_lr())
    };
    let images = match r.image_side {
        Some(side) => format!(" - images: {side}x{side}"),
        None => String::new(),
    };
    format!(
        "Epoch {}/{} - {:.2}s - loss: {:.4} - acc: {:.4} - val_loss: {:.4} - val_acc: {:.4} - lr: {lr}{images}",
        r.epoch, epochs, r.seconds, r.loss, r.acc, r.val_loss, r.val_acc
    )
}

impl Reporter for Console {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, _lr: f64) {
        if self.quiet || !self.interactive {
            return;
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ETA {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("Epoch {epoch}/{epochs}"));
        self.bar = Some(bar);
    }

    fn batch(&mut self, done: usize, total: usize, loss: f64, acc: f64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(format!("- loss: {loss:.4} - acc: {acc:.4}"));
        }
    }

    fn epoch_end(&mut self, record: &EpochRecord, epochs: usize) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.quiet {
            println!("{}", epoch_line(record, epochs));
        }
    }
}

/// The end-of-run report: best epoch, final metrics, timing.
pub fn final_report(
    config: &TrainConfig,
    result: &RunResult,
    run_path: &std::path::Path,
) -> String {
    let b = &result.best;
    let l = &result.last;
    let split = if config.data.val_split > 0.0 {
        "validation"
    } else {
        "test"
    };
    let mut out = format!(
        "Best epoch {}/{} (lowest {split} loss): val_loss {:.4} - val_acc {:.4} - loss {:.4} - acc {:.4}\n",
        b.epoch, result.epochs, b.val_loss, b.val_acc, b.loss, b.acc
    );
    out.push_str(&format!(
        "Final epoch {}: val_loss {:.4} - val_acc {:.4} - loss {:.4} - acc {:.4}\n",
        l.epoch, l.val_loss, l.val_acc, l.loss, l.acc
    ));
    if let Some(epoch) = result.stopped_epoch {
        out.push_str(&format!(
            "Early stopping after epoch {epoch} ({} epochs without improvement); final weights: {}\n",
            config.early_stopping.patience,
            match result.final_weights {
                super::Weights::Best => "best",
                super::Weights::Last => "last",
            }
        ));
    }
    if config.data.val_split > 0.0 {
        out.push_str(&format!(
            "Test set (final weights): loss {:.4} - accuracy {:.4}\n",
            result.test_loss, result.test_acc
        ));
    }
    out.push_str(&format!(
        "Time: {:.1}s total, {:.3}s per training epoch (median of epochs 2..{})\n",
        result.total_seconds, result.seconds_per_epoch, result.epochs
    ));
    out.push_str(&format!("Run saved in {}", run_path.display()));
    out
}
