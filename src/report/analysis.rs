//! Numbers read off a history: the best epoch, the train/test gap, where overfitting starts, and
//! a short reading in words.

use serde::Serialize;

use crate::training::History;

/// A test loss this much (relatively) above its minimum counts as having risen.
const RISE: f64 = 0.01;

/// What a run's history says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunAnalysis {
    /// Epoch (1-based) of the lowest validation loss.
    pub best_epoch: usize,
    pub best_val_loss: f64,
    pub best_val_acc: f64,
    pub last_epoch: usize,
    pub final_val_loss: f64,
    pub final_val_acc: f64,
    pub final_train_loss: f64,
    /// Validation loss minus training loss at the last epoch.
    pub final_gap: f64,
    /// Validation loss minus training loss at the best epoch.
    pub best_gap: f64,
    /// The epoch after which the test loss rises while the training loss keeps falling.
    pub overfitting_from: Option<usize>,
    pub seconds_per_epoch: f64,
}

/// `val_loss - loss` per epoch, as `(epoch, gap)`.
pub fn gap(history: &History) -> Vec<(usize, f64)> {
    history
        .epochs
        .iter()
        .map(|r| (r.epoch, r.val_loss - r.loss))
        .collect()
}

/// Analyses a non-empty history.
pub fn analyse(history: &History) -> Option<RunAnalysis> {
    let best = history.best()?;
    let last = history.last()?;
    let rose = last.val_loss > best.val_loss * (1.0 + RISE);
    let train_fell = last.loss < best.loss;
    Some(RunAnalysis {
        best_epoch: best.epoch,
        best_val_loss: best.val_loss,
        best_val_acc: best.val_acc,
        last_epoch: last.epoch,
        final_val_loss: last.val_loss,
        final_val_acc: last.val_acc,
        final_train_loss: last.loss,
        final_gap: last.val_loss - last.loss,
        best_gap: best.val_loss - best.loss,
        overfitting_from: (best.epoch < last.epoch && rose && train_fell).then_some(best.epoch),
        seconds_per_epoch: history.steady_seconds_per_epoch(),
    })
}

/// One or two sentences on a run.
pub fn reading(history: &History) -> String {
    let (Some(a), Some(best)) = (analyse(history), history.best()) else {
        return "no epochs recorded".into();
    };
    match a.overfitting_from {
        Some(epoch) => format!(
            "test loss is lowest at epoch {epoch} ({:.4}) and rises after it, to {:.4} at epoch {}, while \
             train loss keeps falling ({:.4} -> {:.4}): overfitting starts around epoch {epoch}; the \
             train/test loss gap grows from {:.3} to {:.3}.",
            a.best_val_loss,
            a.final_val_loss,
            a.last_epoch,
            best.loss,
            a.final_train_loss,
            a.best_gap,
            a.final_gap
        ),
        None if a.best_epoch == a.last_epoch => format!(
            "test loss is still falling at the last epoch ({}; {:.4}): no overfitting within the run, \
             and more epochs may still help.",
            a.last_epoch, a.final_val_loss
        ),
        None => format!(
            "test loss is lowest at epoch {} ({:.4}) and stays within 1% of it to the end ({:.4} at \
             epoch {}): the run has plateaued without clear overfitting; the train/test loss gap \
             ends at {:.3}.",
            a.best_epoch, a.best_val_loss, a.final_val_loss, a.last_epoch, a.final_gap
        ),
    }
}

/// One sentence comparing the runs of a group, given `(name, history, final test accuracy)`:
/// the accuracy of the run's result (with its test-time views), the figure the report's table
/// shows, not the last epoch's single-view figure in the history.
pub fn compare(runs: &[(&str, &History, f64)]) -> String {
    let analysed: Vec<(&str, RunAnalysis, f64)> = runs
        .iter()
        .filter_map(|(name, h, acc)| analyse(h).map(|a| (*name, a, *acc)))
        .collect();
    let by_final = analysed.iter().max_by(|a, b| a.2.total_cmp(&b.2));
    let by_loss = analysed
        .iter()
        .min_by(|a, b| a.1.best_val_loss.total_cmp(&b.1.best_val_loss));
    let least_gap = analysed
        .iter()
        .min_by(|a, b| a.1.final_gap.total_cmp(&b.1.final_gap));
    let (Some(by_final), Some(by_loss), Some(least_gap)) = (by_final, by_loss, least_gap) else {
        return String::new();
    };
    if analysed.len() < 2 {
        return String::new();
    }
    format!(
        "Highest final test accuracy: {} ({:.4}). Lowest test loss: {} ({:.4} at epoch {}). \
         Smallest final train/test gap: {} ({:.3}).",
        by_final.0,
        by_final.2,
        by_loss.0,
        by_loss.1.best_val_loss,
        by_loss.1.best_epoch,
        least_gap.0,
        least_gap.1.final_gap
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::EpochRecord;

    /// A hand-made history: test loss falls to epoch 3, then rises; train loss falls throughout.
    pub fn overfitting() -> History {
        let rows = [
            (1, 0.90, 0.95),
            (2, 0.60, 0.70),
            (3, 0.45, 0.60),
            (4, 0.35, 0.62),
            (5, 0.30, 0.66),
        ];
        History {
            epochs: rows
                .iter()
                .map(|&(epoch, loss, val_loss)| EpochRecord {
                    epoch,
                    lr: 0.05,
                    lr_last: None,
                    loss,
                    acc: 1.0 - loss / 2.0,
                    val_loss,
                    val_acc: 1.0 - val_loss / 2.0,
                    seconds: 0.1,
                    eval_seconds: 0.01,
                    image_side: None,
                })
                .collect(),
        }
    }

    #[test]
    fn best_epoch_gap_and_overfitting_by_hand() {
        let h = overfitting();
        let Some(a) = analyse(&h) else {
            panic!("five epochs are enough to analyse")
        };
        assert_eq!(a.best_epoch, 3);
        assert_eq!(a.best_val_loss, 0.60);
        assert!((a.best_gap - 0.15).abs() < 1e-12);
        assert!((a.final_gap - 0.36).abs() < 1e-12);
        assert_eq!(a.overfitting_from, Some(3));
        let g = gap(&h);
        assert!((g[0].1 - 0.05).abs() < 1e-12 && (g[4].1 - 0.36).abs() < 1e-12);
        let text = reading(&h);
        assert!(text.contains("lowest at epoch 3"), "{text}");
        assert!(text.contains("overfitting starts around epoch 3"), "{text}");
    }

    #[test]
    fn still_falling_and_plateau() {
        let mut h = overfitting();
        h.epochs.truncate(3);
        assert_eq!(analyse(&h).map(|a| a.overfitting_from), Some(None));
        assert!(reading(&h).contains("still falling"));
        let mut h = overfitting();
        h.epochs[3].val_loss = 0.601;
        h.epochs[4].val_loss = 0.603;
        assert_eq!(analyse(&h).map(|a| a.overfitting_from), Some(None));
        assert!(reading(&h).contains("plateaued"));
        let text = compare(&[("a", &overfitting(), 0.81), ("b", &h, 0.83)]);
        assert!(
            text.contains("Highest final test accuracy: b (0.8300)"),
            "{text}"
        );
        // The result's accuracy decides, not the history's last epoch (a run with test-time
        // views scores differently from its single-view history).
        let text = compare(&[("a", &overfitting(), 0.83), ("b", &h, 0.81)]);
        assert!(
            text.contains("Highest final test accuracy: a (0.8300)"),
            "{text}"
        );
    }
}
