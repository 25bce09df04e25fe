//! Per-epoch history: what Keras's `History` holds, plus timings, written as CSV and JSON.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsio;

/// One epoch's metrics. `val_*` are on the validation data (the test set unless a validation
/// split is configured).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// The learning rate of the epoch's first batch.
    pub lr: f64,
    /// The learning rate of the epoch's last batch: different from `lr` under the schedules
    /// that change every batch (cosine, one-cycle, warm-up). Absent in histories written before
    /// those schedules were applied per batch, whose epochs ran at `lr` throughout.
    #[serde(default)]
    pub lr_last: Option<f64>,
    /// Mean training loss over the epoch's batches (weighted by batch size).
    pub loss: f64,
    /// Training accuracy over the epoch.
    pub acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    /// Seconds spent training (not evaluating) in this epoch.
    pub seconds: f64,
    /// Seconds spent evaluating on the validation data.
    pub eval_seconds: f64,
    /// The side of the images the epoch trained on, when progressive resizing made it less
    /// than 28.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_side: Option<usize>,
}

impl EpochRecord {
    /// The rate of the epoch's last batch (`lr` for histories that do not record it).
    pub fn last_lr(&self) -> f64 {
        self.lr_last.unwrap_or(self.lr)
    }
}

/// All epochs of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub epochs: Vec<EpochRecord>,
}

/// The median of `values` without the first (warm-up) one, or the first alone.
pub fn steady_median(values: Vec<f64>) -> f64 {
    let mut v: Vec<f64> = if values.len() > 1 {
        values[1..].to_vec()
    } else {
        values
    };
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

const CSV_HEADER: &str =
    "epoch,lr,lr_last,loss,acc,val_loss,val_acc,seconds,eval_seconds,image_side";

impl History {
    /// The epoch with the lowest validation loss (the first one on ties).
    pub fn best(&self) -> Option<&EpochRecord> {
        self.epochs
            .iter()
            .fold(None, |best: Option<&EpochRecord>, r| match best {
                Some(b) if b.val_loss <= r.val_loss => Some(b),
                _ => Some(r),
            })
    }

    pub fn last(&self) -> Option<&EpochRecord> {
        self.epochs.last()
    }

    /// Steady-state seconds per training epoch: the median of epochs 2..N (epoch 1 includes
    /// warm-up), or epoch 1's time for a one-epoch run.
    pub fn steady_seconds_per_epoch(&self) -> f64 {
        steady_median(self.epochs.iter().map(|r| r.seconds).collect())
    }

    pub fn to_csv(&self) -> String {
        let mut out = String::from(CSV_HEADER);
        out.push('\n');
        for r in &self.epochs {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{:.6},{:.6},{}\n",
                r.epoch,
                r.lr,
                r.last_lr(),
                r.loss,
                r.acc,
                r.val_loss,
                r.val_acc,
                r.seconds,
                r.eval_seconds,
                r.image_side.unwrap_or(crate::data::SIDE)
            ));
        }
        out
    }

    /// Writes `history.csv` and `history.json` into `dir`, atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fsio::write_text(&dir.join("history.csv"), &self.to_csv())?;
        fsio::write_json(&dir.join("history.json"), self)
    }

    /// Reads `history.json` from a run directory.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("history.json");
        let text = fsio::read_text(&path)?;
        serde_json::from_str(&text).map_err(|e| crate::Error::Run {
            path,
            reason: format!("not a valid history file ({e})"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: usize, val_loss: f64, seconds: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            lr: 0.05,
            lr_last: Some(0.04),
            loss: 1.0 / epoch as f64,
            acc: 0.5,
            val_loss,
            val_acc: 0.5,
            seconds,
            eval_seconds: 0.01,
            image_side: None,
        }
    }

    #[test]
    fn best_and_steady_time() -> Result<(), Box<dyn std::error::Error>> {
        let h = History {
            epochs: vec![
                rec(1, 0.9, 5.0),
                rec(2, 0.5, 1.0),
                rec(3, 0.5, 3.0),
                rec(4, 0.7, 2.0),
            ],
        };
        assert_eq!(h.best().ok_or("no best epoch")?.epoch, 2);
        assert_eq!(h.steady_seconds_per_epoch(), 2.0);
        let csv = h.to_csv();
        assert_eq!(csv.lines().count(), 5);
        assert!(
            csv.lines()
                .nth(2)
                .is_some_and(|l| l.starts_with("2,0.05,0.04,")),
            "{csv}"
        );
        Ok(())
    }
}
